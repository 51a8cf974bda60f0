"""A wait for an event with a deadline hands on a cancel that comes as the event is set: the broker's bell
(``Signal.wait``, under every long poll and report wait) and the agent's ``sleep_unless``. Python 3.11's
``asyncio.wait_for`` returned the result instead, so a long poll cancelled as an order arrived went on polling
(a scripted agent outlived its test's cancel until its session expired, in CI on PostgreSQL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agent.backoff import sleep_unless
from broker.agents.bell import Signal


def bell_wait() -> tuple[Callable[[], None], Awaitable[object]]:
    signal = Signal()
    return signal.ring, signal.wait(60)


def agent_wait() -> tuple[Callable[[], None], Awaitable[object]]:
    stop = asyncio.Event()
    return stop.set, sleep_unless(stop, 60)


@pytest.mark.parametrize("make", [bell_wait, agent_wait], ids=["bell", "agent"])
async def test_a_cancel_that_comes_as_the_event_is_set_is_not_lost(
    make: Callable[[], tuple[Callable[[], None], Awaitable[object]]],
) -> None:
    ring, wait = make()

    async def waiter() -> object:
        return await wait

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # one turn of the loop: the task now waits for the event
    ring()
    task.cancel()  # before the task has run again: both happened "at once"
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("make", [bell_wait, agent_wait], ids=["bell", "agent"])
async def test_the_event_ends_the_wait_and_says_so(
    make: Callable[[], tuple[Callable[[], None], Awaitable[object]]],
) -> None:
    ring, wait = make()
    task = asyncio.ensure_future(wait)
    await asyncio.sleep(0)
    ring()
    assert await task is True


async def test_without_the_event_the_deadline_ends_the_wait() -> None:
    assert await Signal().wait(0.01) is False
    assert await sleep_unless(asyncio.Event(), 0.01) is False
