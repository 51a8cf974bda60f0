"""The wire models: every request and answer body of the Conveyor API, shared by the server and the SDK.

The broker's FastAPI app uses these classes as its request and response models, so its OpenAPI schema is
generated from them and a client built on this package cannot drift from the server.

Two postures, on purpose:

- What the client *sends* (:class:`~conveyor.spec.JobSpec`, the query models) is strict
  (``extra="forbid"``): a misspelled field must be refused, never silently dropped. Its numbers and booleans
  are strict JSON types too (StrictInt, StrictFloat, StrictBool; a timestamp must be a string): ``true`` is
  not ``1`` and ``"yes"`` is not ``true``. Only those fields are strict, not whole models, so ISO timestamps
  and enum values are still read from JSON strings. (Query parameters arrive as text and are parsed.)
- What the server *answers* (:class:`Job`, :class:`JobEvent`, :class:`FactoryView`, ...) is tolerant
  (``extra="ignore"``): a newer server may add fields, and an older SDK reading them must keep working.
  The job's spec echoed inside :class:`Job` is read the same way (unknown keys dropped before the strict
  spec model sees them, and its field types read leniently). Removing or retyping a field, loosening a spec
  limit (an older SDK would refuse the echoed value), or adding a :class:`~conveyor.spec.JobState` is a
  breaking change and needs a new API version; event kinds are open strings so that adding one is not.

Timestamps are aware datetimes normalized to UTC (``...Z`` on the wire); naive ones are refused, because a
naive timestamp from a database or a client is a time zone bug waiting to happen. Job ids are strings
(``job_`` + random), never integers: Slurm's integer id is a separate field.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from conveyor.spec import Country, FactoryId, GpuType, JobSpec, JobState, LabelKey, LabelValue, Name, ProjectId

API_ROOT = "/v1"
INT64_MAX = 2**63 - 1
"""The largest integer the databases store (BIGINT): no integer a client sends may exceed it."""
MAX_DATETIME_CHARS = 64
"""The longest RFC 3339 timestamp a request may carry (a timestamp's fraction could otherwise run on)."""

JobId = Annotated[
    str,
    StringConstraints(pattern=r"^job_[0-9A-Za-z]{1,64}$"),
    Field(description="The broker's job id: 'job_' and random characters. A string, never a number."),
]
"""A broker job id. The broker alone mints them (random, so they reveal nothing and cannot be guessed); the
pattern is deliberately looser than today's format so clients keep reading ids if the format grows."""


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""An aware datetime, normalized to UTC. Naive datetimes are refused."""


def _timestamp_text(value: Any) -> Any:
    """A timestamp as JSON carries it: an RFC 3339 string of bounded length (a number is not a time)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("a timestamp must be an RFC 3339 string, e.g. 2026-11-01T00:00:00Z")
    if len(value) > MAX_DATETIME_CHARS:
        raise ValueError(f"a timestamp has at most {MAX_DATETIME_CHARS} characters")
    return value


RequestDatetime = Annotated[
    UtcDatetime,
    BeforeValidator(_timestamp_text),
    WithJsonSchema({"type": "string", "format": "date-time", "maxLength": MAX_DATETIME_CHARS}),
]
"""A timestamp a client sends: a :data:`UtcDatetime` given as a string of at most :data:`MAX_DATETIME_CHARS`
characters (or a datetime, from Python)."""

OutputStream = Literal["stdout", "stderr"]
LabelSelector = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?=[^\x00-\x1f\x7f]*$", max_length=320),
]


# ---------------------------------------------------------------------------------------------------
# Base classes: strict for what the client sends, tolerant for what the server answers
# ---------------------------------------------------------------------------------------------------


class WireRequest(BaseModel):
    """Sent by the client: unknown fields are refused, so a typo is an error rather than a silent default.
    Its number and boolean fields are declared strict one by one (StrictInt, ...), never the whole model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WireAnswer(BaseModel):
    """Sent by the server: unknown fields are ignored, so an older SDK can read a newer server's answers."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _known_keys_only(model: type[BaseModel], data: Any) -> Any:
    """``data`` without the keys ``model`` (and its nested models) does not know: a strict request model,
    read back from a server answer, must not fail on a field a newer server added."""
    if not isinstance(data, dict):
        return data
    kept: dict[str, Any] = {}
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            kept[key] = _known_keys_only(nested, value)
        else:
            kept[key] = value
    return kept


