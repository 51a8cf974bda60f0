"""Allocations: what a job may use (reserved when it is accepted) and what it used (charged when it ends).

Budgets are kept in unit-seconds (GPU-seconds for GPU-hour grants, node-seconds for node-hour grants), so every
sum is an exact integer. A job reserves its time limit times the units it asks for; when it ends, Slurm's own
figures replace the reservation: the elapsed time Slurm reports times what it allocated (the GPUs of
``gres/gpu``, the whole nodes of ``node``), so a job is charged for what it held, not for what it asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.db.models import AllocationUnit
from conveyor.spec import JobSpec
from slurm_adapters.records import JobRecord

SECONDS_PER_HOUR = 3600


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an accepted job holds of one allocation until it ends."""

    allocation_id: str
    need_s: int


def units_asked(spec: JobSpec, unit: AllocationUnit) -> int:
    nodes = spec.resources.nodes
    return nodes * spec.resources.gpus_per_node if unit is AllocationUnit.GPU_HOURS else nodes


def reservation_s(spec: JobSpec, unit: AllocationUnit, time_limit_min: int) -> int:
    """The most the job can use: its (effective) time limit times the units it asks for."""
    return time_limit_min * 60 * units_asked(spec, unit)


def elapsed_s(record: JobRecord) -> int:
    """Slurm's elapsed time: slurmdbd's figure where the record has it, else end minus start (0: never ran)."""
    if record.elapsed_s is not None:
        return record.elapsed_s
    if record.start_time is None or record.end_time is None:
        return 0
    return max(0, int((record.end_time - record.start_time).total_seconds()))


def units_allocated(record: JobRecord, unit: AllocationUnit) -> int:
    """What Slurm allocated, from the job's TRES: ``gres/gpu`` GPUs, or ``node`` whole nodes."""
    key = "gres/gpu" if unit is AllocationUnit.GPU_HOURS else "node"
    raw = record.allocated_tres.get(key, "0")
    return int(raw) if raw.isdigit() else 0


def charge_s(record: JobRecord, unit: AllocationUnit) -> int:
    return elapsed_s(record) * units_allocated(record, unit)


@dataclass(frozen=True, slots=True)
class Use:
    """What an ended job held, as Slurm reports it: its elapsed time and what was allocated for it. Its
    charge in either unit follows; a job that never reached Slurm used nothing (``NOTHING``: a full refund)."""

    elapsed_s: int
    gpus: int
    nodes: int

    @classmethod
    def of(cls, record: JobRecord) -> Use:
        return cls(
            elapsed_s(record),
            units_allocated(record, AllocationUnit.GPU_HOURS),
            units_allocated(record, AllocationUnit.NODE_HOURS),
        )

    def charge_s(self, unit: AllocationUnit) -> int:
        return self.elapsed_s * (self.gpus if unit is AllocationUnit.GPU_HOURS else self.nodes)


NOTHING = Use(elapsed_s=0, gpus=0, nodes=0)


def hours(unit_seconds: int) -> float:
    return round(unit_seconds / SECONDS_PER_HOUR, 3)


__all__ = [
    "NOTHING",
    "Reservation",
    "Use",
    "charge_s",
    "elapsed_s",
    "hours",
    "reservation_s",
    "units_allocated",
    "units_asked",
]
