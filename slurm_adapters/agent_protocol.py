"""The Factory agent's link to the broker: the messages both sides exchange and how each request is signed.

The agent runs inside a site and opens every connection itself (outbound only). Its requests, all ``POST``
with a JSON body under :data:`PREFIX`, are:

* ``/sessions`` (:class:`Hello` -> :class:`SessionGranted`): a new session; the agent announces its version,
  adapter, Slurm release and the job-spec fields it knows (:data:`FEATURES`). A restarted agent starts over
  with a new session: it keeps nothing on disk.
* ``/sessions/{id}/heartbeat`` (:class:`Heartbeat` -> :class:`HeartbeatAnswer`): keeps the session alive and
  competes for the Factory's agent lease. The lease holder, at the lease's fencing ``epoch``, is the only
  session that receives submit and cancel orders; the others are standbys that take over when it lapses.
  Every answer carries the broker's clock, from which the agent knows its offset.
* ``/sessions/{id}/orders`` (:class:`Poll` -> :class:`Orders`): a long poll. Orders are bound to (session,
  epoch, ``not_after``) and redelivered only within their own session until acknowledged by cursor; the
  agent drops repeats by order id (and a submit's repeat by attempt id).
* ``/sessions/{id}/reports`` (:class:`Reports` -> :class:`ReportsAnswer`): facts, accepted from any
  authenticated session of the Factory, idempotent by order id.
* ``/sessions/{id}/listing`` (:class:`Listing` -> :class:`ListingAnswer`): Slurm's view of the Factory's active
  jobs, pushed by the lease holder as the session's :class:`PushPlan` says: a numbered full snapshot, then
  deltas against it, and a full one again after a gap, after a restart and at least every ``full_every_s``.
* ``/sessions/{id}/site`` (:class:`SiteState` -> :class:`SiteAnswer`): the site's Slurm health and cluster
  information, pushed by the lease holder every ``site_interval_s``.

The at-most-once rule across the boundary: the broker commits the attempt before its submit order exists, and
the order's ``not_after`` (broker time) is the last moment its Slurm call may still be running. The agent
starts a submit only if, by its own clock corrected by the offset, the call's deadline ends before
``not_after``, and takes no order while the offset exceeds the Factory's ``clock_skew_s``. The broker looks
the attempt up at the site only after ``not_after`` + Slurm's MessageTimeout + the skew; the agent gathers
that evidence (read orders) and the broker decides, never the agent.

Every request carries ``Authorization: Agent <JWS>`` (:func:`sign`): a JWT of type :data:`TYP` that the agent
signs with its Factory's registered key, ``iss`` = ``sub`` = the Factory, ``aud`` = the broker, at most
:data:`MAX_LIFETIME_S` long, a ``jti`` accepted once, and bound to the request by ``htm``/``htu``/``bh`` (method,
path with query, SHA-256 of the body), as Antenna assertions are.

Slurm data inside messages (job specs, records, errors) is encoded by :mod:`slurm_adapters.codec`; a spec with
a field the agent does not know is refused with that reason, never run without it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import jwt
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    model_validator,
)

from slurm_adapters.codec import SPEC_FIELDS, spec_fields_used
from slurm_adapters.records import SlurmJobSpec

PROTOCOL: Final = 1
PREFIX: Final = "/v1/agent"
TYP: Final = "conveyor-agent+jwt"
SCHEME: Final = "Agent"  # Authorization: Agent <assertion>
MAX_LIFETIME_S: Final = 300
DEFAULT_LIFETIME_S: Final = 60

# What an agent of this code knows: every field of the adapter-level job spec, and pushing its listings and
# the site's state (:class:`PushPlan`).
PUSH: Final = "push"
FEATURES: Final = (*(f"spec.{name}" for name in SPEC_FIELDS), PUSH)


def features_used(spec: SlurmJobSpec) -> frozenset[str]:
    """The features an agent must have announced to run ``spec``: ``spec.<field>`` of each field it uses."""
    return frozenset(f"spec.{name}" for name in spec_fields_used(spec))


# The adapter operations a read order may ask for (the SlurmAdapter methods that change nothing).
READ_OPS: Final = frozenset(
    {"get_job", "list_jobs", "accounted_jobs", "read_output", "read_output_chunk", "cluster_info", "health"}
)

MAX_ORDERS: Final = 500  # per poll answer
MAX_REPORTS: Final = 500  # per reports request
# An agent's reports request carries at most this many bytes of reports (at least one report), well within the
# broker's default body limit (2 MiB): a batch of large listings must never be refused whole, again and again.
MAX_REPORTS_BYTES: Final = 1024 * 1024
MAX_WAIT_S: Final = 30.0  # longest long poll
MAX_LISTED: Final = 100_000  # jobs in one listing

Name = Annotated[str, Field(min_length=1, max_length=255)]
OrderId = Annotated[StrictInt, Field(ge=0, le=2**53 - 1)]  # exact in every JSON parser
MAX_TIME_CHARS: Final = 40


def _time_text(value: Any) -> Any:
    """A time as JSON carries it: an RFC 3339 string of bounded length (a number is not a time)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("a time must be an RFC 3339 string with a zone, e.g. 2026-12-07T00:00:00Z")
    if len(value) > MAX_TIME_CHARS:
        raise ValueError(f"a time has at most {MAX_TIME_CHARS} characters")
    return value