def _echoed_spec(data: Any) -> Any:
    if isinstance(data, JobSpec):
        return data
    return JobSpec.model_validate(_known_keys_only(JobSpec, data), strict=False)


EchoedJobSpec = Annotated[
    JobSpec,
    BeforeValidator(_echoed_spec),
    Field(description="The job spec as accepted (fields this SDK does not know are dropped when reading)."),
]


# ---------------------------------------------------------------------------------------------------
# Queries the client sends
# ---------------------------------------------------------------------------------------------------


class ListQuery(WireRequest):
    """Paging parameters of every listing. Use as ``Annotated[JobQuery, Query()]`` in FastAPI, so unknown
    query parameters are refused like unknown body fields."""

    limit: int = Field(50, ge=1, le=500, description="Items per page.")
    cursor: str | None = Field(
        None, max_length=1024, description="The previous page's next_cursor; omit for the first page."
    )


class JobQuery(ListQuery):
    """Filters of ``GET /v1/jobs``; every filter given must match (AND), several values of one filter are OR."""

    project: ProjectId | None = Field(None, description="Only this project's jobs.")
    state: list[JobState] = Field(default_factory=list, max_length=16, description="Only jobs in these states.")
    factory: FactoryId | None = Field(None, description="Only jobs placed on this Factory.")
    label: list[LabelSelector] = Field(
        default_factory=list, max_length=16, description="Only jobs carrying every label given, as 'key=value'."
    )


class EventQuery(ListQuery):
    """Parameters of ``GET /v1/jobs/{id}/events``. ``after`` resumes a stream from the last event id seen."""

    after: int | None = Field(None, ge=0, le=INT64_MAX, description="Only events with an id greater than this one.")

    @model_validator(mode="after")
    def _one_starting_point(self) -> Self:
        if self.after is not None and self.cursor is not None:
            raise ValueError("give 'after' or 'cursor', not both")
        return self


# ---------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------


class JobLinks(WireAnswer):
    """Where to go next: absolute-path references, resolved against the API's origin."""

    self: str = Field(description="This job.")
    events: str = Field(description="The job's events, oldest first.")
    output: str = Field(description="The tail of the job's stdout or stderr (query parameter 'stream').")
    cancel: str = Field(description="POST here to request cancellation.")

    @classmethod
    def for_job(cls, job_id: str, root: str = API_ROOT) -> JobLinks:
        """The links of one job; ``root`` lets a server behind a path prefix say where it lives."""
        base = f"{root.rstrip('/')}/jobs/{job_id}"
        return cls(self=base, events=f"{base}/events", output=f"{base}/output", cancel=f"{base}/cancel")


_JOB_EXAMPLE: dict[str, Any] = {
    "id": "job_3k7vq2mzx4d5f6g7hqjw",
    "state": "running",
    "state_reason": None,
    "project": "EHPC-AIF-2026PG01-1147",
    "name": "llama-finetune",
    "owner": "oidc:https://login.example.eu|4f2c9a",
    "spec": {
        "name": "llama-finetune",
        "project": "EHPC-AIF-2026PG01-1147",
        "command": ["python", "train.py", "--epochs", "3"],
        "resources": {"nodes": 1, "gpus_per_node": 4, "gpu_type": "a100", "time_limit_min": 120},
        "labels": {"team": "nlp"},
        "placement": {"countries": ["IT", "FI"]},
    },
    "labels": {"team": "nlp"},
    "factory": "it4lia",
    "partition": "boost_usr_prod",
    "site_user": "a08trc01",
    "slurm_job_id": 4242137,
    "slurm_state": "RUNNING",
    "slurm_reason": "None",
    "exit_code": None,
    "signal": None,
    "placement_reason": "a100 x4 free on it4lia; allowed country IT; allocation 812 GPU-h left",
    "cancel_requested": False,
    "created_at": "2026-03-02T09:14:07Z",
    "updated_at": "2026-03-02T09:21:40Z",
    "submitted_at": "2026-03-02T09:14:09Z",
    "started_at": "2026-03-02T09:21:40Z",
    "ended_at": None,
    "links": {
        "self": "/v1/jobs/job_3k7vq2mzx4d5f6g7hqjw",
        "events": "/v1/jobs/job_3k7vq2mzx4d5f6g7hqjw/events",
        "output": "/v1/jobs/job_3k7vq2mzx4d5f6g7hqjw/output",
        "cancel": "/v1/jobs/job_3k7vq2mzx4d5f6g7hqjw/cancel",
    },
}


