"""Slurm's JSON records (jobs, nodes, partitions), one module per format, for every adapter that reads them.

Slurm's client tools print with ``--json`` what slurmrestd serves for the same release (the same plugin
writes both), so the REST adapter and the CLI adapter share these parsers:

============  ==============================  =========================================================
module        format                          printed by
============  ==============================  =========================================================
``v0038``     openapi/v0.0.38                 22.05: slurmrestd ``/slurm/v0.0.38``, ``squeue --json``,
                                              ``sinfo --json``
``v0042``     data_parser/v0.0.42 and later   24.11 and 26.05: slurmrestd ``/slurm/v0.0.42``;
                                              ``scontrol``/``squeue --json`` (v0.0.42 on 24.11,
                                              v0.0.45 on 26.05)
============  ==============================  =========================================================

:mod:`~slurm_adapters.formats.common` holds what the formats write alike (most of a job record, all of a
node, the ``errors`` array); the version modules hold only what differs. Each version module is a
:class:`RecordFormat`. Paths, request bodies and HTTP errors stay in :mod:`slurm_adapters.rest`; argv,
``key=value`` output and stderr stay in :mod:`slurm_adapters.cli`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from slurm_adapters.formats import v0038, v0042
from slurm_adapters.formats.common import Json
from slurm_adapters.records import JobRecord, NodeInfo, PartitionInfo

# The first release whose tools and slurmrestd write data_parser JSON (23.02: v0.0.39).
DATA_PARSER_RELEASE = (23, 2)


class RecordFormat(Protocol):
    """What a version module offers (the modules themselves are the implementations)."""

    def parse_job(self, raw: Json) -> JobRecord:
        """One entry of a ``jobs`` array."""

    def parse_jobs(self, body: Json) -> list[JobRecord]:
        """Every job of an answer's ``jobs`` array."""

    def parse_nodes(self, body: Json) -> list[NodeInfo]:
        """Every node of an answer's ``nodes`` array."""

    def parse_accounted_jobs(self, body: Json) -> list[JobRecord]:
        """Every job of slurmdbd's ``jobs`` array (``sacct --json``, slurmrestd's ``/slurmdb``)."""

    def parse_partitions(self, body: Json, nodes: Sequence[NodeInfo]) -> list[PartitionInfo]:
        """An answer's ``partitions``; ``nodes`` supply membership and GPU totals."""

    def release(self, body: Json) -> str | None:
        """The Slurm release from an answer's ``meta``."""


def for_release(release: Sequence[int]) -> RecordFormat:
    """The format a release's client tools print with ``--json`` (slurmrestd serves several; its adapter
    negotiates). 23.02 to 24.05 (data_parser v0.0.39 to v0.0.41) get :mod:`v0042` too, untested."""
    return v0038 if tuple(release[:2]) < DATA_PARSER_RELEASE else v0042


__all__ = ["DATA_PARSER_RELEASE", "RecordFormat", "for_release", "v0038", "v0042"]
