"""The broker's tables as typed SQLAlchemy 2 models. The schema itself changes only through Alembic.

Constraint names follow one convention, so a migration can name what it alters on both databases.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from broker.db.types import UTCDateTime, json_document
from broker.jobs.events import EventKind
from conveyor.spec import JobState

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit on PostgreSQL (an event log outgrows 2**31); SQLite's rowid is 64-bit already and must be INTEGER.
EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")


class AttemptOutcome(enum.StrEnum):
    """How one submission attempt ended, as far as the dispatcher could tell."""

    SUBMITTED = "submitted"  # Slurm answered with a job id
    REFUSED = "refused"  # Slurm refused the job itself; resubmitting would fail the same way
    NOT_APPLIED = "not_applied"  # failed before Slurm could have accepted it (e.g. connection refused)
    AMBIGUOUS = "ambiguous"  # may have landed (timeout after sending): look the tag up before any retry


def _str_enum(enum_class: type[enum.StrEnum], name: str) -> Enum:
    """A VARCHAR with a CHECK of the enum's values (not a native type: adding a value is a plain migration)."""
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class ProjectRole(enum.StrEnum):
    """A member's role in a project: a researcher sees and acts on their own jobs, a PI on all of them."""

    RESEARCHER = "researcher"
    PI = "pi"


class AllocationUnit(enum.StrEnum):
    """What a grant is counted in, as EuroHPC grants it."""

    GPU_HOURS = "gpu_hours"
    NODE_HOURS = "node_hours"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: json_document(),
        list[str]: json_document(),
    }


class Job(Base):
    """One job, from acceptance to its end. ``state`` is the broker's; ``slurm_state`` is Slurm's raw word."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))  # the caller's identity, e.g. user:42 or antenna:it/sub
    project: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]]
    labels: Mapped[dict[str, Any]]
    state: Mapped[JobState] = mapped_column(_str_enum(JobState, "job_state"))
    state_reason: Mapped[str | None] = mapped_column(Text)
    slurm_state: Mapped[str | None] = mapped_column(String(32))
    slurm_reason: Mapped[str | None] = mapped_column(Text)
    factory: Mapped[str | None] = mapped_column(String(64))
    partition: Mapped[str | None] = mapped_column(String(64))
    slurm_user: Mapped[str | None] = mapped_column(String(64))
    slurm_job_id: Mapped[str | None] = mapped_column(String(32))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[int | None] = mapped_column(Integer)  # with exit_code: Slurm's ExitCode=exit:signal
    placement_reason: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    submitted_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None]
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    antenna: Mapped[str | None] = mapped_column(String(64))  # accepted for this Antenna's national user
    # The values of the spec's secret_environment, sealed with the broker's secrets key (broker.jobs.secrets);
    # ``spec`` holds them redacted. None: the job has none.
    secrets: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # The dispatcher's claim: queued jobs whose next attempt is due.
        Index(None, "state", "next_attempt_at"),
        # The reconciler: one Factory's active jobs.
        Index(None, "factory", "state"),
        # Listings, newest first, paged on (created_at, id).
        Index(None, "project", "created_at", "id"),
        Index(None, "owner", "created_at", "id"),
        Index(None, "created_at", "id"),
    )


class JobEvent(Base):
    """One append-only entry in a job's history (database triggers refuse UPDATE and DELETE)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    at: Mapped[datetime]
    kind: Mapped[EventKind] = mapped_column(_str_enum(EventKind, "job_event_kind"))
    from_state: Mapped[JobState | None] = mapped_column(_str_enum(JobState, "job_event_from_state"))
    to_state: Mapped[JobState | None] = mapped_column(_str_enum(JobState, "job_event_to_state"))
    actor: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]]

    __table_args__ = (Index(None, "job_id", "id"),)


class DispatchAttempt(Base):
    """One try at submitting a job to Slurm, committed *before* the call so a crash leaves a trace to check."""

    __tablename__ = "dispatch_attempts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    factory: Mapped[str] = mapped_column(String(64))
    slurm_user: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[AttemptOutcome | None] = mapped_column(_str_enum(AttemptOutcome, "attempt_outcome"))
    slurm_job_id: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    """A caller's Idempotency-Key and the request it first came with; the same key answers the same job."""

    __tablename__ = "idempotency_keys"

    caller: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # Deferred: the key row is inserted first (it is the race's arbiter), the job it names right after.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", deferrable=True, initially="DEFERRED"))
    created_at: Mapped[datetime]

    __table_args__ = (Index(None, "created_at"),)


