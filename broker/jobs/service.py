"""The job service: accepting, reading, listing and cancelling jobs, reading their output, dry runs.

It speaks the wire models (``conveyor.models``) on its edge and the repositories inside; it never imports
FastAPI, and it never calls Slurm while accepting a job (the dispatcher does that). The only Slurm calls it
makes are the ones a caller explicitly asks for and waits on: reading a job's output.

Rules it keeps:

- Accept-time feasibility: placement runs against the configured Factories *as if all were healthy and
  undrained*. A job that no partition anywhere could ever run is refused now with placement's precise
  message (422); a job that fits but whose Factories are down or drained is accepted and waits: health is
  the dispatcher's business, and an outage must not turn into refused work.
- Tenancy (:mod:`broker.tenancy.projects`): a caller submits only to its projects and sees its own jobs there (a PI:
  all of the project's jobs). Any other job answers exactly like a missing one. A dry run is authorized exactly
  like a submit, before any placement: it shows nothing of a project the caller may not submit to.
- Idempotency: keys are scoped to the caller. The first request with a key creates the job (``created``
  True: 201); the same key with the same validated body returns that job (``created`` False: the API answers
  200, so a client can tell a replay from a creation); the same key with another body is refused
  (:class:`~broker.errors.IdempotencyKeyReused`, 422 per the problem registry, as the IETF draft prescribes).
- Secrets (:mod:`broker.jobs.secrets`): a spec's ``secret_environment`` is stored sealed beside the spec, which
  holds it redacted; every answer (jobs, listings, dry runs) shows the names with the redaction marker. Without
  a secrets key, a job with secrets is refused (and so is its dry run), never stored in the clear.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Mapping
from typing import Protocol

from broker.agents.sessions import agent_features
from broker.db.engine import Database
from broker.db.group_commit import GroupCommit
from broker.db.models import Job as JobRow
from broker.db.models import JobEvent as EventRow
from broker.db.repositories import FactoryStateRepository, IdempotencyConflict, InvalidCursor, JobRepository, NewJob
from broker.db.repositories.allocations import OverBudget
from broker.db.repositories.errors import AllocationNotInForce, AntennaQuotaFull, NotAMember
from broker.db.repositories.jobs import Created, Creation, KeyUse
from broker.db.repositories.pagination import JobFilter
from broker.db.repositories.submissions import SubmissionFacts, SubmissionRepository
from broker.db.types import utc_now
from broker.errors import (
    CancelNotPossible,
    FactoryUnreachable,
    Forbidden,
    IdempotencyKeyReused,
    Invalid,
    InvalidInput,
    NotFound,
    OutputUnavailable,
    PlacementImpossible,
    TooManyRequests,
)
from broker.factories import working_roots
from broker.factories.placement import NOT_CHECKED, FactoryStatus, Placement, PlacementError, place
from broker.factories.registry import Factory, FactoryRegistry
from broker.identity import Principal
from broker.jobs import secrets, translate
from broker.jobs.idempotency import MAX_KEY_LENGTH
from broker.jobs.ids import new_job_id
from broker.secret_box import SecretBox
from broker.tenancy.allocations import Budget, budget_of, over_budget
from broker.tenancy.projects import ProjectService, Tenancy
from broker.tenancy.site_accounts import SiteAccountService
from broker.ttl_cache import TtlCache
from conveyor.models import (
    DryRun,
    DryRunRendering,
    EventList,
    EventQuery,
    Job,
    JobEvent,
    JobLinks,
    JobList,
    JobOutput,
    JobOutputChunk,
    JobQuery,
    OutputStream,
    PlacementCandidate,
)
from conveyor.problems import PlacementCode
from conveyor.spec import JobSpec, JobState
from slurm_adapters import errors as slurm_errors
from slurm_adapters.interface import SlurmAdapter

# Printable ASCII, as the IETF Idempotency-Key draft's examples (UUIDs, random tokens); no control characters.
_KEY = re.compile(rf"^[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}$")
_EVENT_CURSOR_VERSION = 1
OUTPUT_TIMEOUT_S = 10.0  # the adapter's own deadline is 8 s; this bounds the caller's wait whatever it does
MAX_OUTPUT_BYTES = 1024 * 1024
# The largest offset a ranged output read takes: JSON's largest exact integer (9 PB, beyond any output file).
MAX_OUTPUT_OFFSET = 2**53 - 1
DEFAULT_ACCEPT_BATCH = 256  # the most accepts one group commit writes (Settings.accept_batch)
# How long a caller's roles and its project's allocations are remembered between its submissions. Nothing is
# accepted on stale facts: the write checks membership and the allocation's period again at commit.
DEFAULT_FACTS_TTL_S = 5.0
_NOT_A_MEMBER = "you are not a member of project {project!r}; its PI or an admin can add you"
QUOTA_RETRY_AFTER_S = 60  # an Antenna over its quota of active jobs: jobs end on the scale of minutes


class AdapterSource(Protocol):
    """Where the service finds the adapter of a Factory (``broker.factories.adapters.AdapterPool`` in production)."""

    def get(self, factory_id: str) -> SlurmAdapter: ...


def _all_available(registry: FactoryRegistry) -> dict[str, FactoryStatus]:
    return {factory.id: FactoryStatus(healthy=True) for factory in registry}


def _impossible(error: PlacementError) -> PlacementImpossible:
    return PlacementImpossible(error.code.value, error.message, error.details)


def _slurm_id(row: JobRow) -> int | None:
    return int(row.slurm_job_id) if row.slurm_job_id and row.slurm_job_id.isdigit() else None


def _at_slurm(row: JobRow) -> tuple[str, int]:
    """The job's Factory and Slurm id; a job that has not reached Slurm has no output (a 409 saying why)."""
    slurm_job_id = _slurm_id(row)
    if row.factory is None or slurm_job_id is None:
        why = f": {row.state_reason}" if row.state_reason else ""
        later = "" if row.state.is_terminal else "; it has output once Slurm runs it"
        raise OutputUnavailable("not_submitted", f"job {row.id} is {row.state}{why} and has not reached Slurm{later}")
    return row.factory, slurm_job_id


