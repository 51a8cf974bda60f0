"""Test doubles for the agent's unit tests, named for what they are.

* :class:`RecordingAdapter`: a SlurmAdapter that never talks to Slurm; it records every call, so a test can
  prove that a refused order reached no adapter at all.
* :class:`FakeBroker`: the broker's side of :mod:`slurm_adapters.agent_protocol`, served over
  ``httpx.MockTransport``. It verifies every request's assertion as the broker must (signature with the
  registered public key, typ, iss/sub, aud, method, path, body hash, once-only jti), keeps orders per session
  and redelivers them until acknowledged by cursor, and can be told to fail requests or forget sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import jwt

from agent.keys import SigningKey, generate_jwk, load_signing_key, write_private_jwk
from slurm_adapters import codec
from slurm_adapters.agent_protocol import (
    PREFIX,
    TYP,
    CancelOrder,
    HeartbeatAnswer,
    Hello,
    Listing,
    ListingAnswer,
    Order,
    Orders,
    Poll,
    PushPlan,
    ReadOrder,
    Reports,
    ReportsAnswer,
    Requester,
    SessionGranted,
    SiteAnswer,
    SiteState,
    SubmitOrder,
    body_hash,
)
from slurm_adapters.errors import SlurmError
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import (
    MAX_OUTPUT_CHUNK_BYTES,
    ClusterInfo,
    Health,
    JobRecord,
    OutputChunk,
    OutputStream,
    Rendering,
    SlurmJobSpec,
    SlurmJobState,
    SubmitContext,
)

FACTORY = "lumi-ai"
AUDIENCE = "https://broker.test"
BROKER_URL = "https://broker.test"


def make_key(tmp_dir: Any, kid: str = "agent-1") -> SigningKey:
    path = tmp_dir / f"{kid}.jwk"
    write_private_jwk(path, generate_jwk(kid))
    return load_signing_key(path)


# --- the Slurm side ----------------------------------------------------------------------------------------


@dataclass
class Call:
    op: str
    args: dict[str, Any]


class RecordingAdapter(SlurmAdapter):
    """A test double: no Slurm behind it. Submits get ids from 1000 up; ``fail_submits`` are raised first."""

    kind = "rest"

    def __init__(self, cluster: str = "fake", release: str = "24.11.0") -> None:
        super().__init__(cluster)
        self.release = release
        self.calls: list[Call] = []
        self.fail_submits: list[SlurmError] = []
        self.ids = itertools.count(1000)
        self.gate: asyncio.Event | None = None  # set: submits wait for it

    def calls_of(self, op: str) -> list[Call]:
        return [call for call in self.calls if call.op == op]

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        raise NotImplementedError

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        self.calls.append(Call("submit", {"spec": spec, "user": user, "context": context}))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_submits:
            raise self.fail_submits.pop(0)
        return next(self.ids)

    async def get_job(self, job_id: int) -> JobRecord:
        self.calls.append(Call("get_job", {"job_id": job_id}))
        return _record(job_id)

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        self.calls.append(Call("list_jobs", {"tags": tags, "tag_prefix": tag_prefix}))
        return [_record(7, tag=next(iter(tags or ["cvy-x"])))]

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        self.calls.append(Call("cancel", {"job_id": job_id, "user": user, "tag": tag}))

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        self.calls.append(Call("read_output", {"job_id": job_id, "stream": stream, "max_bytes": max_bytes}))
        return "hello\n"

    async def read_output_chunk(
        self, job_id: int, stream: OutputStream = "stdout", offset: int = 0, max_bytes: int = MAX_OUTPUT_CHUNK_BYTES
    ) -> OutputChunk:
        self.calls.append(
            Call("read_output_chunk", {"job_id": job_id, "stream": stream, "offset": offset, "max_bytes": max_bytes})
        )
        data = b"\x00\xffhello\n"[offset : offset + max_bytes]
        return OutputChunk(data=data, offset=offset, size=8, eof=offset + len(data) >= 8)

    async def cluster_info(self) -> ClusterInfo:
        self.calls.append(Call("cluster_info", {}))
        return ClusterInfo(cluster=self.cluster, release=self.release, partitions=(), nodes=())

    async def health(self) -> Health:
        self.calls.append(Call("health", {}))
        return Health(ok=True, detail="recording double", release=self.release)


def _record(job_id: int, tag: str | None = "cvy-x") -> JobRecord:
    return JobRecord(
        job_id=job_id, tag=tag, state=SlurmJobState.PENDING, raw_state="PENDING", reason=None, exit_code=None,
        signal=None, submit_time=None, start_time=None, end_time=None, nodes=None, user="alice",
    )  # fmt: skip


# --- orders ------------------------------------------------------------------------------------------------


def spec(**changes: Any) -> SlurmJobSpec:
    values: dict[str, Any] = {
        "name": "train",
        "script": "#!/bin/bash\nhostname\n",
        "working_directory": "/scratch/alice",
        "tag": "cvy-job-1",
        "partition": "cpu",
        "time_limit_min": 10,
    }
    values.update(changes)
    return SlurmJobSpec(**values)


def submit_order(
    order_id: int,
    *,
    attempt: str | None = None,
    site_user: str = "alice",
    job: SlurmJobSpec | None = None,
    spec_json: dict[str, Any] | None = None,
    not_after: datetime | None = None,
    epoch: int = 1,
    requester: Requester | None = None,
) -> SubmitOrder:
    return SubmitOrder(
        id=order_id,
        epoch=epoch,
        not_after=not_after or datetime.now(UTC) + timedelta(seconds=30),
        attempt=attempt or f"job-{order_id}/1",
        spec=spec_json if spec_json is not None else codec.spec_to_json(job or spec(tag=f"cvy-job-{order_id}")),
        site_user=site_user,
        requester=requester or Requester(user="u-alice", project="EHPC-AIF-2026PG01-1147"),
    )


def cancel_order(order_id: int, *, site_user: str = "alice", job_id: int = 1000) -> CancelOrder:
    return CancelOrder(
        id=order_id, epoch=1, not_after=datetime.now(UTC) + timedelta(seconds=30), slurm_job_id=job_id,
        tag="cvy-job-1", site_user=site_user,
    )  # fmt: skip


def read_order(order_id: int, op: str, **args: Any) -> ReadOrder:
    return ReadOrder.model_validate(
        {"id": order_id, "not_after": datetime.now(UTC) + timedelta(seconds=30), "op": op, "args": args}
    )


# --- the broker side ---------------------------------------------------------------------------------------


@dataclass
class FakeSession:
    id: str
    hello: Hello
    orders: list[Order] = field(default_factory=list)
    ack: int = 0
    gone: bool = False


class FakeBroker:
    """The broker's side of the agent protocol, in memory; ``offset_s`` shifts its clock from the test's."""

    def __init__(self, key: SigningKey, *, factory: str = FACTORY, audience: str = AUDIENCE) -> None:
        self.factory = factory
        self.audience = audience
        self.public = jwt.PyJWK(key.public_jwks["keys"][0], algorithm=key.alg)
        self.alg = key.alg
        self.heartbeat_s = 0.2
        self.lease_s = 5.0
        self.poll_wait_s = 0.2
        self.clock_skew_s = 2.0
        self.offset_s = 0.0
        self.leeway_s = 5.0  # how far an assertion's iat may be from the broker's clock
        self.holder = True
        self.epoch = 1
        self.sessions: dict[str, FakeSession] = {}
        self.reports: list[dict[str, Any]] = []  # every report received, repeats included
        self.report_batches: list[int] = []
        self.polls: list[Poll] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.jtis: set[str] = set()
        self.rejected: list[str] = []  # assertion failures (a correct agent causes none)
        self.fail: dict[str, int] = {}  # route kind -> how many of its next requests fail with a connect error
        self.changed = asyncio.Condition()
        self.ids = itertools.count(1)
        self.push_plan: PushPlan | None = None  # given at hello: the agent pushes listings and site states
        self.listings: list[Listing] = []  # every listing received
        self.site_states: list[SiteState] = []  # every site state received
        self.view: tuple[int, int] | None = None  # (snapshot, seq) the broker's view stands on

    # -- what tests do ----------------------------------------------------------------------------------

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @property
    def current(self) -> FakeSession:
        live = [session for session in self.sessions.values() if not session.gone]
        assert live, "no live session"
        return live[-1]

    async def give(self, *orders: Order) -> None:
        """Hand ``orders`` to the newest live session."""
        async with self.changed:
            self.current.orders.extend(orders)
            self.changed.notify_all()

    async def forget_sessions(self) -> None:
        async with self.changed:
            for session in self.sessions.values():
                session.gone = True
            self.changed.notify_all()

    def reports_for(self, order_id: int) -> list[dict[str, Any]]:
        return [report for report in self.reports if report["order"] == order_id]

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)

    # -- the routes -------------------------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._route(request)
        finally:
            async with self.changed:
                self.changed.notify_all()

    async def _route(self, request: httpx.Request) -> httpx.Response:  # noqa: PLR0911 - one return per route
        path = request.url.path
        kind = path.rsplit("/", 1)[-1]
        if self.fail.get(kind, 0) > 0:
            self.fail[kind] -= 1
            raise httpx.ConnectError("the test cut the link", request=request)
        body = await request.aread()
        problem = self._check_assertion(request, body)
        if problem is not None:
            self.rejected.append(problem)
            return httpx.Response(401, json={"title": problem}, headers={"date": format_datetime(self.now(), True)})
        data = json.loads(body)
        if path == f"{PREFIX}/sessions":
            return self._hello(Hello.model_validate(data))
        session_id = path.split("/")[4]
        session = self.sessions.get(session_id)
        if session is None or session.gone:
            return httpx.Response(410, json={"title": "session unknown or expired"})
        if kind == "heartbeat":
            self.heartbeats.append(data)
            answer = HeartbeatAnswer(
                broker_time=self.now(), holder=self.holder, epoch=self.epoch if self.holder else None
            )
            return _json(answer)
        if kind == "orders":
            return _json(await self._poll(session, Poll.model_validate(data)))
        if kind == "reports":
            reports = Reports.model_validate(data)
            self.report_batches.append(len(reports.reports))
            self.reports.extend(report.model_dump(mode="json") for report in reports.reports)
            return _json(ReportsAnswer(applied=len(reports.reports), ignored=0))
        if kind == "listing":
            return _json(self._listing(Listing.model_validate(data)))
        if kind == "site":
            self.site_states.append(SiteState.model_validate(data))
            return _json(SiteAnswer(applied=True))
        return httpx.Response(404)

    def _listing(self, listing: Listing) -> ListingAnswer:
        """The broker's rule: a full snapshot always applies, a delta only onto the (snapshot, seq) before it."""
        self.listings.append(listing)
        if listing.full or self.view == (listing.snapshot, listing.seq - 1):
            self.view = (listing.snapshot, listing.seq)
            return ListingAnswer(applied=True, want_full=False)
        return ListingAnswer(applied=False, want_full=True)

    def _hello(self, hello: Hello) -> httpx.Response:
        session = FakeSession(id=f"s{next(self.ids)}", hello=hello)
        self.sessions[session.id] = session
        granted = SessionGranted(
            session_id=session.id, factory=self.factory, broker_time=self.now(), heartbeat_s=self.heartbeat_s,
            lease_s=self.lease_s, poll_wait_s=self.poll_wait_s, clock_skew_s=self.clock_skew_s,
            push=self.push_plan,
        )  # fmt: skip
        return _json(granted, status=201)

    async def _poll(self, session: FakeSession, poll: Poll) -> Orders:
        self.polls.append(poll)
        async with self.changed:
            session.ack = max(session.ack, poll.ack)

            def pending() -> list[Order]:
                return [order for order in session.orders if order.id > session.ack]

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait_for(lambda: bool(pending()) or session.gone), poll.wait_s)
            return Orders(broker_time=self.now(), orders=pending()[: poll.max_orders])

    def _check_assertion(self, request: httpx.Request, body: bytes) -> str | None:  # noqa: PLR0911
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Agent" or not token:
            return "no Agent assertion"
        if jwt.get_unverified_header(token).get("typ") != TYP:
            return "wrong typ"
        try:
            claims = jwt.decode(token, self.public.key, algorithms=[self.alg], audience=self.audience,
                                issuer=self.factory, options={"verify_exp": False, "verify_nbf": False,
                                "verify_iat": False})  # fmt: skip
        except jwt.PyJWTError as exc:
            return f"invalid assertion: {exc}"
        expected = {"sub": self.factory, "htm": request.method, "htu": request.url.raw_path.decode(),
                    "bh": body_hash(body)}  # fmt: skip
        for name, value in expected.items():
            if claims.get(name) != value:
                return f"claim {name} is {claims.get(name)!r}, not {value!r}"
        if claims["jti"] in self.jtis:
            return "replayed jti"
        now = self.now().timestamp()  # the time claims, on this broker's clock
        if claims["exp"] - claims["iat"] > 300 or abs(claims["iat"] - now) > self.leeway_s or claims["exp"] < now:
            return "lifetime or not stamped on the broker's clock"
        self.jtis.add(claims["jti"])
        return None

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Until ``condition()`` holds after some change the broker saw (fails after ``timeout_s``)."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(condition), timeout_s)


def _json(message: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, content=message.model_dump_json().encode(), headers={"content-type": "application/json"}
    )


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Until ``condition()`` holds, checked every 10 ms (fails after ``timeout_s``)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