# Strict JSON types in what the agent sends (a number is not a time, "1" is not a count), every value bounded.
Time = Annotated[
    AwareDatetime,
    BeforeValidator(_time_text),
    WithJsonSchema({"type": "string", "format": "date-time", "maxLength": MAX_TIME_CHARS}),
]


class Message(BaseModel):
    """Every message: unknown fields are refused, so a newer side's field is never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sessions ----------------------------------------------------------------------------------------------


class Hello(Message):
    """A new session: who the agent is and what it can do."""

    protocol: Annotated[StrictInt, Field(ge=1, le=1000)] = PROTOCOL
    agent_version: Name
    adapter: Literal["rest", "cli", "pyslurm"]
    slurm_release: Name | None = None
    features: list[Name] = Field(max_length=1000)
    agent_time: Time


class PushPlan(Message):
    """What the agent pushes while it holds the lease: its listing of Slurm's active jobs whose tag starts with
    ``tag_prefix`` every ``listing_interval_s`` (a full snapshot at least every ``full_every_s``), and the
    site's state (:class:`SiteState`) every ``site_interval_s``."""

    tag_prefix: Name
    listing_interval_s: float = Field(gt=0)
    full_every_s: float = Field(gt=0)
    site_interval_s: float = Field(gt=0)


class SessionGranted(Message):
    """The session's id and the broker's timing rules for it; ``push`` when the agent is to push its listings
    and the site's state (it announced :data:`PUSH`)."""

    session_id: Name
    factory: Name
    broker_time: AwareDatetime
    heartbeat_s: float = Field(gt=0)
    lease_s: float = Field(gt=0)
    poll_wait_s: float = Field(gt=0, le=MAX_WAIT_S)
    clock_skew_s: float = Field(ge=0)
    push: PushPlan | None = None


class Heartbeat(Message):
    """Alive; ``paused`` when the site's local switch stops new submits (reports go on); ``leaving`` when the
    agent is stopping: it gives the lease up at once, so that a standby takes over without waiting for it to
    lapse, and it finishes and reports what it carries out already."""

    agent_time: Time
    paused: StrictBool = False
    leaving: StrictBool = False


class HeartbeatAnswer(Message):
    """Whether this session holds the Factory's agent lease, at which fencing epoch, until when."""

    broker_time: AwareDatetime
    holder: bool
    epoch: int | None = None
    lease_expires_at: AwareDatetime | None = None


# --- orders ------------------------------------------------------------------------------------------------


class Requester(Message):
    """On whose behalf a submit is asked: the site's policy may decide by it."""

    user: Name
    project: Name
    antenna: Name | None = None


class SubmitOrder(Message):
    """Submit ``spec`` (:func:`slurm_adapters.codec.spec_to_json`) as ``site_user`` (the broker's proposal)."""

    kind: Literal["submit"] = "submit"
    id: int
    epoch: int
    not_after: AwareDatetime
    attempt: Name  # "<job id>/<attempt number>": a repeat of it is dropped
    spec: dict[str, Any]
    site_user: Name
    requester: Requester


class CancelOrder(Message):
    """Cancel Slurm job ``slurm_job_id`` only if its tag and user still match (ids are re-issued)."""

    kind: Literal["cancel"] = "cancel"
    id: int
    epoch: int
    not_after: AwareDatetime
    slurm_job_id: int
    tag: Name
    site_user: Name


class ReadOrder(Message):
    """Run a read-only adapter operation (:data:`READ_OPS`) and report its result."""

    kind: Literal["read"] = "read"
    id: int
    not_after: AwareDatetime
    op: Literal["get_job", "list_jobs", "accounted_jobs", "read_output", "read_output_chunk", "cluster_info", "health"]
    args: dict[str, Any] = Field(default_factory=dict)


Order = Annotated[SubmitOrder | CancelOrder | ReadOrder, Field(discriminator="kind")]


class Poll(Message):
    """Wait up to ``wait_s`` for orders; every order with id <= ``ack`` has been received."""

    ack: OrderId
    wait_s: StrictFloat = Field(ge=0, le=MAX_WAIT_S)
    max_orders: StrictInt = Field(default=100, ge=1, le=MAX_ORDERS)


