"""What the append-only event log records. Events double as the audit trail, so their kinds are a closed set."""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    """The kind of a job or Factory event."""

    CREATED = "created"
    STATE_CHANGED = "state_changed"
    # A backward move that only Slurm causes (requeue, preemption, a lost job seen again): recorded apart so
    # that an auditor can tell it from a forward move at a glance.
    STATE_EXCEPTION = "state_exception"
    CANCEL_REQUESTED = "cancel_requested"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_FINISHED = "attempt_finished"
    RETRY_SCHEDULED = "retry_scheduled"
    FACTORY_DRAINED = "factory_drained"
    FACTORY_UNDRAINED = "factory_undrained"
    FACTORY_HEALTH_CHANGED = "factory_health_changed"