class Job(WireAnswer):
    """One job as the broker sees it, served from the broker's own store (never a live Slurm call), so a job
    can be read the moment it is accepted. Slurm's raw state and reason are kept beside the broker's."""

    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: JobId
    state: JobState = Field(description="The broker's state; it only moves forward (see JobState).")
    state_reason: str | None = Field(
        None, description="Why the job waits (e.g. Slurm's pending reason) or why it ended (e.g. why rejected)."
    )
    project: ProjectId = Field(description="The project the job is charged to (copied from the spec).")
    name: Name = Field(description="The job's name (copied from the spec).")
    owner: str = Field(description="The identity that submitted the job.")
    spec: EchoedJobSpec
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, description="Copied from the spec.")
    factory: FactoryId | None = Field(None, description="The Factory the job was placed on; None while unplaced.")
    partition: str | None = Field(None, description="The Slurm partition the job was sent to.")
    site_user: str | None = Field(
        None, description="The site account the job runs as at the Factory (the identity mapping, made visible)."
    )
    slurm_job_id: int | None = Field(
        None, description="Slurm's own job id at that Factory (an integer, unique only within that cluster)."
    )
    slurm_state: str | None = Field(None, description="Slurm's raw state as last seen, e.g. 'PENDING', 'NODE_FAIL'.")
    slurm_reason: str | None = Field(None, description="Slurm's raw reason as last seen, e.g. 'Priority'.")
    exit_code: int | None = Field(None, description="The batch script's exit code, once the job ended.")
    signal: int | None = Field(
        None,
        description="The signal that ended the job (15 for a cancelled or timed-out one), 0 if none did; with "
        "exit_code it is Slurm's ExitCode=exit:signal. None until the job ended in Slurm.",
    )
    placement_reason: str | None = Field(None, description="Why this Factory and partition were chosen.")
    cancel_requested: bool = Field(False, description="Cancellation was requested; the broker carries it out.")
    created_at: UtcDatetime = Field(description="When the broker accepted the job.")
    updated_at: UtcDatetime = Field(description="When anything about the job last changed.")
    submitted_at: UtcDatetime | None = Field(None, description="When Slurm accepted the job.")
    started_at: UtcDatetime | None = Field(None, description="When the job started running.")
    ended_at: UtcDatetime | None = Field(None, description="When the job reached a terminal state.")
    links: JobLinks


class JobEvent(WireAnswer):
    """One append-only entry of a job's history; it doubles as the audit trail of state-changing calls.

    ``kind`` is a plain string on purpose: the broker's list of kinds grows, and an older SDK must still read
    the history of a job that a newer broker wrote."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 4,
                    "job_id": "job_3k7vq2mzx4d5f6g7hqjw",
                    "at": "2026-03-02T09:21:40Z",
                    "kind": "state_changed",
                    "from_state": "submitted",
                    "to_state": "running",
                    "actor": "reconciler",
                    "detail": {"slurm_state": "RUNNING", "nodes": "lrdn0412"},
                }
            ]
        }
    )

    id: int = Field(ge=1, description="Increases per job: resume an event stream with ?after=<last id>.")
    job_id: JobId
    at: UtcDatetime = Field(description="When it happened (as recorded by the broker).")
    kind: str = Field(
        max_length=64,
        description="What happened, e.g. created, state_changed, state_exception (a requeue or preemption), "
        "cancel_requested, attempt_started, attempt_finished. Open set: ignore kinds you do not know.",
    )
    from_state: JobState | None = Field(None, description="The state before, for state changes.")
    to_state: JobState | None = Field(None, description="The state after, for state changes.")
    actor: str | None = Field(
        None, description="Who caused it: an identity, or the broker's own loop (dispatcher, reconciler)."
    )
    detail: dict[str, JsonValue] = Field(default_factory=dict, description="Kind-specific facts.")


ItemT = TypeVar("ItemT")


class Page(WireAnswer, Generic[ItemT]):
    """One page of a listing. ``next_cursor`` is opaque: pass it back unchanged; None means the last page."""

    items: list[ItemT] = Field(default_factory=list)
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; None: no more items.")


class JobList(Page[Job]):
    """A page of jobs (a named subclass of ``Page[Job]``, so the OpenAPI schema gets a readable name)."""


class EventList(Page[JobEvent]):
    """A page of one job's events, oldest first."""