class Orders(Message):
    """Orders for this session, oldest first, with the broker's clock at hand-out."""

    broker_time: AwareDatetime
    orders: list[Order] = Field(max_length=MAX_ORDERS)


# --- reports -----------------------------------------------------------------------------------------------


class Report(Message):
    """What came of one order. ``ok``: ``result`` is the operation's data (:mod:`slurm_adapters.codec`);
    otherwise ``error`` is a typed error (``codec.error_to_json``). ``refused``: the site's policy said no,
    before Slurm was asked. ``site_account`` is the account a submit ran as."""

    order: OrderId
    ok: StrictBool
    result: Any = None  # checked field by field by slurm_adapters.codec when read
    error: dict[str, Any] | None = None  # checked by codec.error_from_json when read
    refused: StrictBool = False
    site_account: Name | None = None
    finished_at: Time


class Reports(Message):
    reports: list[Report] = Field(min_length=1, max_length=MAX_REPORTS)


class ReportsAnswer(Message):
    """``applied``: reports that settled an open order; ``ignored``: repeats and orders already settled."""

    applied: int
    ignored: int


# --- listings ----------------------------------------------------------------------------------------------


class Listing(Message):
    """Slurm's active jobs with the plan's tag prefix, as records (``codec.record_to_json``). ``seq`` 0: a full
    snapshot numbered ``snapshot`` (chosen anew for each), every listed job. ``seq`` n > 0: a delta against
    (``snapshot``, n - 1), only the jobs new or changed since. A delta never removes a job: that a job is gone
    is concluded only from a full snapshot. ``listed_at``: when the listing began (broker time, agent's view)."""

    snapshot: OrderId
    seq: OrderId
    listed_at: Time
    jobs: list[dict[str, Any]] = Field(max_length=MAX_LISTED)

    @property
    def full(self) -> bool:
        return self.seq == 0


class ListingAnswer(Message):
    """``applied``: the view now stands on this listing. ``want_full``: the broker does not hold the listing
    this delta builds on (a gap, another session's snapshot): the next one must be full."""

    applied: bool
    want_full: bool


class SiteState(Message):
    """The site's Slurm as the agent saw it, asked after ``taken_at`` (broker time, agent's view): ``health``
    (``codec.health_to_json``) or, when the health call failed, its ``error`` (``codec.error_to_json``, as a
    read order would report it), and ``cluster_info`` (``codec.cluster_info_to_json``; None when not read)."""

    taken_at: Time
    health: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cluster_info: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _health_or_error(self) -> SiteState:
        if (self.health is None) == (self.error is None):
            raise ValueError("a site state carries exactly one of health and error")
        return self


class SiteAnswer(Message):
    """``applied``: the broker now holds this state; false when it holds a newer one."""

    applied: bool


# --- signing -----------------------------------------------------------------------------------------------


def body_hash(body: bytes) -> str:
    """The ``bh`` claim: base64url SHA-256 of the exact body bytes, without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode("ascii")


def request_claims(method: str, target: str, body: bytes) -> dict[str, str]:
    """The claims that bind an assertion to one request: method, path with query, body hash."""
    return {"htm": method.upper(), "htu": target, "bh": body_hash(body)}


def sign(
    private_key: Any,
    *,
    kid: str,
    alg: str,
    factory: str,
    audience: str,
    method: str,
    target: str,
    body: bytes,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    now: float | None = None,
) -> str:
    """The agent's assertion for one request; ``private_key`` is what PyJWT signs with."""
    issued = int(time.time() if now is None else now)
    payload = {
        "iss": factory,
        "sub": factory,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime_s,
        "jti": secrets.token_urlsafe(16),
        **request_claims(method, target, body),
    }
    return jwt.encode(payload, private_key, algorithm=alg, headers={"kid": kid, "typ": TYP})


def offset_s(broker_time: datetime, sent: datetime, received: datetime) -> float:
    """How far the broker's clock is ahead of ours, from one round trip (its answer's midpoint)."""
    midpoint = sent + (received - sent) / 2
    return (broker_time - midpoint).total_seconds()


__all__ = [
    "DEFAULT_LIFETIME_S",
    "FEATURES",
    "MAX_LIFETIME_S",
    "MAX_LISTED",
    "PREFIX",
    "PROTOCOL",
    "PUSH",
    "READ_OPS",
    "SCHEME",
    "TYP",
    "CancelOrder",
    "Heartbeat",
    "HeartbeatAnswer",
    "Hello",
    "Listing",
    "ListingAnswer",
    "Order",
    "Orders",
    "Poll",
    "PushPlan",
    "ReadOrder",
    "Report",
    "Reports",
    "ReportsAnswer",
    "Requester",
    "SessionGranted",
    "SiteAnswer",
    "SiteState",
    "SubmitOrder",
    "body_hash",
    "features_used",
    "offset_s",
    "request_claims",
    "sign",
]
