"""Where the client connects and with which token: arguments, then the environment, then a profile.

``CONVEYOR_URL`` and ``CONVEYOR_TOKEN`` win over the config file; ``CONVEYOR_PROFILE`` (or the file's
``default_profile``) picks a profile. The file is ``CONVEYOR_CONFIG``, else
``$XDG_CONFIG_HOME/conveyor/config.toml`` (``~/.config/conveyor/config.toml``)::

    default_profile = "leonardo"

    [profiles.leonardo]            # straight to the broker, with a personal access token
    url = "https://conveyor.example.eu"
    token_file = "~/.config/conveyor/leonardo.token"

    [profiles.be]                  # through an Antenna gateway, with the token it gave you
    url = "https://antenna.example.be"
    token = "..."
    via = "antenna"

A profile may hold the token itself (``token``) or name a file holding it (``token_file``, better: it can
be kept ``chmod 600``). Through a gateway the API is the same, limited to the user routes.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DEFAULT_URL = "http://127.0.0.1:8000"  # the broker of the quickstart (dev/run.sh)


class ConfigError(ValueError):
    """The client cannot tell where to connect or with which token; the message says what to set."""


@dataclass(frozen=True, slots=True)
class Connection:
    url: str
    token: str
    profile: str | None = None
    via: Literal["broker", "antenna"] = "broker"

    def __repr__(self) -> str:  # never print the token
        return f"Connection(url={self.url!r}, profile={self.profile!r}, via={self.via!r})"


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("CONVEYOR_CONFIG"):
        return Path(env["CONVEYOR_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path("~/.config").expanduser()
    return base / "conveyor" / "config.toml"


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None


def _profile(document: Mapping[str, Any], name: str | None, path: Path) -> tuple[str | None, Mapping[str, Any]]:
    profiles = document.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: 'profiles' must be a table")
    chosen = name or document.get("default_profile")
    if chosen is None:
        return (None, {}) if "default" not in profiles else ("default", profiles["default"])
    if chosen not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"no profile {chosen!r} in {path} (profiles: {known})")
    profile = profiles[chosen]
    if not isinstance(profile, dict):
        raise ConfigError(f"{path}: profile {chosen!r} must be a table")
    return str(chosen), profile


def _token_of(profile: Mapping[str, Any], name: str | None) -> str | None:
    if "token" in profile:
        return str(profile["token"])
    if "token_file" in profile:
        file = Path(str(profile["token_file"])).expanduser()
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"profile {name!r}: cannot read token_file {file}: {exc}") from None
    return None


def resolve(
    *, url: str | None = None, token: str | None = None, profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Connection:  # fmt: skip
    """The connection to use (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    path = config_path(env)
    name, chosen = _profile(_load(path), profile or env.get("CONVEYOR_PROFILE") or None, path)
    final_url = url or env.get("CONVEYOR_URL") or chosen.get("url") or DEFAULT_URL
    final_token = token or env.get("CONVEYOR_TOKEN") or _token_of(chosen, name)
    if not final_token:
        raise ConfigError(
            f"no token: set CONVEYOR_TOKEN, or a profile with 'token' or 'token_file' in {path} "
            "(a personal access token from the broker, or the token your Antenna gateway gave you)"
        )
    via = chosen.get("via", "broker")
    if via not in ("broker", "antenna"):
        raise ConfigError(f"profile {name!r}: via must be 'broker' or 'antenna', not {via!r}")
    return Connection(url=str(final_url).rstrip("/"), token=final_token, profile=name, via=via)


__all__ = ["DEFAULT_URL", "ConfigError", "Connection", "config_path", "resolve"]
