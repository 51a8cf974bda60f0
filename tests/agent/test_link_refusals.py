"""A refused agent backs off as one: after a 401, 403 or 429 every request of the link (heartbeats, polls,
reports) waits at one gate, one probe at a time, for a growing while or the broker's Retry-After; any answer
that is not a refusal opens it. The broker locks out an address after too many failed authentications, so a
revoked agent that kept its heartbeat cadence would lock out its successor behind the same address."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import httpx

from agent.backoff import Backoff
from agent.keys import SigningKey
from agent.link import BrokerLink, LinkDown
from slurm_adapters.agent_protocol import Heartbeat

HEARTBEAT_ANSWER = b'{"broker_time": "2026-12-07T00:00:00Z", "holder": false}'


class Broker:
    """Answers ``status`` to everything; records when each request arrived and how many were in flight."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        body = HEARTBEAT_ANSWER if self.status == 200 else b'{"title": "refused"}'
        return httpx.Response(self.status, content=body, headers=self.headers)


def link_to(broker: Broker, key: SigningKey) -> BrokerLink:
    link = BrokerLink("https://b.eu", factory="f", audience="a", key=key,
                      transport=httpx.MockTransport(broker.handle))  # fmt: skip
    link.refusals = Backoff(base_s=0.1, cap_s=0.1, rng=random.Random(1))
    return link


async def beat(link: BrokerLink, times: int) -> int:
    """``times`` heartbeats; how many were refused (401 or 429)."""
    refused = 0
    for _ in range(times):
        try:
            await link.heartbeat("s", Heartbeat(agent_time=datetime.now(UTC), paused=False))
        except LinkDown as exc:
            refused += exc.status in {401, 429}
    return refused


async def test_refused_requests_probe_one_at_a_time_after_a_back_off(key: SigningKey) -> None:
    broker = Broker(401)
    link = link_to(broker, key)
    assert await beat(link, 1) == 1
    started = time.monotonic()
    refused = await asyncio.gather(*(beat(link, 3) for _ in range(3)))
    assert refused == [3, 3, 3]
    assert broker.most_in_flight == 1  # after the first refusal, one probe at a time
    gaps = [later - earlier for earlier, later in zip(broker.arrivals, broker.arrivals[1:], strict=False)]
    assert min(gaps) >= 0.05 - 0.01, gaps  # each probe waited its back-off (0.05-0.1 s) after the last refusal
    assert time.monotonic() - started < 3, gaps  # and no longer: a probe's answer moves the gate at once
    await link.aclose()


async def test_retry_after_is_honoured_and_an_answer_opens_the_gate(key: SigningKey) -> None:
    broker = Broker(429, {"retry-after": "1"})
    link = link_to(broker, key)
    assert await beat(link, 1) == 1
    assert link.refused_until - time.monotonic() > 0.8  # the broker's Retry-After, not the 0.1 s back-off
    link.refused_until = time.monotonic()  # (the test does not wait the second out)
    broker.status = 200
    assert await beat(link, 2) == 0
    assert link.refused_until == 0.0
    assert link.refusals.failures == 0
    await link.aclose()