class JobOutput(WireAnswer):
    """The tail of a job's stdout or stderr, read from the Factory when asked (it is not stored by the broker)."""

    job_id: JobId
    stream: OutputStream
    content: str = Field(description="The last bytes of the stream, decoded as UTF-8 with replacement.")
    truncated: bool = Field(description="True when the stream is longer than what is shown.")
    size_bytes: int | None = Field(None, ge=0, description="The stream's full size, when the Factory tells.")


class JobOutputChunk(WireAnswer):
    """Bytes of a job's stdout or stderr from ``offset`` (``GET /v1/jobs/{id}/output?offset=``), read from the
    Factory when asked. The next chunk starts at ``offset + len(data)``; an offset past the end has no data."""

    job_id: JobId
    stream: OutputStream
    offset: int = Field(ge=0, description="Where ``data`` starts in the stream, in bytes.")
    size: int = Field(ge=0, description="The stream's size when it was read.")
    eof: bool = Field(description="True when ``offset`` plus the data's length reached ``size``.")
    data_base64: str = Field(description="The bytes, base64-encoded (output need not be UTF-8).")

    @property
    def data(self) -> bytes:
        """The chunk's bytes."""
        return base64.b64decode(self.data_base64)


# ---------------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------------


class PartitionView(WireAnswer):
    """One Slurm partition of a Factory, with the limits placement checks against."""

    name: str
    default: bool | None = Field(None, description="Slurm's default partition; None when the site cannot tell.")
    max_time_min: int | None = Field(None, ge=1, description="MaxTime in minutes; None: no limit.")
    default_time_min: int | None = Field(
        None, ge=1, description="DefaultTime in minutes, for jobs that give no time limit; None: none configured."
    )
    nodes: int = Field(ge=0, description="Nodes in the partition.")
    cpus_per_node: int | None = Field(None, ge=1, description="CPUs of one node, when known.")
    memory_mb_per_node: int | None = Field(None, ge=1, description="Memory of one node in MiB, when known.")
    gpus_per_node: dict[GpuType, int] = Field(
        default_factory=dict, description="The most GPUs of each type a single node of the partition has."
    )


class AgentSessionView(WireAnswer):
    """One live session of a Factory's agent (issue 13): what it announced, its clock, and whether it holds the
    lease that receives submit and cancel orders (at which fencing epoch)."""

    session_id: str
    agent_version: str
    adapter: str = Field(description="The adapter the agent runs at the site: rest, cli or pyslurm.")
    slurm_release: str | None = None
    opened_at: UtcDatetime
    last_heartbeat_at: UtcDatetime
    clock_offset_s: float | None = Field(None, description="The broker's clock minus the agent's, last measured.")
    paused: bool = Field(description="The site's pause switch is on: no new submits there.")
    holder: bool = Field(description="This session receives the Factory's submit and cancel orders.")
    epoch: int | None = None


class AgentLinkView(WireAnswer):
    """How a Factory reached through its agent is connected: ``connected`` when a live session holds the lease."""

    connected: bool
    sessions: list[AgentSessionView] = Field(default_factory=list)