class FactoryState(Base):
    """What the broker knows of a Factory at run time (drained, healthy); persisted so every replica agrees."""

    __tablename__ = "factory_state"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    drained: Mapped[bool] = mapped_column(default=False)
    drained_reason: Mapped[str | None] = mapped_column(Text)
    healthy: Mapped[bool | None]
    health_detail: Mapped[str | None] = mapped_column(Text)
    checked_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class BrokerInstance(Base):
    """A process running the loops, and its heartbeat. ``worker_id`` is what its claims carry as their lease
    owner (one per process); ``id`` is the instance's name, persistent across restarts when configured. A claim
    whose owner's ``expires_at`` has passed is due again at once; an ``id`` whose row has not expired is refused
    to a second process."""

    __tablename__ = "broker_instances"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(128), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class FactoryEvent(Base):
    """Append-only audit of drains, undrains and health changes (not of every health check)."""

    __tablename__ = "factory_events"

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    factory_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    kind: Mapped[EventKind] = mapped_column(_str_enum(EventKind, "factory_event_kind"))
    actor: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]]

    __table_args__ = (Index(None, "factory_id", "id"),)


# --- identity (issue #4) ------------------------------------------------------------------------------


class User(Base):
    """A person the broker knows: a local user (tokens only) or an OIDC identity, (issuer, subject)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    issuer: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("issuer", "subject"),)


class ApiToken(Base):
    """A personal access token: only its SHA-256 digest is kept, found again by its public prefix."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(json_document())
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (Index(None, "user_id", "created_at"),)


class AuditEvent(Base):
    """Append-only: every state-changing call and every failed authentication (who, what, when, from where)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str | None] = mapped_column(String(255))  # None: the caller could not be authenticated
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str | None] = mapped_column(String(64))  # the client's address
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]]

    __table_args__ = (Index(None, "actor", "id"), Index(None, "at"))


class Project(Base):
    """A grant of compute time (a EuroHPC id like EHPC-AIF-2026PG01-1147): jobs belong to one."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class ProjectMember(Base):
    """Who belongs to a project, and as what. Only the broker grants membership (admins, the project's PIs)."""

    __tablename__ = "project_members"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[ProjectRole] = mapped_column(_str_enum(ProjectRole, "project_role"))
    added_at: Mapped[datetime]

    __table_args__ = (Index(None, "user_id"),)


class Allocation(Base):
    """A project's grant on one Factory for a period, kept in unit-seconds (GPU- or node-seconds) so that sums
    are exact integers. ``used_s`` is reserved plus charged: every reservation is a compare-and-set on it
    (``used_s + need <= granted_s``), so concurrent submissions can never overspend."""

    __tablename__ = "allocations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    factory_id: Mapped[str] = mapped_column(String(64))
    unit: Mapped[AllocationUnit] = mapped_column(_str_enum(AllocationUnit, "allocation_unit"))
    granted_s: Mapped[int] = mapped_column(BigInteger)
    used_s: Mapped[int] = mapped_column(BigInteger, default=0)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    created_at: Mapped[datetime]

    __table_args__ = (Index(None, "project_id", "factory_id"),)


class JobCharge(Base):
    """What one job holds of an allocation: reserved at acceptance, replaced by the charge when it ends."""

    __tablename__ = "job_charges"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    allocation_id: Mapped[str] = mapped_column(ForeignKey("allocations.id"))
    reserved_s: Mapped[int] = mapped_column(BigInteger)
    charged_s: Mapped[int | None] = mapped_column(BigInteger)
    settled_at: Mapped[datetime | None]

    __table_args__ = (Index(None, "allocation_id"),)


class FactoryOperator(Base):
    """A user who operates a Factory: it maps the broker's users and projects to that site's accounts."""

    __tablename__ = "factory_operators"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    added_at: Mapped[datetime]


class SiteAccount(Base):
    """Which Slurm user and account a broker user's (or a whole project's) jobs run as on one Factory.

    Only the Factory's operators and admins set these; a job spec can never choose them."""

    __tablename__ = "site_accounts"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "user" or "project"
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)  # a user id or a project id
    slurm_user: Mapped[str] = mapped_column(String(64))
    slurm_account: Mapped[str | None] = mapped_column(String(64))
    set_by: Mapped[str] = mapped_column(String(255))
    set_at: Mapped[datetime]


