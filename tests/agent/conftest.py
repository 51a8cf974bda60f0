"""Fixtures of the agent's unit tests: a key, the recording adapter, a site policy over made-up accounts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.clock import BrokerClock
from agent.executor import Executor, PauseSwitch
from agent.keys import SigningKey
from agent.policy import PolicyFile, SitePolicyFile
from slurm_adapters.safety import PasswdEntry, SitePolicy
from tests.agent.fakes import RecordingAdapter, make_key
from tests.unit.sites import people

# The site's accounts: two people, and accounts no job may run as (by uid, shell or name).
ACCOUNTS = {
    **people({"alice": 1001, "bob": 1002, "carol": 1003}),
    "root": PasswdEntry("root", 0, "/root", "/bin/bash"),
    "slurm": PasswdEntry("slurm", 64030, "/var/lib/slurm", "/bin/false"),
    "daemon": PasswdEntry("daemon", 1, "/usr/sbin", "/usr/sbin/nologin"),
    "nobody": PasswdEntry("nobody", 65534, "/nonexistent", "/usr/sbin/nologin"),
    "backupsvc": PasswdEntry("backupsvc", 998, "/var/backups", "/bin/bash"),  # a system uid the policy lists
}

POLICY = {
    "site_users": ["alice", "bob", "backupsvc"],
    "rules": [
        {"users": ["u-mapped"], "run_as": "bob"},
        {"projects": ["EHPC-AIF-2026PG01-1147"], "antennas": ["it-antenna"]},
    ],
    "accounts": ["ehpc-aif-test"],
    "default_account": "ehpc-aif-test",
    "partitions": ["cpu", "gpu"],
    "max_nodes": 2,
    "max_gpus": 8,
    "max_time_min": 60,
}


def site_policy(document: dict[str, object] | None = None) -> SitePolicyFile:
    safety = SitePolicy(slurm_user="slurm", lookup=ACCOUNTS.get, login_defs=None)
    return SitePolicyFile(PolicyFile.model_validate(document or POLICY), safety)


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return make_key(tmp_path)


@pytest.fixture
def adapter() -> RecordingAdapter:
    return RecordingAdapter()


@pytest.fixture
def clock() -> BrokerClock:
    clock = BrokerClock()
    clock.skew_s = 2.0
    clock.offset_s = 0.0
    return clock


@pytest.fixture
def executor(adapter: RecordingAdapter, clock: BrokerClock, tmp_path: Path) -> Executor:
    return Executor(adapter, site_policy(), clock, PauseSwitch(tmp_path / "pause"), deadline_s=8.0)
