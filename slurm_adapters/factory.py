"""Adapter configuration as data, and the one function that turns it into an adapter.

Tests, benchmarks, the lab and the broker all build adapters through :func:`build_adapter`, so a cluster
reached in a test is configured exactly as the broker would configure it. The configs are frozen stdlib
dataclasses (no pydantic here: the pyslurm conformance run imports this module inside a chroot whose venv
has none); they check themselves on construction and raise :class:`AdapterConfigError` naming the field.
The broker validates them from its Factory file by declaring them as pydantic fields.

Paths are as seen from where the adapter runs. ``fs_root`` is the host path of the cluster's "/" (None:
output files are not readable from here). ``user_lookup`` says where the site policy finds uids: ``passwd``
reads ``<fs_root>/etc/passwd`` (a chroot, a mounted login-node image), ``nss`` asks this host (a login node),
``none`` checks names only and leaves unknown users to Slurm (a remote slurmrestd), so it needs
``allowed_users``, a pattern every site user name must match in full. ``uid_ranges`` replaces the people's
uids a site has (default: UID_MIN of the site's login.defs to 59999, and 65536 to 4294967293).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.safety import (
    MAX_UID,
    PasswdEntry,
    SitePolicy,
    UidRange,
    is_user_name,
    local_lookup,
    passwd_lookup,
)
from slurm_adapters.tokens import DEFAULT_LIFETIME_S, MAX_LIFETIME_S

AdapterKind = Literal["rest", "cli", "pyslurm", "agent"]
UserLookup = Literal["passwd", "nss", "none"]

# Slurm's own pattern for ClusterName is loose; this one keeps names safe in argv, URLs and logs.
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The slurmrestd API versions the REST adapter speaks (see slurm_adapters.rest.CODECS; kept here so that
# validating a config needs no httpx).
REST_API_VERSIONS = ("v0.0.42", "v0.0.38")
DEFAULT_TIMEOUT_S = 8.0
DEFAULT_AGENT_TIMEOUT_S = 30.0
# Any valid name: behind an agent, the site's own policy decides who may submit (see AgentConfig).


class AdapterConfigError(ValueError):
    """One invalid field of an adapter config; ``field`` lets a config loader say where it is."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise AdapterConfigError(field_name, message)


def _check_absolute(value: str | None, field_name: str) -> None:
    if value is not None:
        _require(PurePosixPath(value).is_absolute(), field_name, f"must be an absolute path, not {value!r}")


