"""slurmrestd ``data_parser/v0.0.42`` (served by Slurm 24.11 and 26.05): paths, the submit body, cancel answers.

Wire facts this codec absorbs (measured on 24.11.5 and 26.05.5):

* paths end in "/" except ``job/submit`` and ``job/{id}``; the script goes inside ``job``;
* ``environment`` is a LIST of ``K=V``; GPUs are requested as ``tres_per_node`` "gres/gpu[:type]:N", and
  CPUs per task also as ``tres_per_task`` "cpu=N" (sbatch sends both);
  a node count is ``minimum_nodes``/``maximum_nodes`` ("nodes" is a range string, easy to get wrong);
  numbers in the request are wrapped as ``{"set", "infinite", "number"}``;
* ``GET jobs/`` lists finished jobs still in slurmctld's memory without any flag (checked on both);
* partitions carry no "default" flag in v0.0.42 (26.05's v0.0.45 does, see ``partition_flags_path``);
* a cancel answers 200 and reports per-job failures in ``status[]``, not in ``errors``;
* the records in its answers are :mod:`slurm_adapters.formats.v0042`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from slurm_adapters.convert import gres_request
from slurm_adapters.formats import RecordFormat, v0042
from slurm_adapters.formats.common import Json, SlurmMessage
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.rest.codec import Codec


class V0042(Codec):
    version = "v0.0.42"
    prefix = "/slurm/v0.0.42"
    ping_path = f"{prefix}/ping/"
    diag_path = f"{prefix}/diag/"
    submit_path = f"{prefix}/job/submit"
    jobs_path = f"{prefix}/jobs/"
    nodes_path = f"{prefix}/nodes/"
    partitions_path = f"{prefix}/partitions/"
    # jobs_params stays empty: without flags/update_time slurmctld returns every job in memory,
    # finished ones included (update_time would only turn the answer into "nothing changed").
    # v0.0.42 cannot tell the default partition; 26.05 also serves v0.0.45, whose partitions have
    # flags ["DEFAULT", ...]. 24.11 answers 404 there and the default stays unknown.
    partition_flags_path = "/slurm/v0.0.45/partitions/"
    records: ClassVar[RecordFormat] = v0042
    sbatch_release: ClassVar[tuple[int, int]] = (24, 11)

    def render_submit(self, spec: SlurmJobSpec, script: str, environment: Mapping[str, str]) -> dict[str, Any]:
        gres = gres_request(spec.gpus_per_node, spec.gpu_type)
        job = self.job_fields(
            spec,
            script=script,
            environment=[f"{key}={value}" for key, value in environment.items()],
            minimum_nodes=spec.nodes,
            maximum_nodes=spec.nodes,
            memory_per_node=None if spec.memory_mb is None else v0042.wrapped(spec.memory_mb),
            tres_per_node=None if gres is None else f"gres/{gres}",
            tres_per_task=f"cpu={spec.cpus_per_task}",  # as sbatch sends --cpus-per-task from 24.05 on
            time_limit=None if spec.time_limit_min is None else v0042.wrapped(spec.time_limit_min),
        )
        return {"job": job}

    def signal_errors(self, body: Json) -> list[SlurmMessage]:
        messages: list[SlurmMessage] = []
        for entry in body.get("status") or ():
            error = entry.get("error") if isinstance(entry, Mapping) else None
            if not isinstance(error, Mapping):
                continue
            code = error.get("code")
            if isinstance(code, int) and not isinstance(code, bool) and code != 0:
                messages.append(
                    SlurmMessage(
                        number=code,
                        error=str(error.get("string") or ""),
                        description=str(error.get("message") or ""),
                    )
                )
        return messages
