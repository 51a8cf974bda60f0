"""The agent's configuration file (YAML): where the broker is, who the agent is, and its local Slurm.

Relative paths are read relative to the file's own directory. Unknown fields are refused, so a misspelt
setting never silently falls back to a default. The ``adapter`` block is the same mapping as a Factory file's
``adapter:`` block (:mod:`slurm_adapters.factory`), checked by the same code.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slurm_adapters.agent_protocol import MAX_REPORTS
from slurm_adapters.factory import AdapterConfig

Name = Annotated[str, Field(min_length=1, max_length=255)]


class AgentConfigError(ValueError):
    """The configuration cannot be used; the message says what to fix."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost`` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_broker_url(url: str) -> str:
    """HTTPS, or plain HTTP only to loopback (the lab); no credentials, query or fragment in the URL."""
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError(f"must be an https:// URL, not {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"plain http is allowed only to loopback (the lab), not to {parts.hostname!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    return url.rstrip("/")


class AgentConfig(BaseModel):
    """One agent: one Factory, one broker, one local Slurm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str = Field(description="the broker's base URL (https; http only to loopback)")
    factory: Name = Field(description="the Factory this agent serves, as the broker's Factory file names it")
    audience: Name = Field(description="the broker's audience for agent assertions")
    key_file: Path = Field(description="the private JWK (or a JWK Set of one) the agent signs with")
    adapter: Annotated[AdapterConfig, Field(discriminator="kind")]
    policy_file: Path = Field(description="the site's policy: who may run, as which accounts, how large")
    pause_file: Path = Field(description="while this file exists, no new submits (reports and reads go on)")
    concurrency: int = Field(
        40, ge=1, le=256, description="orders carried out at once (40: as many Slurm calls as a direct adapter makes)"
    )
    report_batch: int = Field(100, ge=1, le=MAX_REPORTS, description="reports sent per request at most")
    linger_s: float = Field(
        0.1, ge=0, le=5, description="how long a report, or the next poll, waits for orders still being carried out"
    )
    shutdown_grace_s: float = Field(30.0, gt=0, le=600, description="how long SIGTERM waits for in-flight orders")
    ca_file: Path | None = Field(None, description="a CA bundle for the broker's certificate (default: system)")

    @field_validator("broker_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_broker_url(value)


def _relative_to(base: Path, document: dict[str, Any]) -> dict[str, Any]:
    resolved = dict(document)
    for name in ("key_file", "policy_file", "pause_file", "ca_file"):
        value = resolved.get(name)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            resolved[name] = str(base / value)
    return resolved


def read_yaml(path: Path, what: str) -> Any:
    """A YAML document, or AgentConfigError naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AgentConfigError(f"{what} {path}: {exc}") from None


def explain(error: ValidationError, source: str) -> str:
    """A validation error as one line per problem: where, then what."""
    lines = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {item['msg']}")
    return "\n".join(lines)


def load_config(path: Path) -> AgentConfig:
    document = read_yaml(path, "config file")
    if not isinstance(document, dict):
        raise AgentConfigError(f"config file {path}: expected a mapping of settings")
    try:
        return AgentConfig.model_validate(_relative_to(path.parent, document))
    except ValidationError as exc:
        raise AgentConfigError(explain(exc, f"config file {path}")) from None
