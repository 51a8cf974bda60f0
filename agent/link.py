"""The agent's HTTPS link to the broker: every request signed, bound to its method, path and exact body.

Errors come out as two kinds: :class:`SessionLost` (the broker no longer knows the session: open a new one) and
:class:`LinkDown` (anything else that did not work: back off and try again).

A refused assertion (401, 403: a revoked key, or a clock the broker does not accept) or a 429 closes a gate that
every request of the link passes, heartbeats, polls and reports alike: until it reopens (growing back-off, or
the broker's Retry-After), one request at a time probes. The broker counts failed authentications per address
and locks an address out past a limit, so an agent retrying refused requests at its heartbeat cadence would lock
out every agent and client behind the same address, its own successor with a new key included.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from agent import __version__
from agent.backoff import Backoff, sleep_unless
from agent.config import check_broker_url
from agent.keys import SigningKey
from slurm_adapters.agent_protocol import (
    MAX_WAIT_S,
    PREFIX,
    SCHEME,
    Heartbeat,
    HeartbeatAnswer,
    Hello,
    Listing,
    ListingAnswer,
    Orders,
    Poll,
    Reports,
    ReportsAnswer,
    SessionGranted,
    SiteAnswer,
    SiteState,
    sign,
)

Answer = TypeVar("Answer", bound=BaseModel)

SESSION_GONE = frozenset({404, 409, 410})
REFUSED = frozenset({401, 403, 429})  # the broker refuses this agent (for now): all requests wait
REQUEST_TIMEOUT_S = 15.0
USER_AGENT = f"conveyor-agent/{__version__}"


class LinkDown(Exception):
    """The request did not succeed (connection, timeout, 5xx, an unreadable answer, a refused assertion)."""

    def __init__(self, message: str, status: int | None = None, broker_date: datetime | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.broker_date = broker_date  # a refusal's HTTP Date: the broker's clock, to the second


class SessionLost(LinkDown):
    """The broker does not know the session (unknown, expired or taken over): a new hello is needed."""


class BrokerLink:
    """Signed requests to one broker; ``transport`` replaces the network (tests)."""

    def __init__(
        self,
        base_url: str,
        *,
        factory: str,
        audience: str,
        key: SigningKey,
        ca_file: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.factory = factory
        self.audience = audience
        self.key = key
        self.stamp: Callable[[], float] = time.time
        self.refusals = Backoff(base_s=0.5, cap_s=30.0)
        self.refused_until = 0.0  # time.monotonic(): no request before it
        self._gate_moved = asyncio.Event()
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.client = httpx.AsyncClient(
            base_url=check_broker_url(base_url),
            transport=transport,
            verify=verify,
            timeout=REQUEST_TIMEOUT_S,
            follow_redirects=False,  # an assertion is bound to one path: never replayed to another
            headers={"User-Agent": USER_AGENT},
        )

    def use_clock(self, stamp: Callable[[], float]) -> None:
        """Stamp assertions (iat, nbf, exp) with ``stamp()``: the agent passes its estimate of the broker's clock,
        so its own clock's error does not make the broker refuse them as not yet valid or expired."""
        self.stamp = stamp

    async def aclose(self) -> None:
        await self.client.aclose()

    async def hello(self, message: Hello) -> SessionGranted:
        return await self._post(f"{PREFIX}/sessions", message, SessionGranted)

    async def heartbeat(self, session_id: str, message: Heartbeat) -> HeartbeatAnswer:
        return await self._post(f"{PREFIX}/sessions/{session_id}/heartbeat", message, HeartbeatAnswer)

    async def poll(self, session_id: str, message: Poll) -> Orders:
        budget = min(message.wait_s, MAX_WAIT_S) + REQUEST_TIMEOUT_S
        return await self._post(f"{PREFIX}/sessions/{session_id}/orders", message, Orders, time_budget_s=budget)

    async def report(self, session_id: str, message: Reports) -> ReportsAnswer:
        return await self._post(f"{PREFIX}/sessions/{session_id}/reports", message, ReportsAnswer)

    async def listing(self, session_id: str, message: Listing) -> ListingAnswer:
        return await self._post(f"{PREFIX}/sessions/{session_id}/listing", message, ListingAnswer)

    async def site(self, session_id: str, message: SiteState) -> SiteAnswer:
        return await self._post(f"{PREFIX}/sessions/{session_id}/site", message, SiteAnswer)

    async def _wait_while_refused(self, budget_s: float) -> None:
        """While refused, wait for the gate; the request that passes it closes it until its answer (at most its
        time budget), so the others wait for that answer: one probe at a time."""
        while (wait_s := self.refused_until - time.monotonic()) > 0:
            await sleep_unless(self._gate_moved, wait_s)
        if self.refusals.failures:
            self._move_gate(time.monotonic() + budget_s)

    def _move_gate(self, until: float) -> None:
        self.refused_until = until
        self._gate_moved.set()  # wakes the waiters, who read the new time
        self._gate_moved = asyncio.Event()

    def _probe_failed(self) -> None:
        """No answer while refused: the gate reopens after the next back-off, not after the probe's budget."""
        if self.refusals.failures:
            self._move_gate(time.monotonic() + self.refusals.next_delay())

    def _note(self, response: httpx.Response) -> None:
        """A refusal closes the gate for a growing while (or the broker's Retry-After); anything else opens it."""
        if response.status_code not in REFUSED:
            if response.status_code < 500:
                self.refusals.reset()
                self._move_gate(0.0)
            else:
                self._probe_failed()
            return
        delay = self.refusals.next_delay()
        with contextlib.suppress(ValueError):
            delay = max(delay, float(response.headers.get("retry-after", 0)))
        self._move_gate(time.monotonic() + delay)

    async def _post(
        self, path: str, message: BaseModel, answer: type[Answer], *, time_budget_s: float = REQUEST_TIMEOUT_S
    ) -> Answer:
        await self._wait_while_refused(time_budget_s)
        body = message.model_dump_json().encode()
        request = self.client.build_request(
            "POST",
            path,
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=time_budget_s,
        )
        target = request.url.raw_path.decode("ascii")  # the path with its query, as the broker receives it
        assertion = sign(
            self.key.key,
            kid=self.key.kid,
            alg=self.key.alg,
            factory=self.factory,
            audience=self.audience,
            method="POST",
            target=target,
            body=body,
            now=self.stamp(),
        )
        request.headers["Authorization"] = f"{SCHEME} {assertion}"
        try:
            response = await self.client.send(request)
        except httpx.HTTPError as exc:
            self._probe_failed()
            raise LinkDown(f"POST {path}: {type(exc).__name__}: {exc}") from exc
        self._note(response)
        return self._answer(path, response, answer)

    @staticmethod
    def _answer(path: str, response: httpx.Response, answer: type[Answer]) -> Answer:
        status = response.status_code
        if status in SESSION_GONE and "/sessions/" in path:
            raise SessionLost(f"POST {path}: the broker no longer knows the session (HTTP {status})", status)
        if not 200 <= status < 300:
            raise LinkDown(f"POST {path}: HTTP {status}: {_excerpt(response)}", status, _date(response))
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise LinkDown(f"POST {path}: an answer that is not a {answer.__name__}: {exc}", status) from exc


def _date(response: httpx.Response) -> datetime | None:
    try:
        moment = email.utils.parsedate_to_datetime(response.headers["date"])
    except (KeyError, TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else None


def _excerpt(response: httpx.Response) -> Any:
    text = response.text
    return text[:300] + ("..." if len(text) > 300 else "")