class Antenna(Base):
    """An AI Factory Antenna: a remote gateway that acts for its national users on the Factories it is linked
    to. Its public keys are a JWKS an admin uploaded (the broker fetches nothing); a new upload replaces them."""

    __tablename__ = "antennas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    country: Mapped[str] = mapped_column(String(2))
    title: Mapped[str] = mapped_column(String(255))
    factories: Mapped[list[str]]
    jwks: Mapped[dict[str, Any]]
    requests_per_minute: Mapped[int]
    max_active_jobs: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    # Its jobs not yet ended, kept by the transactions that accept and end them; the quota is a
    # compare-and-set on it (``active_jobs + n <= max_active_jobs``), so parallel accepts never overshoot.
    active_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class AntennaOperator(Base):
    """A user who operates an Antenna: it registers the Antenna's national users and adds them to projects."""

    __tablename__ = "antenna_operators"

    antenna_id: Mapped[str] = mapped_column(ForeignKey("antennas.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    added_at: Mapped[datetime]


class AntennaAssertionSeen(Base):
    """Each (Antenna, jti) is accepted once, by whichever broker replica sees it first; a row may go once its
    assertion has expired, since an expired assertion is refused anyway."""

    __tablename__ = "antenna_assertions_seen"

    antenna_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime]

    __table_args__ = (Index(None, "expires_at"),)


# --- the Factory agent (issue #13) ----------------------------------------------------------------------


class AgentKeys(Base):
    """The public keys (a JWKS) a Factory's agent signs its requests with, set by the Factory's operators or an
    admin; a new upload replaces them, so a key left out is revoked at once."""

    __tablename__ = "agent_keys"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jwks: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(255))


class AgentAssertionSeen(Base):
    """Each (Factory, jti) of an agent's assertion is accepted once, by whichever replica sees it first."""

    __tablename__ = "agent_assertions_seen"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime]

    __table_args__ = (Index(None, "expires_at"),)


class AgentSession(Base):
    """One connection of a Factory's agent: what it announced at hello, and until when it is alive. A
    restarted agent opens a new session; a session whose ``expires_at`` has passed is over for good."""

    __tablename__ = "agent_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    factory_id: Mapped[str] = mapped_column(String(64))
    kid: Mapped[str] = mapped_column(String(255))
    agent_version: Mapped[str] = mapped_column(String(255))
    adapter: Mapped[str] = mapped_column(String(16))
    slurm_release: Mapped[str | None] = mapped_column(String(255))
    features: Mapped[list[str]]
    opened_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    paused: Mapped[bool] = mapped_column(default=False)
    clock_offset_s: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index(None, "factory_id", "expires_at"),)


class AgentLease(Base):
    """Which session of a Factory's agent receives its submit and cancel orders, at which fencing epoch, until
    when. Taken over only once expired, by compare-and-set, and every take-over raises ``epoch``."""

    __tablename__ = "agent_leases"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime]


class AgentOrder(Base):
    """An order for a Factory's agent: ``submit`` and ``cancel`` are bound to (session, epoch) when written and
    delivered only to that session before ``not_after``; a ``read`` goes to the first live session that takes
    it. ``state``: open -> answered (the report, applied once by compare-and-set) or expired."""

    __tablename__ = "agent_orders"

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    factory_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    session_id: Mapped[str | None] = mapped_column(String(64))
    epoch: Mapped[int | None] = mapped_column(BigInteger)
    attempt: Mapped[str | None] = mapped_column(String(255))
    not_after: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    report: Mapped[dict[str, Any] | None]
    # A submit order's secret environment values, sealed (broker.jobs.secrets): the payload's spec holds them
    # redacted, and they are put back only in the order handed to the agent. None: no secrets.
    secrets: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "factory_id", "state", "id"), Index(None, "session_id", "id"))


class AgentListing(Base):
    """The Factory's active jobs as its agent last listed them: which numbered full snapshot (``snapshot``)
    the view stands on, how many deltas have been applied to it (``seq``), and when the newest listing began
    (``listed_at``, broker time as the agent knows it). ``version`` rises with every applied listing."""

    __tablename__ = "agent_listings"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64))
    snapshot: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger)
    listed_at: Mapped[datetime]
    full_listed_at: Mapped[datetime]
    received_at: Mapped[datetime]


class AgentListedJob(Base):
    """One Slurm job of a Factory's listing view (:class:`AgentListing`): its record as the agent encoded it
    (:func:`slurm_adapters.codec.record_to_json`). Removed only when a full snapshot lacks it."""

    __tablename__ = "agent_listed_jobs"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    slurm_job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    record: Mapped[dict[str, Any]]


class AgentSiteState(Base):
    """The site's Slurm health (or the error of the health call) and cluster information as the Factory's agent
    last pushed them (taken after ``taken_at``, broker time as the agent knows it). ``version`` rises with every
    applied push."""

    __tablename__ = "agent_site_states"

    factory_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(BigInteger)
    taken_at: Mapped[datetime]
    received_at: Mapped[datetime]
    health: Mapped[dict[str, Any] | None]  # or the error the site's health call raised
    error: Mapped[dict[str, Any] | None]
    cluster_info: Mapped[dict[str, Any] | None]