def job_to_wire(row: JobRow) -> Job:
    """A stored job as the API shows it."""
    return Job(
        id=row.id,
        state=row.state,
        state_reason=row.state_reason,
        project=row.project,
        name=row.name,
        owner=row.owner,
        spec=JobSpec.model_validate(row.spec),
        labels=dict(row.labels),
        factory=row.factory,
        partition=row.partition,
        site_user=row.slurm_user,
        slurm_job_id=_slurm_id(row),
        slurm_state=row.slurm_state,
        slurm_reason=row.slurm_reason,
        exit_code=row.exit_code,
        signal=row.signal,
        placement_reason=row.placement_reason,
        cancel_requested=row.cancel_requested_at is not None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        submitted_at=row.submitted_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        links=JobLinks.for_job(row.id),
    )


def event_to_wire(row: EventRow) -> JobEvent:
    return JobEvent(
        id=row.id,
        job_id=row.job_id,
        at=row.at,
        kind=str(row.kind),
        from_state=row.from_state,
        to_state=row.to_state,
        actor=row.actor,
        detail=dict(row.detail),
    )


def _encode_event_cursor(last_id: int) -> str:
    raw = json.dumps([_EVENT_CURSOR_VERSION, last_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_event_cursor(cursor: str) -> int:
    try:
        version, last_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        version, last_id = None, None
    if version != _EVENT_CURSOR_VERSION or not isinstance(last_id, int) or last_id < 0:
        raise InvalidInput([Invalid(("query", "cursor"), "not a cursor this broker issued", "invalid_cursor")])
    return last_id


def _labels(selectors: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for selector in selectors:
        key, value = selector.split("=", 1)
        if labels.get(key, value) != value:
            raise InvalidInput(
                [Invalid(("query", "label"), f"label {key!r} given twice with different values", "label_conflict")]
            )
        labels[key] = value
    return labels


def _key_of(creation: Creation) -> Hashable | None:
    """A group commit keeps two uses of one caller's key apart: the second is answered from the first's row."""
    return creation.key.pair if creation.key is not None else None


def _may_use(caller: Principal, budget: Budget | None) -> frozenset[str] | None:
    """The Factories a job may go to: those of its project's allocations (``budget``; None for a dev-mode
    principal: any), and of those only its Antenna's linked ones for a national user."""
    allowed = None if budget is None else frozenset(budget.factories)
    if caller.factories is not None:
        allowed = caller.factories if allowed is None else allowed & caller.factories
    return allowed


def _linked_only(caller: Principal, spec: JobSpec) -> None:
    """An Antenna's national user may name only a Factory the Antenna is linked to (403, not a placement
    failure: the Factory exists and fits, the caller may not use it)."""
    wanted = spec.placement.factory
    if wanted is not None and caller.factories is not None and wanted not in caller.factories:
        raise Forbidden(f"Antenna {caller.antenna} is not linked to Factory {wanted!r}")


class JobService:
    """Everything the API does with jobs, for one authenticated caller at a time."""

    def __init__(
        self,
        database: Database,
        registry: FactoryRegistry,
        adapters: AdapterSource,
        *,
        on_new_job: Callable[[], None] | None = None,
        output_timeout_s: float = OUTPUT_TIMEOUT_S,
        accept_batch: int = DEFAULT_ACCEPT_BATCH,
        facts_ttl_s: float = DEFAULT_FACTS_TTL_S,
        secret_box: SecretBox | None = None,
    ) -> None:
        self._database = database
        self._secret_box = secret_box  # None: the broker keeps no secrets and refuses jobs that have some
        self._jobs = JobRepository(database)
        self._accepts: GroupCommit[Creation, Created] | None = (
            GroupCommit(self._jobs.create_together, max_batch=accept_batch, identity=_key_of) if accept_batch else None
        )
        self._factory_states = FactoryStateRepository(database)
        self._projects = ProjectService(database)
        self._submissions = SubmissionRepository(database)
        self._remembered_facts: TtlCache[tuple[str, str], SubmissionFacts] = TtlCache(facts_ttl_s)
        self._site_accounts = SiteAccountService(database, registry)
        self._registry = registry
        self._adapters = adapters
        self._on_new_job = on_new_job
        self._output_timeout_s = output_timeout_s

    # --- accepting ------------------------------------------------------------------------------------

    async def submit(
        self, caller: Principal, spec: JobSpec, idempotency_key: str | None, *, source: str | None = None
    ) -> tuple[Job, bool]:
        """Validate, then store the job and its ``created`` event in one committed transaction, shared with the
        accepts that arrived meanwhile (:mod:`broker.db.group_commit`).

        Returns ``(job, created)``; ``created`` is False when ``idempotency_key`` replays an earlier request.
        """
        if idempotency_key is not None and not _KEY.match(idempotency_key):
            raise InvalidInput(
                [
                    Invalid(
                        ("header", "Idempotency-Key"),
                        f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
                        "invalid_idempotency_key",
                    )
                ]
            )
        facts, remembered = await self._authorized(caller, spec)  # an Antenna's quota is checked at commit
        stored = secrets.stored(spec, self._secret_box)  # redacted and sealed: what the database will hold
        try:
            try:
                result = await self._place_and_store(caller, spec, stored, idempotency_key, source=source, facts=facts)
            except (PlacementImpossible, AllocationNotInForce) as exc:
                if not remembered or getattr(exc, "code", None) == PlacementCode.ALLOCATION_EXHAUSTED.value:
                    raise  # decided on what the database said now (over budget: at commit)
                # Decided on roles and allocations remembered from seconds ago (a new grant, an ended one):
                # decide once more on what the database says now.
                facts, _ = await self._facts(caller, spec.project, fresh=True)
                result = await self._place_and_store(caller, spec, stored, idempotency_key, source=source, facts=facts)
        except AllocationNotInForce:  # it ended between the read and the commit
            raise PlacementImpossible(
                PlacementCode.NO_ALLOCATION.value,
                f"project {spec.project!r} has no allocation in force for this job: it ended as the job was stored",
                {"project": spec.project},
            ) from None
        row, created = result
        if created and self._on_new_job is not None:
            self._on_new_job()
        return job_to_wire(row), created

    def accept_batches(self) -> tuple[int, int] | None:
        """(group commits written, jobs they carried) since start; None without group commit."""
        return None if self._accepts is None else (self._accepts.batches, self._accepts.items)

    async def _authorized(
        self, caller: Principal, spec: JobSpec, *, fresh: bool = False
    ) -> tuple[SubmissionFacts | None, bool]:
        """:meth:`_facts` for ``spec.project``, once the caller may send this job there (403 otherwise): a
        member of the project, naming no Factory its Antenna is not linked to. One check for a submit and a
        dry run, made before any placement."""
        facts, remembered = await self._facts(caller, spec.project, fresh=fresh)
        if facts is not None and not Tenancy(caller, facts.roles).may_submit_to(spec.project):
            raise Forbidden(_NOT_A_MEMBER.format(project=spec.project))
        _linked_only(caller, spec)
        return facts, remembered

    async def _facts(
        self, caller: Principal, project: str, *, fresh: bool = False
    ) -> tuple[SubmissionFacts | None, bool]:
        """The caller's roles and the project's allocations in force (None for a dev-mode principal), and
        whether they were remembered rather than read now. Only a membership is remembered, never its
        absence (someone just added may submit at once); the write checks both again at commit."""
        if caller.any_project:
            return None, False
        remembered = None if fresh else self._remembered_facts.get((caller.id, project))
        if remembered is not None:
            return remembered, True
        facts = await self._submissions.facts(caller.id, project)
        if project in facts.roles:
            self._remembered_facts.put((caller.id, project), facts)
        return facts, False

    async def _place_and_store(
        self,
        caller: Principal,
        spec: JobSpec,
        stored: secrets.Stored,
        idempotency_key: str | None,
        *,
        source: str | None,
        facts: SubmissionFacts | None,
    ) -> tuple[JobRow, bool]:
        """Place the job on its project's allocations and store it: its refusals as the API's errors, except
        an allocation found ended at commit, raised for :meth:`submit` to decide again."""
        # A dev-mode principal (no facts) has no user, no project, no allocation: nothing to reserve.
        budget = None if facts is None else budget_of(spec.project, facts.allocations)
        placement = self._check_feasible(spec, allowed=_may_use(caller, budget))
        reservation = None if budget is None else budget.reservation(spec, placement)
        await self._within_working_roots(caller, spec, placement.factory)
        new = NewJob.from_spec(
            caller.id, spec, source, reservation, antenna=caller.antenna, stored=stored.spec, sealed=stored.sealed
        )
        # The fingerprint of the whole request, secrets included (keyed when it has some, under each key).
        key = None
        if idempotency_key is not None:
            key = KeyUse(caller.id, idempotency_key, stored.fingerprint(), stored.older_fingerprints())
        creation = Creation(new, caller.id, key, owner_must_be_member=facts is not None)
        try:
            if self._accepts is None:
                return await self._jobs.create_one(creation)
            result = await self._accepts.submit(creation)  # a refusal comes raised
            if isinstance(result, Exception):
                raise result
            return result
        except IdempotencyConflict as exc:
            raise IdempotencyKeyReused(exc.key, exc.job_id) from None
        except OverBudget as exc:
            raise over_budget(exc, spec, placement) from None
        except NotAMember:
            self._remembered_facts.forget((caller.id, spec.project))
            raise Forbidden(_NOT_A_MEMBER.format(project=spec.project)) from None
        except AntennaQuotaFull as exc:
            raise TooManyRequests(
                f"Antenna {exc.antenna_id} has {exc.active} active jobs, its quota is {exc.quota}; "
                "retry when some have ended", QUOTA_RETRY_AFTER_S, kind="antenna_quota",
            ) from None  # fmt: skip

    async def _within_working_roots(self, caller: Principal, spec: JobSpec, factory: Factory) -> None:
        """A working directory that only a ``{user}`` root allows is decided for the site user the job runs as
        (placement matched it for some user); one a fixed root allows needs no look-up."""
        directory = spec.working_directory
        if directory is None or not working_roots.needs_user(factory.allowed_roots, directory):
            return
        run_as = await self._site_accounts.run_as(factory, caller.id, spec.project)
        if not factory.allows_directory(directory, run_as.user):
            message = (
                f"working_directory {directory} is outside the directories Factory {factory.id} lets jobs of "
                f"site user {run_as.user} work in: {working_roots.listing(factory.allowed_roots)}"
            )
            raise _impossible(
                PlacementError(
                    PlacementCode.WORKING_DIRECTORY_NOT_ALLOWED,
                    message,
                    working_directory=directory,
                    allowed_roots={factory.id: list(factory.allowed_roots)},
                )
            )

    def _check_feasible(self, spec: JobSpec, allowed: Collection[str] | None = None) -> Placement:
        """Placement as if every Factory were up: refuses only what can never run anywhere (or on the
        ``allowed`` Factories: those where the project has an allocation)."""
        try:
            return place(spec, self._registry, _all_available(self._registry), allowed=allowed)
        except PlacementError as exc:
            raise _impossible(exc) from None

    # --- reading --------------------------------------------------------------------------------------

    async def _owned(self, caller: Principal, job_id: str) -> JobRow:
        """The job, if the caller may see it: another project's job is as absent as a missing one."""
        row = await self._jobs.get(job_id)
        if row is None or not (await self._projects.tenancy(caller)).sees(row.owner, row.project):
            raise NotFound("job", job_id)
        return row

    async def get(self, caller: Principal, job_id: str) -> Job:
        return job_to_wire(await self._owned(caller, job_id))

    async def list(self, caller: Principal, query: JobQuery) -> JobList:
        """The jobs the caller sees (its own; all of a project it leads), newest first; pages follow
        ``next_cursor``."""
        where = JobFilter(
            visible_to=(await self._projects.tenancy(caller)).visibility(),
            states=frozenset(query.state),
            factory=query.factory,
            project=query.project,
            labels=_labels(query.label),
        )
        try:
            page = await self._jobs.list(where, limit=query.limit, cursor=query.cursor)
        except InvalidCursor:
            raise InvalidInput(
                [Invalid(("query", "cursor"), "not a cursor this broker issued", "invalid_cursor")]
            ) from None
        return JobList(items=[job_to_wire(row) for row in page.items], next_cursor=page.next_cursor)

    async def events(self, caller: Principal, job_id: str, query: EventQuery) -> EventList:
        """The job's events oldest first, from ``after`` (an event id) or a previous page's cursor."""
        await self._owned(caller, job_id)
        after = query.after if query.after is not None else 0
        if query.cursor is not None:
            after = _decode_event_cursor(query.cursor)
        rows = list(await self._jobs.events(job_id, after_id=after, limit=query.limit + 1))
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return EventList(
            items=[event_to_wire(row) for row in rows],
            next_cursor=_encode_event_cursor(rows[-1].id) if more else None,
        )

    # --- cancelling -----------------------------------------------------------------------------------

    async def request_cancel(self, caller: Principal, job_id: str, *, source: str | None = None) -> Job:
        """Record the intent to cancel; the dispatcher or reconciler carries it out. Asking twice is harmless."""
        await self._owned(caller, job_id)
        await self._jobs.request_cancel(job_id, actor=caller.id, source=source)
        row = await self._owned(caller, job_id)
        if row.cancel_requested_at is None and row.state.is_terminal:
            raise CancelNotPossible(f"job {job_id} already ended ({row.state}); there is nothing to cancel")
        return job_to_wire(row)

    # --- output ---------------------------------------------------------------------------------------

    async def output(self, caller: Principal, job_id: str, stream: OutputStream, max_bytes: int) -> JobOutput:
        """The tail of the job's stdout or stderr, read through its Factory's adapter (bounded wait)."""
        row = await self._owned(caller, job_id)
        factory, slurm_job_id = _at_slurm(row)
        max_bytes = max(1, min(max_bytes, MAX_OUTPUT_BYTES))
        async with self._reading_output(row, factory, slurm_job_id, stream):
            text = await self._adapters.get(factory).read_output(slurm_job_id, stream, max_bytes + 1)
        data = text.encode("utf-8")
        truncated = len(data) > max_bytes
        content = data[-max_bytes:].decode("utf-8", errors="replace") if truncated else text
        return JobOutput(job_id=job_id, stream=stream, content=content, truncated=truncated)

    async def output_chunk(
        self, caller: Principal, job_id: str, stream: OutputStream, offset: int, max_bytes: int
    ) -> JobOutputChunk:
        """Bytes of the job's stdout or stderr from ``offset`` (at most ``max_bytes``, capped at
        :data:`MAX_OUTPUT_BYTES`), read through its Factory's adapter with the same bounded wait and answers."""
        if offset < 0 or max_bytes < 1:
            raise InvalidInput(
                [Invalid(("query", "offset" if offset < 0 else "max_bytes"), "must be >= 0 (offset), >= 1 (max_bytes)")]
            )
        row = await self._owned(caller, job_id)
        factory, slurm_job_id = _at_slurm(row)
        max_bytes = min(max_bytes, MAX_OUTPUT_BYTES)
        async with self._reading_output(row, factory, slurm_job_id, stream):
            chunk = await self._adapters.get(factory).read_output_chunk(slurm_job_id, stream, offset, max_bytes)
        return JobOutputChunk(
            job_id=job_id, stream=stream, offset=chunk.offset, size=chunk.size, eof=chunk.eof,
            data_base64=base64.b64encode(chunk.data).decode("ascii"),
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def _reading_output(
        self, row: JobRow, factory: str, slurm_job_id: int, stream: OutputStream
    ) -> AsyncIterator[None]:
        """The output read inside, within the output deadline, its failures as the API's answers: 409 where
        asking again will not help, 503 (with Retry-After) where the Factory did not answer."""
        job_id = row.id
        try:
            async with asyncio.timeout(self._output_timeout_s):
                yield
        except slurm_errors.OutputUnavailable as exc:
            if row.state is JobState.SUBMITTED:
                raise OutputUnavailable(
                    "not_started", f"job {job_id} is pending in Slurm on Factory {factory}; no {stream} yet"
                ) from None
            raise OutputUnavailable(
                "not_readable", f"Factory {factory} cannot serve the {stream} of job {job_id}: {exc.message}"
            ) from None
        except slurm_errors.InvalidRequest as exc:  # the Factory refused the request itself
            raise InvalidInput([Invalid(("query",), exc.message)]) from None
        except slurm_errors.JobNotFound as exc:  # the Factory answered: Slurm has purged the job, for good
            raise OutputUnavailable(
                "gone",
                f"Factory {factory} no longer knows Slurm job {slurm_job_id} ({exc.message}), so its {stream} "
                "cannot be located; asking again will not change that",
            ) from None
        except (slurm_errors.SiteError, TimeoutError) as exc:
            waited = f"no answer within {self._output_timeout_s:g} s"
            detail = exc.message if isinstance(exc, slurm_errors.SlurmError) else waited
            raise FactoryUnreachable(
                factory, f"Factory {factory} could not be reached to read the {stream}: {detail}"
            ) from None

    # --- dry runs -------------------------------------------------------------------------------------

    async def _statuses(self) -> Mapping[str, FactoryStatus]:
        statuses: dict[str, FactoryStatus] = {}
        for state in await self._factory_states.all():
            if state.drained:
                status = FactoryStatus(healthy=bool(state.healthy), drained=True, detail=state.drained_reason)
                statuses[state.factory_id] = status
            elif state.healthy is None:
                statuses[state.factory_id] = NOT_CHECKED
            else:
                statuses[state.factory_id] = FactoryStatus(healthy=state.healthy, detail=state.health_detail)
        return statuses

    async def dry_run(self, caller: Principal, spec: JobSpec) -> DryRun:
        """Where the job would go now, why, and exactly what its Factory's adapter would send. Stores nothing.

        Placement sees the Factories' current health and drains, as the dispatcher would. When the job fits
        but every Factory it fits is unavailable, the answer still shows where it would go once one is back
        (and says so), since such a job would be accepted and wait.
        """
        # The submit's own authorization and Factories (its project's allocations, its Antenna's links), on
        # what the database says now; the rendering uses the caller's site account.
        facts, _ = await self._authorized(caller, spec, fresh=True)
        secrets.refuse_without_box(spec, self._secret_box)  # as its submit would be
        allowed = _may_use(caller, None if facts is None else budget_of(spec.project, facts.allocations))
        note = ""
        try:
            agents = await agent_features(self._database, self._registry, utc_now())
            placement = place(spec, self._registry, await self._statuses(), allowed=allowed, agents=agents)
        except PlacementError as exc:
            if not exc.transient:
                raise _impossible(exc) from None
            placement = self._check_feasible(spec, allowed=allowed)
            note = f"; not available now ({exc.message}): the job would be accepted and wait"
        factory = placement.factory
        try:
            # The dispatcher's own translation, so this is exactly what it would send (the id is illustrative),
            # but for the secrets' values: their names with the redaction marker.
            run_as = await self._site_accounts.run_as(factory, caller.id, spec.project)
            shown = secrets.redacted_values(spec.secret_environment)
            rendering = self._adapters.get(factory.id).render(
                translate.to_slurm_spec(
                    new_job_id(), spec, placement, factory, account=run_as.account, user=run_as.user, secrets=shown
                ),
                run_as.user,
            )
        except translate.TranslationError as exc:
            raise InvalidInput([Invalid(("body",), str(exc), "translation_failed")]) from None
        except slurm_errors.JobError as exc:
            raise InvalidInput(
                [Invalid(("body",), f"Factory {factory.id} would refuse this job: {exc.message}", "adapter_refused")]
            ) from None
        candidates = [
            PlacementCandidate(factory=skip.factory, eligible=False, reasons=[skip.why]) for skip in placement.skipped
        ]
        candidates.append(PlacementCandidate(factory=factory.id, eligible=True, reasons=[placement.reason]))
        return DryRun(
            factory=factory.id,
            partition=placement.partition.name,
            time_limit_min=placement.time_limit_min,
            reason=placement.reason + note,
            rendering=DryRunRendering(
                adapter=rendering.adapter, site_user=rendering.user, script=rendering.script, payload=rendering.payload
            ),
            candidates=candidates,
        )
