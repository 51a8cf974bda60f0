"""Repositories: the only code that reads or writes the broker's tables."""

from broker.db.repositories.errors import IdempotencyConflict, InvalidCursor
from broker.db.repositories.factory_state import FactoryStateRepository
from broker.db.repositories.jobs import ACTIVE_STATES, JobRepository, NewJob, QueueStats
from broker.db.repositories.pagination import JobFilter, JobPage
from broker.db.repositories.stats import JobStats

__all__ = [
    "ACTIVE_STATES",
    "FactoryStateRepository",
    "IdempotencyConflict",
    "InvalidCursor",
    "JobFilter",
    "JobPage",
    "JobRepository",
    "JobStats",
    "NewJob",
    "QueueStats",
]
