"""Errors on the wire and in the SDK: RFC 9457 problem details, the broker's problem types, typed exceptions.

Every error answer of the broker is an ``application/problem+json`` body (:class:`Problem`). Besides the RFC's
members it carries ``code``, a stable machine-readable string (the registry below, with dotted sub-codes such
as ``placement_failed.time_limit_exceeded``), ``errors`` for validation failures and ``retry_after_s`` when
waiting helps. Clients should branch on ``code``; titles and details are for people and may change.

The type URIs (``https://conveyor.eu/problems/<code>``) *identify* problem types, as RFC 9457 allows; they
need not resolve to a page.
"""

from __future__ import annotations

import enum
import http
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from conveyor.models import PlacementCandidate

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_BASE_URI: Final = "https://conveyor.eu/problems/"


class FieldError(BaseModel):
    """One validation failure: where (``loc``, as pydantic and FastAPI report it), what, and its error type."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    loc: list[str | int] = Field(description="Path to the offending value, e.g. ['body', 'resources', 'gpus'].")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. 'extra_forbidden', 'missing', 'value_error'.")


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[FieldError]:
    """pydantic's (or FastAPI's) ``errors()`` as :class:`FieldError` items.

    The offending ``input`` is deliberately left out: it may be a secret (an environment variable's value) and
    echoing it back would put it in proxies' and clients' logs.
    """
    return [
        FieldError(loc=list(err.get("loc", ())), msg=str(err.get("msg", "")), type=str(err.get("type", "")))
        for err in errors
    ]


class Problem(BaseModel):
    """An RFC 9457 problem details object, with Conveyor's extension members.

    Other extension members a server adds are kept (``extra="allow"``) and readable through ``model_extra``;
    a client ignores the ones it does not know.
    """

    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "type": "https://conveyor.eu/problems/validation_error",
                    "title": "The request is invalid",
                    "status": 422,
                    "detail": "1 field is invalid",
                    "instance": "/v1/jobs",
                    "code": "validation_error",
                    "errors": [
                        {"loc": ["body", "gpus"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
                    ],
                }
            ]
        },
    )

    type: str = Field("about:blank", description="A URI identifying the problem type (it need not resolve).")
    title: str | None = Field(None, description="A short, human-readable summary of the problem type.")
    status: int | None = Field(None, ge=100, le=599, description="The HTTP status code of this occurrence.")
    detail: str | None = Field(None, description="What went wrong this time, and what to do about it.")
    instance: str | None = Field(None, description="A URI reference of this occurrence (usually the request path).")
    code: str | None = Field(None, description="A stable machine-readable code; may carry a dotted sub-code.")
    errors: list[FieldError] | None = Field(None, description="For validation errors: each offending field.")
    retry_after_s: int | None = Field(None, ge=0, description="Seconds to wait before retrying (as Retry-After).")

    @classmethod
    def from_status(cls, status: int, detail: str | None = None) -> Problem:
        """A problem for an error answer that carried no problem body (e.g. a proxy's HTML 502 page): type
        ``about:blank`` with the status phrase as title, as RFC 9457 prescribes; no code is guessed."""
        try:
            title: str | None = http.HTTPStatus(status).phrase
        except ValueError:
            title = None
        return cls(status=status, title=title, detail=detail)

    def body(self) -> dict[str, Any]:
        """The JSON body to send: members that are None are left out rather than sent as null."""
        return self.model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------------------------------------------
# The registry of problem types
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One kind of problem the broker reports: its code, default title and HTTP status."""

    code: str
    title: str
    status: int

    @property
    def uri(self) -> str:
        return PROBLEM_BASE_URI + self.code

    def problem(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        instance: str | None = None,
        errors: list[FieldError] | None = None,
        retry_after_s: int | None = None,
        title: str | None = None,
        **extensions: JsonValue,
    ) -> Problem:
        """An occurrence of this type. ``code`` may refine the type with a dotted sub-code of it."""
        if code is not None and code != self.code and not code.startswith(self.code + "."):
            raise ValueError(f"sub-code {code!r} does not belong to problem type {self.code!r}")
        return Problem(
            type=self.uri,
            title=title or self.title,
            status=self.status,
            detail=detail,
            instance=instance,
            code=code or self.code,
            errors=errors,
            retry_after_s=retry_after_s,
            **extensions,
        )


VALIDATION_ERROR: Final = ProblemType("validation_error", "The request is invalid", 422)
NOT_FOUND: Final = ProblemType("not_found", "Not found", 404)
# A key reused with a different request body conflicts with the job that key already names: 409, as the
# product's API contract says (the IETF Idempotency-Key draft suggests 422; the code tells either way).
IDEMPOTENCY_CONFLICT: Final = ProblemType(
    "idempotency_conflict", "The idempotency key was already used for a different request", 409
)
PLACEMENT_FAILED: Final = ProblemType("placement_failed", "No Factory can run this job", 422)
ALREADY_EXISTS: Final = ProblemType("already_exists", "Something with that id exists already", 409)
CANCEL_NOT_POSSIBLE: Final = ProblemType("cancel_not_possible", "The job can no longer be cancelled", 409)
# A Factory agent's session has lapsed (no heartbeat within its TTL): the agent opens a new one.
AGENT_SESSION_ENDED: Final = ProblemType("agent_session_ended", "The agent's session is over; open a new one", 409)
# The job's output cannot be read now: it has not reached Slurm yet, or its Factory's adapter cannot read files.
# The sub-code says which (output_unavailable.not_submitted, .not_started, .not_readable, .gone: Slurm no longer
# knows the job). Never retried: a Factory that does not answer is a 503 instead.
OUTPUT_UNAVAILABLE: Final = ProblemType("output_unavailable", "The job's output cannot be read", 409)
# Refused at the HTTP edge before any route read the request (the broker's settings name the limits).
# Sub-codes say which limit: headers_too_large.field (one field), .total (all of them); without one, the server
# itself refused a head larger than it parses. malformed_request.http: the server could not parse the request;
# .byte_order_mark, .not_utf8, .duplicate_key, .nesting: a JSON body that is not plain UTF-8 JSON.
# unsupported_media_type.content_encoding (not identity), .charset (not utf-8).
PAYLOAD_TOO_LARGE: Final = ProblemType("payload_too_large", "The request body is too large", 413)
HEADERS_TOO_LARGE: Final = ProblemType("headers_too_large", "The request's header fields are too large", 431)
MALFORMED_REQUEST: Final = ProblemType("malformed_request", "The request cannot be read", 400)
UNSUPPORTED_MEDIA_TYPE: Final = ProblemType(
    "unsupported_media_type", "The request body's encoding is not supported", 415
)
# A job with secret_environment sent to a broker configured without a secrets key (CONVEYOR_SECRETS_KEY_FILE):
# it could not keep them encrypted, so it refuses the job; the same job without secrets is accepted.
SECRETS_NOT_CONFIGURED: Final = ProblemType(
    "secrets_not_configured", "This broker keeps no secrets: it refuses secret_environment", 422
)
UNAUTHORIZED: Final = ProblemType("unauthorized", "Authentication is required", 401)
FORBIDDEN: Final = ProblemType("forbidden", "Not allowed", 403)
RATE_LIMITED: Final = ProblemType("rate_limited", "Too many requests", 429)
UNAVAILABLE: Final = ProblemType("unavailable", "The broker is temporarily unavailable", 503)
INTERNAL_ERROR: Final = ProblemType("internal_error", "Internal error", 500)

PROBLEM_TYPES: Final[Mapping[str, ProblemType]] = {
    p.code: p
    for p in (
        VALIDATION_ERROR,
        NOT_FOUND,
        IDEMPOTENCY_CONFLICT,
        ALREADY_EXISTS,
        PLACEMENT_FAILED,
        CANCEL_NOT_POSSIBLE,
        AGENT_SESSION_ENDED,
        OUTPUT_UNAVAILABLE,
        PAYLOAD_TOO_LARGE,
        HEADERS_TOO_LARGE,
        MALFORMED_REQUEST,
        UNSUPPORTED_MEDIA_TYPE,
        SECRETS_NOT_CONFIGURED,
        UNAUTHORIZED,
        FORBIDDEN,
        RATE_LIMITED,
        UNAVAILABLE,
        INTERNAL_ERROR,
    )
}


class PlacementCode(enum.StrEnum):
    """Sub-codes of ``placement_failed``: the one vocabulary of the broker's placement and the SDK.

    When every partition falls short, the code names the check at which the job got furthest (GPU type, GPUs
    per node, nodes, CPUs per node, memory per node, time limit), so the user learns the one thing to change;
    ``details`` members (``partitions``, ``requested``, ...) carry the facts the message names.
    """

    # Which Factories the job may use at all
    UNKNOWN_FACTORY = "placement_failed.unknown_factory"
    FACTORY_NOT_ALLOWED = "placement_failed.factory_not_allowed"
    NO_FACTORY_ALLOWED = "placement_failed.no_factory_allowed"
    COUNTRY_EXCLUDED = "placement_failed.country_excluded"
    WORKING_DIRECTORY_NOT_ALLOWED = "placement_failed.working_directory_not_allowed"
    CONTAINER_NOT_ALLOWED = "placement_failed.container_not_allowed"
    # What no partition offers
    GPU_TYPE_UNAVAILABLE = "placement_failed.gpu_type_unavailable"
    NO_GPUS = "placement_failed.no_gpus"
    NO_CPU_PARTITION = "placement_failed.no_cpu_partition"
    GPUS_PER_NODE_EXCEEDED = "placement_failed.gpus_per_node_exceeded"
    NODES_EXCEEDED = "placement_failed.nodes_exceeded"
    CPUS_PER_NODE_EXCEEDED = "placement_failed.cpus_per_node_exceeded"
    MEMORY_PER_NODE_EXCEEDED = "placement_failed.memory_per_node_exceeded"
    TIME_LIMIT_EXCEEDED = "placement_failed.time_limit_exceeded"
    NO_DEFAULT_TIME_LIMIT = "placement_failed.no_default_time_limit"
    # The job fits, but not now: the broker keeps it queued rather than refusing it
    FACTORY_DRAINED = "placement_failed.factory_drained"
    FACTORY_UNHEALTHY = "placement_failed.factory_unhealthy"
    NO_AVAILABLE_FACTORY = "placement_failed.no_available_factory"
    AGENT_NOT_CONNECTED = "placement_failed.agent_not_connected"
    # The Factory's agent does not know a field the job uses (version skew): another Factory, or its upgrade
    AGENT_LACKS_FEATURE = "placement_failed.agent_lacks_feature"
    # Reserved for allocations, Antenna links and scored placement (later issues); not emitted yet
    NO_ALLOCATION = "placement_failed.no_allocation"
    ALLOCATION_EXHAUSTED = "placement_failed.allocation_exhausted"
    ANTENNA_NOT_LINKED = "placement_failed.antenna_not_linked"
    NO_MATCH = "placement_failed.no_match"


def problem_type(code: str | None) -> ProblemType | None:
    """The registered type of a code, sub-codes included (``placement_failed.x`` -> ``placement_failed``)."""
    if code is None:
        return None
    return PROBLEM_TYPES.get(code) or PROBLEM_TYPES.get(code.split(".", 1)[0])


# ---------------------------------------------------------------------------------------------------
# The SDK's exceptions
# ---------------------------------------------------------------------------------------------------


class ConveyorError(Exception):
    """An error answer of the broker. ``problem`` holds the whole problem details; ``retryable`` says whether
    sending the same request again later may succeed (the SDK's retries honour ``retry_after``)."""

    retryable: ClassVar[bool] = False

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(self._message())

    @property
    def status(self) -> int | None:
        return self.problem.status

    @property
    def code(self) -> str | None:
        return self.problem.code

    @property
    def retry_after(self) -> int | None:
        """Seconds to wait before retrying, when the broker said (body member or Retry-After header)."""
        return self.problem.retry_after_s

    def _message(self) -> str:
        head = " ".join(str(part) for part in (self.problem.status, self.problem.code) if part is not None)
        text = self.problem.detail or self.problem.title or "error"
        where = f" ({self.problem.instance})" if self.problem.instance else ""
        return f"{head}: {text}{where}" if head else f"{text}{where}"

    def __reduce__(self) -> tuple[type[ConveyorError], tuple[Problem]]:
        # Exceptions pickle as cls(*args); ours is built from the problem, not the message.
        return (type(self), (self.problem,))


class ValidationFailed(ConveyorError):
    """The request was refused as invalid (400/422), too large (413/431) or in an encoding the broker does not
    read (415); ``errors`` names each offending field."""

    @property
    def errors(self) -> list[FieldError]:
        return list(self.problem.errors or ())


class AuthError(ConveyorError):
    """Not authenticated (401) or not allowed (403)."""


class NotFound(ConveyorError):
    """No such resource, or one you may not see (another project's job answers 404 too)."""


class Conflict(ConveyorError):
    """The request conflicts with the resource's current state."""


class IdempotencyConflict(Conflict):
    """The Idempotency-Key was already used for a different request: use a new key for a new job."""


class CancelNotPossible(Conflict):
    """The job already ended; there is nothing left to cancel."""


class OutputUnavailable(Conflict):
    """The job's output cannot be read: not at Slurm yet, no longer known to Slurm, or its Factory's files are out
    of the broker's reach (``code`` says which)."""


class PlacementFailed(ConveyorError):
    """No Factory can run the job as specified. ``code`` carries the sub-code (:class:`PlacementCode`) and
    ``candidates`` says, per Factory, why it was ruled out."""

    _CANDIDATES: ClassVar[TypeAdapter[list[PlacementCandidate]]] = TypeAdapter(list[PlacementCandidate])

    @property
    def candidates(self) -> list[PlacementCandidate]:
        raw = (self.problem.model_extra or {}).get("candidates")
        if raw is None:
            return []
        try:
            return self._CANDIDATES.validate_python(raw)
        except ValidationError:
            return []  # an explanation we cannot read must not hide the error itself


class RateLimited(ConveyorError):
    """Too many requests (429): wait ``retry_after`` seconds."""

    retryable = True


class Unavailable(ConveyorError):
    """The broker (or something in front of it) is temporarily unavailable (502/503/504)."""

    retryable = True


_BY_CODE: Mapping[str, type[ConveyorError]] = {
    VALIDATION_ERROR.code: ValidationFailed,
    NOT_FOUND.code: NotFound,
    IDEMPOTENCY_CONFLICT.code: IdempotencyConflict,
    ALREADY_EXISTS.code: Conflict,
    PLACEMENT_FAILED.code: PlacementFailed,
    CANCEL_NOT_POSSIBLE.code: CancelNotPossible,
    AGENT_SESSION_ENDED.code: Conflict,
    OUTPUT_UNAVAILABLE.code: OutputUnavailable,
    PAYLOAD_TOO_LARGE.code: ValidationFailed,
    HEADERS_TOO_LARGE.code: ValidationFailed,
    MALFORMED_REQUEST.code: ValidationFailed,
    UNSUPPORTED_MEDIA_TYPE.code: ValidationFailed,
    SECRETS_NOT_CONFIGURED.code: ValidationFailed,
    UNAUTHORIZED.code: AuthError,
    FORBIDDEN.code: AuthError,
    RATE_LIMITED.code: RateLimited,
    UNAVAILABLE.code: Unavailable,
    INTERNAL_ERROR.code: ConveyorError,
}
_BY_STATUS: Mapping[int, type[ConveyorError]] = {
    400: ValidationFailed,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    410: NotFound,
    413: ValidationFailed,
    415: ValidationFailed,
    422: ValidationFailed,
    431: ValidationFailed,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_from_problem(problem: Problem) -> ConveyorError:
    """The typed exception for a problem: by its code when the broker sent one we know (sub-codes included),
    else by its HTTP status, else the base :class:`ConveyorError`."""
    known = problem_type(problem.code)
    if known is not None:
        return _BY_CODE[known.code](problem)
    cls = _BY_STATUS.get(problem.status) if problem.status is not None else None
    return (cls or ConveyorError)(problem)
