"""Waiting for what an agent pushes (its listing, its site's state) to be fresh enough to serve.

A pushed value is served only if it was taken after the caller asked (see :mod:`broker.agents.listings` and
:mod:`broker.agents.site_states`): the waiter listens on the bell for the Factory's pushes before it reads, so a
push applied between its read and its wait is never missed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agents.bell import Bell
from broker.db.engine import Database

T = TypeVar("T")
# What a look at the database found: (done, value). Done with a value: fresh; done with None: there will be
# nothing to wait for (no agent pushing); not done: look again after the next push.
Look = Callable[[AsyncSession], Awaitable[tuple[bool, T | None]]]


async def when_fresh(bell: Bell, database: Database, factory_id: str, look: Look[T], *, timeout_s: float) -> T | None:
    """What ``look`` finds once it is done, looking again after each push of ``factory_id``'s agent; None when
    it is not done within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    async with bell.listen(pushed_of=factory_id) as signal:
        while True:
            async with database.read() as session:
                done, value = await look(session)
            if done:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await signal.wait(remaining)


__all__ = ["Look", "when_fresh"]