class FactoryView(WireAnswer):
    """A Factory as the broker knows it: declared in configuration (read-only here), plus what the health
    and capacity checks last observed. Counts are a snapshot as of ``observed_at``, not a promise."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "it4lia",
                    "name": "IT4LIA",
                    "country": "IT",
                    "healthy": True,
                    "health_detail": "slurmrestd v0.0.42 answered in 41 ms",
                    "drained": False,
                    "drained_reason": None,
                    "slurm_release": "24.11.5",
                    "partitions": [
                        {
                            "name": "boost_usr_prod",
                            "default": True,
                            "max_time_min": 1440,
                            "default_time_min": 30,
                            "nodes": 3456,
                            "cpus_per_node": 32,
                            "memory_mb_per_node": 491520,
                            "gpus_per_node": {"a100": 4},
                        }
                    ],
                    "gpu_types": ["a100"],
                    "total_gpus": {"a100": 13824},
                    "free_gpus": {"a100": 212},
                    "queue_depth": 17,
                    "observed_at": "2026-03-02T09:20:00Z",
                }
            ]
        }
    )

    id: FactoryId
    name: str
    country: Country = Field(description="ISO 3166-1 alpha-2 country of the site (data residency).")
    healthy: bool | None = Field(
        description="The last health check reached slurmctld with our credential; None: not checked yet."
    )
    health_detail: str | None = Field(None, description="What the last health check saw, in words.")
    drained: bool = Field(False, description="Operators stopped new placements here; running jobs continue.")
    drained_reason: str | None = None
    slurm_release: str | None = Field(None, description="The Slurm release the site reports, e.g. '24.11.5'.")
    partitions: list[PartitionView] = Field(default_factory=list)
    gpu_types: list[GpuType] = Field(default_factory=list, description="GPU types (Slurm GRES types) offered.")
    total_gpus: dict[GpuType, int] | None = Field(None, description="GPUs by type; None when unknown.")
    free_gpus: dict[GpuType, int] | None = Field(None, description="Idle GPUs by type; None when unknown.")
    queue_depth: int = Field(0, ge=0, description="This broker's jobs placed here and still pending in Slurm.")
    observed_at: UtcDatetime | None = Field(None, description="When health and counts were last read; None: never.")
    connection: Literal["direct", "agent"] = Field(
        "direct", description="direct: the broker calls the site's Slurm; agent: the site's agent dials out."
    )
    agent: AgentLinkView | None = Field(None, description="For an agent Factory: its agent's live sessions.")


class DrainRequest(WireRequest):
    """Body of ``POST /v1/admin/factories/{id}/drain``: why new placements stop there (shown to users)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "slurmctld upgrade to 24.11, back at 14:00"}]})

    reason: str = Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")


# ---------------------------------------------------------------------------------------------------
# Dry runs
# ---------------------------------------------------------------------------------------------------


class PlacementCandidate(WireAnswer):
    """How one Factory fared in placement: filtered out (with the reasons) or scored."""

    factory: FactoryId
    eligible: bool = Field(description="It passed every filter.")
    score: float | None = Field(None, description="Its score among the eligible ones; higher is better.")
    reasons: list[str] = Field(default_factory=list, description="Why it was filtered out, or what its score says.")


class DryRunRendering(WireAnswer):
    """What would be sent to Slurm, exactly as the chosen Factory's adapter would send it."""

    adapter: str = Field(description="The adapter kind: 'rest' (slurmrestd), 'cli' or 'pyslurm'.")
    site_user: str = Field(description="The site account the job would run as.")
    script: str = Field(description="The batch script exactly as Slurm would receive it.")
    payload: JsonValue = Field(
        description="The adapter's own wire form: slurmrestd's JSON body, the sbatch argv, or pyslurm's fields."
    )


class DryRun(WireAnswer):
    """The answer of a dry run: where the job would go, why, and what Slurm would receive. Nothing is stored."""

    factory: FactoryId
    partition: str
    time_limit_min: int = Field(ge=1, description="The effective wall time (the partition's default if unset).")
    reason: str = Field(description="Why this Factory and partition were chosen.")
    rendering: DryRunRendering
    candidates: list[PlacementCandidate] = Field(
        default_factory=list, description="Every Factory considered, with why it was or was not chosen."
    )


# ---------------------------------------------------------------------------------------------------
# Identity: who am I, personal access tokens
# ---------------------------------------------------------------------------------------------------

Scope = Literal["read", "submit", "admin"]


class Me(WireAnswer):
    """The caller as the broker sees it."""

    id: str = Field(description="The caller's id: it owns jobs and scopes Idempotency-Keys.")
    name: str | None = None
    admin: bool = Field(description="Whether the caller has the broker admin role.")
    scopes: list[Scope] = Field(description="What the credential used for this call allows.")
    token_id: str | None = Field(None, description="The personal access token used for this call, if one was.")
    antenna: str | None = Field(None, description="The Antenna acting for this national user (None: a direct caller).")
    subject: str | None = Field(None, description="A national user's id at its Antenna.")
    factories: list[str] | None = Field(None, description="The only Factories this caller's jobs may go to.")


