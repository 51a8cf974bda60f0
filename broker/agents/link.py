"""One process's side of the agent link: the bell, the repositories and the timings, shared by the routes'
service and the Factories' adapters (so a report applied here wakes the adapter waiting here at once)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broker.agents.adapter import AgentAdapter, PushedState
from broker.agents.bell import Bell
from broker.agents.listings import ListingRepository
from broker.agents.metrics import AgentMetrics
from broker.agents.orders import OrderRepository
from broker.agents.sessions import SessionRepository
from broker.agents.site_states import SiteStateRepository
from broker.agents.timings import AgentTimings
from broker.db.engine import Database
from broker.db.types import utc_now
from broker.jobs.ids import JOB_ID_PREFIX
from broker.secret_box import SecretBox
from broker.settings import Settings
from slurm_adapters.factory import AgentConfig


class AgentLink:
    """Build one per process (:meth:`from_settings`); :meth:`aclose` at shutdown stops the bell's check."""

    def __init__(
        self,
        database: Database,
        timings: AgentTimings,
        *,
        clock: Callable[[], datetime] = utc_now,
        secret_box: SecretBox | None = None,
    ) -> None:
        self.database = database
        self.timings = timings
        self.clock = clock
        self.bell = Bell(database, timings.bell_interval_s)
        self.sessions = SessionRepository(database, timings, clock)
        self.metrics = AgentMetrics()
        # Seals submit orders' secrets and unseals them for the agent (None: jobs with secrets wait).
        self.orders = OrderRepository(database, self.bell, clock, self.metrics, secret_box=secret_box)
        self.listings = ListingRepository(database, self.bell, clock, self.metrics)
        self.sites = SiteStateRepository(database, self.bell, clock)

    @classmethod
    def from_settings(cls, database: Database, settings: Settings, *, secret_box: SecretBox | None = None) -> AgentLink:
        return cls(database, AgentTimings.from_settings(settings), secret_box=secret_box)

    def adapter(self, factory_id: str, config: AgentConfig, *, clock_skew_s: float = 0.0) -> AgentAdapter:
        """The adapter of an agent Factory (``clock_skew_s``: the Factory's, for the freshness of its pushes)."""
        pushed = PushedState(
            self.listings,
            self.sites,
            tag_prefix=JOB_ID_PREFIX,
            listing_interval_s=self.timings.listing_interval_s,
            site_interval_s=self.timings.site_interval_s,
            clock_skew_s=clock_skew_s,
            metrics=self.metrics,
        )
        return AgentAdapter(
            config.cluster,
            factory_id=factory_id,
            orders=self.orders,
            timeout_s=config.timeout_s,
            read_timeout_s=self.timings.read_timeout_s,
            report_grace_s=self.timings.report_grace_s,
            pushed=pushed,
            clock=self.clock,
        )

    async def aclose(self) -> None:
        await self.bell.aclose()


__all__ = ["AgentLink"]