def _check_timeout(value: float, field_name: str) -> None:
    _require(math.isfinite(value) and value > 0, field_name, f"must be a positive number of seconds, not {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class _SiteConfig:
    """What every kind needs: the cluster, who may (never) be submitted as, and the call deadline."""

    cluster: str
    slurm_user: str = "slurm"
    forbidden_users: tuple[str, ...] = ()
    uid_ranges: tuple[UidRange, ...] | None = None
    allowed_users: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def _check_site(self, kind: str) -> None:
        actual = getattr(self, "kind", None)
        _require(actual == kind, "kind", f"is {actual!r} in a {kind!r} config")
        _require(bool(_CLUSTER_NAME.match(self.cluster)), "cluster", f"{self.cluster!r} is not a cluster name")
        _require(is_user_name(self.slurm_user), "slurm_user", f"{self.slurm_user!r} is not a user name")
        object.__setattr__(self, "forbidden_users", tuple(self.forbidden_users))
        for user in self.forbidden_users:
            _require(is_user_name(user), "forbidden_users", f"{user!r} is not a user name")
        self._check_uid_ranges()
        self._check_allowed_users()
        _check_timeout(self.timeout_s, "timeout_s")

    def _check_uid_ranges(self) -> None:
        if self.uid_ranges is None:
            return
        object.__setattr__(self, "uid_ranges", tuple(tuple(pair) for pair in self.uid_ranges))
        for pair in self.uid_ranges:
            _require(len(pair) == 2, "uid_ranges", f"each range is [first, last], not {list(pair)}")
            low, high = pair
            _require(1 <= low <= high <= MAX_UID, "uid_ranges", f"[{low}, {high}] is not a range of 1..{MAX_UID}")

    def _check_allowed_users(self) -> None:
        if self.allowed_users is None:
            return
        _require(0 < len(self.allowed_users) <= 1000, "allowed_users", "must be a pattern of 1 to 1000 characters")
        try:
            re.compile(self.allowed_users)
        except re.error as exc:
            raise AdapterConfigError("allowed_users", f"is not a regular expression: {exc}") from None

    def _check_lookup(self, user_lookup: UserLookup, fs_root: str | None) -> None:
        _check_absolute(fs_root, "fs_root")
        _require(
            user_lookup != "passwd" or fs_root is not None,
            "user_lookup",
            "'passwd' reads <fs_root>/etc/passwd, so it needs fs_root",
        )
        _require(
            user_lookup != "none" or self.allowed_users is not None,
            "allowed_users",
            "an adapter that cannot resolve uids (user_lookup none) needs an allowed_users pattern",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RestConfig(_SiteConfig):
    """slurmrestd with locally minted JWTs: the mapped user's for submit and cancel, the operator's for reads."""

    kind: Literal["rest"] = "rest"
    url: str
    jwt_key_file: str
    operator_user: str
    fs_root: str | None = None
    user_lookup: UserLookup = "none"
    list_timeout_s: float = 60.0
    connect_timeout_s: float = 3.0
    token_lifetime_s: int = DEFAULT_LIFETIME_S
    api_version: str | None = None

    def __post_init__(self) -> None:
        self._check_site("rest")
        parts = urlsplit(self.url)
        _require(
            parts.scheme in {"http", "https"} and bool(parts.netloc),
            "url",
            f"must be an http:// or https:// URL, not {self.url!r}",
        )
        _check_absolute(self.jwt_key_file, "jwt_key_file")
        _require(is_user_name(self.operator_user), "operator_user", f"{self.operator_user!r} is not a user name")
        self._check_lookup(self.user_lookup, self.fs_root)
        _check_timeout(self.list_timeout_s, "list_timeout_s")
        _check_timeout(self.connect_timeout_s, "connect_timeout_s")
        _require(
            0 < self.token_lifetime_s <= MAX_LIFETIME_S,
            "token_lifetime_s",
            f"must be 1..{MAX_LIFETIME_S} s (a leaked token must expire fast), not {self.token_lifetime_s}",
        )
        _require(
            self.api_version is None or self.api_version in REST_API_VERSIONS,
            "api_version",
            f"{self.api_version!r} is not one of {', '.join(REST_API_VERSIONS)}",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class CliConfig(_SiteConfig):
    """Slurm's client tools, run directly on a login node or behind ``exec_prefix`` (``["chroot", DIR]``)."""

    kind: Literal["cli"] = "cli"
    slurm_conf: str
    exec_prefix: tuple[str, ...] = ()
    fs_root: str | None = None
    user_lookup: UserLookup = "nss"
    operator_user: str | None = None
    as_root: bool | None = None

    def __post_init__(self) -> None:
        self._check_site("cli")
        _check_absolute(self.slurm_conf, "slurm_conf")
        object.__setattr__(self, "exec_prefix", tuple(self.exec_prefix))
        _require(all(self.exec_prefix), "exec_prefix", "must not contain empty arguments")
        self._check_lookup(self.user_lookup, self.fs_root)
        _require(
            self.operator_user is None or is_user_name(self.operator_user),
            "operator_user",
            f"{self.operator_user!r} is not a user name",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class PyslurmConfig(_SiteConfig):
    """libslurm in a worker process; it runs where the site's slurm.conf and munge key are (a site agent)."""

    kind: Literal["pyslurm"] = "pyslurm"
    slurm_conf: str
    fs_root: str = "/"
    user_lookup: UserLookup = "nss"
    slurm_user: str = "root"  # the worker submits with user_id/group_id, which only root or SlurmUser may

    def __post_init__(self) -> None:
        self._check_site("pyslurm")
        _check_absolute(self.slurm_conf, "slurm_conf")
        self._check_lookup(self.user_lookup, self.fs_root)


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig(_SiteConfig):
    """A Factory reached through its own agent, which dials out to the broker and runs the adapter at the site:
    no URL and no key here (the broker holds none), it reaches nothing and resolves no uid, so only names are
    checked here (the agent's policy file has the final word). The broker builds this adapter itself (it needs
    the broker's database), so :func:`build_adapter` refuses it."""

    kind: Literal["agent"] = "agent"
    timeout_s: float = DEFAULT_AGENT_TIMEOUT_S  # how long an order without a deadline of its own waits
    user_lookup: ClassVar[UserLookup] = "none"
    fs_root: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        self._check_site("agent")


AdapterConfig = RestConfig | CliConfig | PyslurmConfig | AgentConfig
# An agent Factory's site users when its file sets no allowed_users: any name is_user_name takes (root, SlurmUser
# and forbidden_users are still refused by name; the agent's policy decides the rest).
_ANY_USER_NAME = ".+"

SiteAdapterConfig = RestConfig | CliConfig | PyslurmConfig


def _lookup(config: AdapterConfig) -> Callable[[str], PasswdEntry | None] | None:
    if config.user_lookup == "passwd":
        assert config.fs_root is not None  # checked on construction
        return passwd_lookup(config.fs_root)
    if config.user_lookup == "nss":
        return local_lookup
    return None


def _login_defs(config: AdapterConfig) -> Path | None:
    """Where the site's UID_MIN is read: beside the passwd the look-ups read."""
    if config.user_lookup == "passwd":
        assert config.fs_root is not None
        return Path(config.fs_root) / "etc/login.defs"
    return Path("/etc/login.defs") if config.user_lookup == "nss" else None


def site_policy(config: AdapterConfig) -> SitePolicy:
    """Who this cluster's adapter may submit as: people, never root, SlurmUser, a forbidden or a system account."""
    allowed_users = config.allowed_users
    if isinstance(config, AgentConfig) and allowed_users is None:
        allowed_users = _ANY_USER_NAME
    return SitePolicy(
        slurm_user=config.slurm_user,
        forbidden_users=frozenset(config.forbidden_users),
        lookup=_lookup(config),
        uid_ranges=config.uid_ranges,
        login_defs=_login_defs(config),
        allowed_users=None if allowed_users is None else re.compile(allowed_users),
    )


def build_adapter(config: AdapterConfig) -> SlurmAdapter:
    """The adapter a config describes. Adapters are imported lazily: each pulls in its own dependencies.
    An :class:`AgentConfig` is refused: its adapter lives in the broker (``broker.agents``)."""
    if isinstance(config, AgentConfig):
        raise AdapterConfigError("kind", "an agent Factory's adapter is built by the broker, which holds its orders")
    if isinstance(config, RestConfig):
        from slurm_adapters.rest import RestAdapter

        return RestAdapter(
            cluster=config.cluster,
            base_url=config.url,
            jwt_key_file=config.jwt_key_file,
            operator_user=config.operator_user,
            policy=site_policy(config),
            output_root=config.fs_root,
            timeout_s=config.timeout_s,
            list_timeout_s=config.list_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            token_lifetime_s=config.token_lifetime_s,
            api_version=config.api_version,
        )
    if isinstance(config, CliConfig):
        from slurm_adapters.cli import CliAdapter

        return CliAdapter(
            cluster=config.cluster,
            slurm_conf=config.slurm_conf,
            exec_prefix=config.exec_prefix,
            policy=site_policy(config),
            operator_user=config.operator_user,
            fs_root=config.fs_root,
            as_root=config.as_root,
            timeout_s=config.timeout_s,
        )
    from slurm_adapters.pyslurm.adapter import PyslurmAdapter

    return PyslurmAdapter(
        cluster=config.cluster,
        slurm_conf=config.slurm_conf,
        fs_root=config.fs_root,
        policy=site_policy(config),
        timeout_s=config.timeout_s,
    )


def config_to_dict(config: AdapterConfig) -> dict[str, Any]:
    """The config as JSON-ready data, for config files: ``kind``, then every field not at its default."""
    data: dict[str, Any] = {"kind": config.kind}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if item.name == "kind" or (item.default is not dataclasses.MISSING and value == item.default):
            continue
        data[item.name] = _json_ready(value)
    return data


def _json_ready(value: Any) -> Any:
    return [_json_ready(item) for item in value] if isinstance(value, tuple) else value


__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterKind",
    "AgentConfig",
    "CliConfig",
    "PyslurmConfig",
    "RestConfig",
    "SiteAdapterConfig",
    "UserLookup",
    "build_adapter",
    "config_to_dict",
    "site_policy",
]