class TokenRequest(WireRequest):
    """A new personal access token for the caller; it cannot carry a scope the calling credential lacks."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "training pipeline", "scopes": ["read", "submit"], "days": 30}]}
    )

    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    days: StrictInt = Field(90, ge=1, le=366, description="Days until it expires.")


class TokenView(WireAnswer):
    """A personal access token without its secret (the broker keeps only a digest of it)."""

    id: str
    name: str
    prefix: str = Field(description="The public part of the token (cvy_<prefix>_...), to recognise it by.")
    scopes: list[Scope]
    created_at: UtcDatetime
    expires_at: UtcDatetime
    revoked_at: UtcDatetime | None = None


class NewToken(TokenView):
    """A token just made: ``token`` is shown this once and never again."""

    token: str = Field(description="The bearer token. Store it now: the broker cannot show it again.")


# ---------------------------------------------------------------------------------------------------
# Users, projects and members (admins; a project's PIs for its researchers)
# ---------------------------------------------------------------------------------------------------

ProjectRoleName = Literal["researcher", "pi"]


class UserRequest(WireRequest):
    """A new local user (admins only); the answer carries its first token, shown once."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "alice", "admin": False}]})

    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
    admin: StrictBool = False


class UserView(WireAnswer):
    id: str
    name: str
    admin: bool
    issuer: str | None = Field(None, description="The OIDC issuer of an OIDC user (None: a local user).")
    subject: str | None = None
    created_at: UtcDatetime


class NewUser(WireAnswer):
    """A user just made, with a token of read and submit scopes (and admin for an admin), shown this once."""

    user: UserView
    token: NewToken


class ProjectRequest(WireRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "EHPC-AIF-2026PG01-1147", "title": "Multilingual LLM pretraining"}]}
    )

    id: ProjectId
    title: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")


class ProjectView(WireAnswer):
    id: ProjectId
    title: str
    created_at: UtcDatetime
    role: ProjectRoleName | None = Field(None, description="The caller's role in it (None: the caller is no member).")


class MemberRequest(WireRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "researcher"}]})

    role: ProjectRoleName


class MemberView(WireAnswer):
    user_id: str
    name: str
    role: ProjectRoleName
    added_at: UtcDatetime


# ---------------------------------------------------------------------------------------------------
# Allocations: hours granted to a project on a Factory, and what its jobs reserved and used
# ---------------------------------------------------------------------------------------------------

AllocationUnitName = Literal["gpu_hours", "node_hours"]


class AllocationRequest(WireRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "project": "EHPC-AIF-2026PG01-1147",
                    "factory": "leonardo",
                    "unit": "node_hours",
                    "hours": 1250,
                    "starts_at": "2026-11-01T00:00:00Z",
                    "ends_at": "2027-01-01T00:00:00Z",
                }
            ]
        }
    )

    project: ProjectId
    factory: FactoryId
    unit: AllocationUnitName
    hours: StrictFloat = Field(gt=0, le=100_000_000)
    starts_at: RequestDatetime
    ends_at: RequestDatetime


class AllocationView(WireAnswer):
    """An allocation and its use: ``left_hours`` = granted - charged (ended jobs) - reserved (running ones)."""

    id: str
    project: ProjectId
    factory: FactoryId
    unit: AllocationUnitName
    granted_hours: float
    charged_hours: float
    reserved_hours: float
    left_hours: float
    jobs: int = Field(description="Jobs that reserved or were charged on it.")
    starts_at: UtcDatetime
    ends_at: UtcDatetime


# ---------------------------------------------------------------------------------------------------
# Site accounts: the Slurm user and account a user's (or a project's) jobs run as on a Factory
# ---------------------------------------------------------------------------------------------------

SiteAccountKind = Literal["user", "project"]
SlurmName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_.-]*$")]


class SiteAccountRequest(WireRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"slurm_user": "a08trb12", "slurm_account": "EUHPC_A01_001"}]}
    )

    slurm_user: SlurmName
    slurm_account: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class SiteAccountView(WireAnswer):
    factory: FactoryId
    kind: SiteAccountKind
    subject: str = Field(description="The user id or project id this mapping is for.")
    slurm_user: str
    slurm_account: str | None = None
    set_by: str
    set_at: UtcDatetime


# ---------------------------------------------------------------------------------------------------
# Antennas: remote gateways that act for their national users on the Factories they are linked to
# ---------------------------------------------------------------------------------------------------

