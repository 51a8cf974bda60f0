"""The broker's settings, read once from the environment (prefix ``CONVEYOR_``) by pydantic-settings.

Defaults give a working single-process broker on an embedded SQLite file; production sets
``CONVEYOR_DATABASE_URL`` to a PostgreSQL URL (``postgresql+asyncpg://...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.identity.oidc import OidcIssuers
from conveyor.spec import MAX_SCRIPT_BYTES
from slurm_adapters.agent_protocol import MAX_WAIT_S

DEFAULT_DATA_DIR = Path("/var/lib/conveyor")
# The largest job with room to spare: a 1 MiB script even where JSON escapes (newlines, quotes, tabs) grow it,
# and the rest of the spec (name, labels, working directory, environment) in what is left.
DEFAULT_MAX_BODY_BYTES = 2 * MAX_SCRIPT_BYTES
# Room for an OIDC access token carrying many groups or roles (the largest header a client sends) and more.
DEFAULT_MAX_HEADER_FIELD_BYTES = 16 * 1024
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
# A dispatcher's Slurm call has an 8 s deadline; a lease shorter than a few of those would expire mid-call.
MIN_LEASE_S = 30.0


class UnsafeSettings(ValueError):
    """Settings that would be dangerous in this mode (e.g. a development token in production)."""


def _default_database_url(data: dict[str, Any]) -> str:
    return f"sqlite+aiosqlite:///{Path(data['data_dir']) / 'conveyor.db'}"


class Settings(BaseSettings):
    """Everything the broker reads from its environment; one instance per process."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore", frozen=True)

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="where the embedded SQLite database lives")
    database_url: str = Field(
        default_factory=_default_database_url,
        description="SQLAlchemy async URL: sqlite+aiosqlite:///ABSOLUTE/PATH or postgresql+asyncpg://...",
    )
    sqlite_busy_timeout_ms: int = Field(5_000, ge=0, description="how long a SQLite writer waits for the lock")
    factories_file: Path = Field(Path("/etc/conveyor/factories.yaml"), description="the Factory registry")
    dev_mode: bool = Field(False, description="local development: enables the static dev token")
    dev_token: SecretStr | None = Field(None, description="a static bearer token, accepted only in dev mode")
    secrets_key_file: Path | None = Field(
        None,
        description="Fernet keys, one per line (the first encrypts, all decrypt), that keep jobs' secret_environment "
        "encrypted at rest; every replica reads the same file. Unset: in dev mode <data_dir>/secrets-key, made on "
        "first start; otherwise the broker keeps no secrets and refuses jobs that have some",
    )
    dispatcher_interval_s: float = Field(1.0, gt=0, description="pause between dispatcher cycles when idle")
    reconciler_interval_s: float = Field(5.0, gt=0, description="pause between reconciler cycles")
    lease_s: float = Field(120.0, ge=MIN_LEASE_S, description="how long a dispatcher owns a claimed job")
    instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="a persistent name for this process's loops (refused while a live process holds it); "
        "default: one made up per process",
    )
    heartbeat_interval_s: float = Field(
        5.0, gt=0, le=60, description="how often the loops' process says it is alive (and renews in-flight claims)"
    )
    heartbeat_ttl_s: float = Field(
        15.0,
        gt=0,
        le=600,
        description="a process silent this long is dead: its claims are taken over at once (at least two "
        "heartbeat intervals)",
    )
    claim_batch: int = Field(20, ge=1, le=1000, description="jobs a dispatcher claims per cycle")
    dispatch_batches: int = Field(
        2,
        ge=1,
        le=16,
        description="claimed batches a process's dispatcher carries at once (1: the next claim waits for the "
        "whole batch before)",
    )
    accept_batch: int = Field(
        256,
        ge=0,
        le=5000,
        description="most accepted jobs written in one transaction (group commit); 0: each in its own transaction",
    )
    health_interval_s: float = Field(15.0, gt=0, description="pause between health checks of every Factory")
    capacity_interval_s: float = Field(
        0.0,
        ge=0,
        description="least time between two capacity snapshots of a Factory (each follows a successful health "
        "check); 0: one with every health check",
    )
    retry_backoff_max_s: float = Field(
        60.0, gt=0, description="the longest a queued job waits between two tries when a Factory is unavailable"
    )
    antenna_audience: str = Field(
        "conveyor", min_length=1, description="the aud every Antenna assertion must carry: this broker's name"
    )
    oidc_issuers: OidcIssuers = Field(
        (),
        description="trusted OIDC issuers, a JSON list of {issuer, audience, jwks_uri (https), algorithms}; "
        "a caller's identity is (issuer, subject)",
    )
    oidc_ca_file: Path | None = Field(None, description="CA bundle for the issuers' JWKS (default: the system's)")
    auth_failures_per_minute: int = Field(
        30, ge=1, description="failed authentications allowed per client address and minute before 429"
    )
    auth_cache_s: float = Field(
        5.0,
        ge=0,
        description="how long a personal token that passed is remembered; a revocation or a disabled user made on "
        "another replica takes this long to apply here; 0: read the database on every request",
    )
    requests_per_minute: int = Field(
        0, ge=0, description="requests allowed per caller and minute (bursts up to as many) before 429; 0: no limit"
    )
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="the largest request body read, in bytes; a larger one is refused 413 before it is parsed",
    )
    max_header_field_bytes: int = Field(
        DEFAULT_MAX_HEADER_FIELD_BYTES,
        ge=256,
        description="the largest header field (name and value), in bytes; a larger one is refused 431",
    )
    max_header_bytes: int = Field(
        DEFAULT_MAX_HEADER_BYTES,
        ge=1024,
        le=1024 * 1024,
        description="the most all header fields may take together (as sent: name, ': ', value, CRLF), in bytes; "
        "more is refused 431. The server's own parse limit lies a little above it",
    )
    host: str = Field("127.0.0.1", description="the address `python -m app` listens on")
    port: int = Field(8000, ge=1, le=65535, description="the port `python -m app` listens on")
    run_loops: bool = Field(
        True, description="run the dispatcher, reconciler and health loops in this process; off: serve the API only"
    )
    agent_session_ttl_s: float = Field(
        30.0, gt=0, le=600, description="a Factory agent's session silent this long is over; the agent opens a new one"
    )
    agent_lease_s: float = Field(
        15.0,
        gt=0,
        le=600,
        description="how long a heartbeat keeps a session the holder of its Factory's agent lease (the only session "
        "that receives submit and cancel orders); a lapsed lease is taken over by another session at a new epoch",
    )
    agent_heartbeat_s: float = Field(
        5.0, gt=0, le=60, description="how often a Factory agent is told to send its heartbeat"
    )
    agent_poll_wait_s: float = Field(
        20.0, gt=0, le=MAX_WAIT_S, description="how long a Factory agent's long poll for orders is told to wait"
    )
    agent_bell_interval_s: float = Field(
        0.15,
        gt=0,
        le=5,
        description="how often one check per process looks for orders and reports written by other broker "
        "replicas (local writes wake waiters at once)",
    )
    agent_read_timeout_s: float = Field(
        30.0, gt=0, le=600, description="how long a read through a Factory agent (job list, health...) may take"
    )
    agent_silent_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="a Factory reached through its agent with no session holding its lease for this long (since the "
        "agent's last heartbeat) is unhealthy and its jobs wait; a Factory whose agent never connected is unhealthy "
        "at once",
    )
    agent_report_grace_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="how long after an order's not_after the broker still waits for its report before the "
        "outcome is in doubt",
    )
    agent_listing_full_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="a Factory agent pushes its listing of active jobs as often as the reconciler cycles (deltas "
        "against a numbered full snapshot); at least this often the listing is full, the only kind from which a "
        "job's absence is concluded",
    )
    agent_max_report_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="the largest body of an agent's reports (a listing of every active job of a Factory is one "
        "report); every other request keeps max_body_bytes",
    )

    @model_validator(mode="after")
    def _url_is_async(self) -> Settings:
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("database_url must use sqlite+aiosqlite:// or postgresql+asyncpg://")
        return self

    @model_validator(mode="after")
    def _one_field_fits_the_head(self) -> Settings:
        if self.max_header_field_bytes > self.max_header_bytes:
            raise ValueError("max_header_field_bytes must not exceed max_header_bytes")
        return self

    @model_validator(mode="after")
    def _agent_timings_fit(self) -> Settings:
        if self.agent_lease_s < 2 * self.agent_heartbeat_s:
            raise ValueError("agent_lease_s must be at least twice agent_heartbeat_s (one late beat loses no lease)")
        if self.agent_session_ttl_s < self.agent_lease_s:
            raise ValueError("agent_session_ttl_s must be at least agent_lease_s (a lease outlives no session)")
        return self

    @model_validator(mode="after")
    def _heartbeat_outlives_its_interval(self) -> Settings:
        if self.heartbeat_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError("heartbeat_ttl_s must be at least twice heartbeat_interval_s (one late beat is not death)")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def refuse_unsafe(self) -> None:
        """Raise :class:`UnsafeSettings` for a configuration that must never reach production.

        Called at startup rather than at validation, so that tools (migrations, `--help`) still run and the
        error is reported by the component that would have used the dangerous setting.
        """
        if self.dev_token is not None and not self.dev_mode:
            raise UnsafeSettings("CONVEYOR_DEV_TOKEN is set but CONVEYOR_DEV_MODE is off: refusing a static token")
        if self.dev_token is not None and len(self.dev_token.get_secret_value()) < 16:
            raise UnsafeSettings("CONVEYOR_DEV_TOKEN must be at least 16 characters, even in dev mode")