AntennaId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
MAX_ANTENNA_ACTIVE_JOBS = 1_000_000
"""The largest quota of active jobs an Antenna can be given (it is stored in a 32-bit column)."""
MAX_JWKS_KEYS = 16  # an Antenna's keys: a rotation keeps the old key and the new one; sixteen is plenty
_B64URL = r"^[A-Za-z0-9_-]+$"


class PublicJwk(WireRequest):
    """One public signing key (RFC 7517): EC (``crv``, ``x``, ``y``), RSA (``n``, ``e``) or OKP (``crv``,
    ``x``). The broker also checks that it is usable for its ``alg``; private members are refused."""

    kty: Literal["EC", "RSA", "OKP"]
    kid: str = Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$", description="Its key id.")
    alg: str = Field(
        min_length=1, max_length=16, pattern=r"^[A-Za-z0-9]+$",
        description="The one asymmetric algorithm it signs with: RS256/384/512, PS256/384/512, ES256/384/512, EdDSA.",
    )  # fmt: skip
    use: Literal["sig"] | None = None
    crv: str | None = Field(None, min_length=1, max_length=16, pattern=r"^[A-Za-z0-9-]+$")
    x: str | None = Field(None, min_length=1, max_length=128, pattern=_B64URL)
    y: str | None = Field(None, min_length=1, max_length=128, pattern=_B64URL)
    n: str | None = Field(None, min_length=1, max_length=4096, pattern=_B64URL, description="RSA modulus.")
    e: str | None = Field(None, min_length=1, max_length=16, pattern=_B64URL, description="RSA public exponent.")


class PublicJwks(WireRequest):
    """A JWK Set (RFC 7517 section 5) of public signing keys, each naming its ``kid`` and ``alg``."""

    keys: list[PublicJwk] = Field(min_length=1, max_length=MAX_JWKS_KEYS)


class AntennaRequest(WireRequest):
    """Register an Antenna (admins only). ``jwks``: its public keys; each names its ``kid`` and ``alg``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "be",
                    "country": "BE",
                    "title": "AI Factory Antenna Belgium",
                    "factories": ["lumi"],
                    "jwks": {
                        "keys": [
                            {
                                "kty": "EC",
                                "crv": "P-256",
                                "kid": "be-2026-11",
                                "alg": "ES256",
                                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                            }
                        ]
                    },
                    "requests_per_minute": 600,
                    "max_active_jobs": 200,
                }
            ]
        }
    )

    id: AntennaId
    country: Country
    title: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
    factories: list[FactoryId] = Field(min_length=1, max_length=64, description="The Factories it is linked to.")
    jwks: PublicJwks = Field(description="A JWK Set of its public signing keys (asymmetric; kid and alg set).")
    requests_per_minute: StrictInt = Field(600, ge=1, le=1_000_000, description="Its rate limit (per broker process).")
    max_active_jobs: StrictInt | None = Field(
        None, ge=0, le=MAX_ANTENNA_ACTIVE_JOBS, description="Its quota of jobs not yet ended (None: no quota)."
    )


class AntennaUpdate(WireRequest):
    """Change an Antenna (admins only); omitted fields stay as they are. Keys change through their own route."""

    title: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
    factories: list[FactoryId] | None = Field(None, min_length=1, max_length=64)
    requests_per_minute: StrictInt | None = Field(None, ge=1, le=1_000_000)
    max_active_jobs: StrictInt | None = Field(None, ge=0, le=MAX_ANTENNA_ACTIVE_JOBS)


class AgentKeysView(WireAnswer):
    """A Factory's registered agent keys: the public JWK Set its agent signs every request with (a kid not
    in it is refused on the agent's next request)."""

    factory: FactoryId
    kids: list[str] = Field(description="The key ids of its registered keys.")
    jwks: dict[str, Any] = Field(description="The JWK Set as registered: public keys only.")
    updated_at: UtcDatetime
    updated_by: str = Field(description="The user who registered this set.")


class AgentIdentity(WireAnswer):
    """Who a Factory agent's request was authenticated as (``POST /v1/agent/whoami``)."""

    factory: FactoryId
    kid: str = Field(description="The registered key that signed the request.")


class AntennaView(WireAnswer):
    id: AntennaId
    country: Country
    title: str
    factories: list[FactoryId]
    kids: list[str] = Field(description="The key ids of its registered keys.")
    requests_per_minute: int
    max_active_jobs: int | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
