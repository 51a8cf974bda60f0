"""Adapter configs and build_adapter: every field reaches the adapter, bad configs name their field.

The lab's make_adapter goes through the same path, so the conformance suite tests adapters configured
exactly as the broker configures them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dev.lab.view import Cluster, adapter_config, make_adapter
from slurm_adapters.cli import CliAdapter
from slurm_adapters.errors import ClusterUnavailable, UnsafeRequest
from slurm_adapters.factory import (
    REST_API_VERSIONS,
    AdapterConfig,
    AdapterConfigError,
    AgentConfig,
    CliConfig,
    PyslurmConfig,
    RestConfig,
    build_adapter,
    config_to_dict,
    site_policy,
)
from slurm_adapters.pyslurm.adapter import PyslurmAdapter
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.rest import CODECS, RestAdapter
from slurm_adapters.safety import local_lookup

PASSWD = "root:x:0:0::/root:/bin/bash\ndaemon:x:1:1::/:/bin/false\nslurm:x:64030:64030::/:/bin/false\n"
PASSWD += "alice:x:1001:1001::/home/alice:/bin/bash\n"


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    """A cluster filesystem with its own passwd file and slurm.conf."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/slurm").mkdir()
    (tmp_path / "etc/slurm/slurm.conf").write_text("ClusterName=alpha\n")
    return tmp_path


def spec() -> SlurmJobSpec:
    return SlurmJobSpec(name="t", script="true\n", working_directory="/tmp", tag="cvy-1")


def rest_config(**changes: Any) -> RestConfig:
    fields: dict[str, Any] = {
        "cluster": "alpha",
        "url": "http://127.0.0.1:6820",
        "jwt_key_file": "/etc/slurm/jwt.key",
        "operator_user": "slurm",
        "allowed_users": "[a-z]+",
        **changes,
    }
    return RestConfig(**fields)


async def test_rest_config_reaches_every_adapter_setting(fs_root: Path) -> None:
    config = rest_config(
        fs_root=str(fs_root),
        timeout_s=2.5,
        list_timeout_s=30.0,
        connect_timeout_s=1.5,
        token_lifetime_s=20,
        api_version="v0.0.38",
    )
    adapter = build_adapter(config)
    try:
        assert isinstance(adapter, RestAdapter)
        assert (adapter.cluster, adapter.base_url, adapter.operator_user) == ("alpha", config.url, "slurm")
        assert adapter.output_root == fs_root
        assert adapter.api_version == "v0.0.38"  # pinned: no negotiation
        # Timeouts and the token lifetime have no public accessor; they are what a hung site meets.
        assert (adapter._timeout.read, adapter._timeout.connect) == (2.5, 1.5)
        assert adapter._list_timeout.read == 30.0
        assert adapter._tokens.lifetime_s == 20
        assert str(adapter._tokens.key_file) == "/etc/slurm/jwt.key"
    finally:
        await adapter.aclose()


async def test_the_site_policy_comes_from_the_config_and_guards_render(fs_root: Path) -> None:
    config = rest_config(fs_root=str(fs_root), user_lookup="passwd", slurm_user="slurm", forbidden_users=("bob",))
    adapter = build_adapter(config)
    try:
        assert adapter.render(spec(), "alice").user == "alice"  # uid 1001 in the cluster's own passwd
        for user, refusal in [
            ("daemon", "system account"),  # uid 1 in <fs_root>/etc/passwd
            ("slurm", "privileged"),
            ("bob", "privileged"),
            ("carol", "does not exist"),  # not in the cluster's passwd, whatever this host knows
        ]:
            with pytest.raises(UnsafeRequest, match=refusal):
                adapter.render(spec(), user)
    finally:
        await adapter.aclose()


def test_user_lookup_chooses_where_uids_come_from(fs_root: Path) -> None:
    assert site_policy(rest_config()).lookup is None  # a remote slurmrestd: names only
    assert site_policy(CliConfig(cluster="a", slurm_conf="/etc/slurm.conf")).lookup is local_lookup
    policy = site_policy(rest_config(fs_root=str(fs_root), user_lookup="passwd"))
    assert policy.lookup is not None
    alice = policy.lookup("alice")
    assert alice is not None
    assert (alice.uid, alice.home, alice.shell) == (1001, "/home/alice", "/bin/bash")
    assert policy.login_defs == fs_root / "etc/login.defs"
    assert site_policy(rest_config(uid_ranges=[[5000, 6000]])).uid_ranges == ((5000, 6000),)


async def test_cli_config_reaches_the_runner_and_the_rendered_argv(fs_root: Path) -> None:
    config = CliConfig(
        cluster="charlie",
        slurm_conf="/etc/slurm/slurm.conf",
        exec_prefix=("chroot", str(fs_root)),
        fs_root=str(fs_root),
        user_lookup="passwd",
        operator_user="slurm",
        as_root=True,
        timeout_s=3.0,
    )
    adapter = build_adapter(config)
    assert isinstance(adapter, CliAdapter)
    assert adapter.operator_user == "slurm"
    assert adapter.fs_root == fs_root
    assert (adapter.runner.slurm_conf, adapter.runner.timeout_s, adapter.runner.as_root) == (
        "/etc/slurm/slurm.conf",
        3.0,
        True,
    )
    argv = adapter.render(spec(), "alice").payload["argv"]
    assert argv[:6] == ["chroot", str(fs_root), "runuser", "-m", "-u", "alice"]
    with pytest.raises(UnsafeRequest, match="system account"):
        adapter.render(spec(), "daemon")


async def test_pyslurm_config_builds_without_starting_a_worker(fs_root: Path) -> None:
    config = PyslurmConfig(cluster="delta", slurm_conf=str(fs_root / "etc/slurm/slurm.conf"), timeout_s=4.0)
    adapter = build_adapter(config)
    try:
        assert isinstance(adapter, PyslurmAdapter)
        assert (adapter.timeout_s, adapter.fs_root, adapter.worker_pid) == (4.0, Path("/"), None)
        assert adapter.policy.slurm_user == "root"  # the worker runs as root: root is its SlurmUser stand-in
    finally:
        await adapter.aclose()
    with pytest.raises(ClusterUnavailable, match=r"no slurm\.conf"):
        build_adapter(PyslurmConfig(cluster="delta", slurm_conf=str(fs_root / "missing.conf")))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: rest_config(url="ftp://host/"), "url"),
        (lambda: rest_config(url="http://"), "url"),
        (lambda: rest_config(jwt_key_file="keys/jwt.key"), "jwt_key_file"),
        (lambda: rest_config(operator_user="Bad User"), "operator_user"),
        (lambda: rest_config(token_lifetime_s=61), "token_lifetime_s"),
        (lambda: rest_config(api_version="v0.0.40"), "api_version"),
        (lambda: rest_config(timeout_s=0), "timeout_s"),
        (lambda: rest_config(list_timeout_s=float("inf")), "list_timeout_s"),
        (lambda: rest_config(user_lookup="passwd"), "user_lookup"),  # no fs_root to read passwd from
        (lambda: rest_config(fs_root="relative/root"), "fs_root"),
        (lambda: rest_config(cluster="two words"), "cluster"),
        (lambda: rest_config(uid_ranges=[[0, 2000]]), "uid_ranges"),
        (lambda: rest_config(uid_ranges=[[3000, 2000]]), "uid_ranges"),
        (lambda: rest_config(allowed_users="alice|("), "allowed_users"),
        (lambda: CliConfig(cluster="a", slurm_conf="/s.conf", user_lookup="none"), "allowed_users"),
        (lambda: rest_config(forbidden_users=("ok", "Not OK")), "forbidden_users"),
        (lambda: CliConfig(cluster="a", slurm_conf="slurm.conf"), "slurm_conf"),
        (lambda: CliConfig(cluster="a", slurm_conf="/s.conf", exec_prefix=("chroot", "")), "exec_prefix"),
        (lambda: PyslurmConfig(cluster="a", slurm_conf="/s.conf", fs_root="chroots/sid"), "fs_root"),
    ],
)
def test_invalid_configs_name_their_field(make: Any, field: str) -> None:
    with pytest.raises(AdapterConfigError) as caught:
        make()
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_sequences_are_stored_as_tuples_whatever_the_caller_passed() -> None:
    config = CliConfig(cluster="a", slurm_conf="/s.conf", exec_prefix=["chroot", "/x"])  # type: ignore[arg-type]
    assert config.exec_prefix == ("chroot", "/x")
    assert hash(config)  # frozen and hashable: usable as a cache key


def test_config_to_dict_keeps_only_what_differs_from_the_defaults_and_round_trips() -> None:
    config: AdapterConfig = CliConfig(cluster="a", slurm_conf="/s.conf", exec_prefix=("chroot", "/x"), timeout_s=8.0)
    data = config_to_dict(config)
    assert data == {"kind": "cli", "cluster": "a", "slurm_conf": "/s.conf", "exec_prefix": ["chroot", "/x"]}
    assert CliConfig(**{**data, "exec_prefix": tuple(data["exec_prefix"])}) == config
    assert config_to_dict(rest_config(timeout_s=3.0))["timeout_s"] == 3.0


def test_the_rest_versions_a_config_accepts_are_the_ones_the_adapter_speaks() -> None:
    assert tuple(codec.version for codec in CODECS) == REST_API_VERSIONS


def lab_cluster(fs_root: Path, exec_prefix: list[str]) -> Cluster:
    return Cluster(
        {
            "name": "charlie",
            "fs_root": str(fs_root),
            "exec_prefix": exec_prefix,
            "slurm_conf": "/etc/slurm/slurm.conf",
            "slurm_user": "root",
            "operator_user": "root",
            "rest": {"url": "http://127.0.0.1:6860"},
            "jwt_key_file": str(fs_root / "jwt.key"),
        }
    )


async def test_the_lab_builds_its_adapters_through_the_factory(fs_root: Path) -> None:
    cluster = lab_cluster(fs_root, ["chroot", str(fs_root)])
    assert adapter_config("cli", cluster) == CliConfig(
        cluster="charlie",
        slurm_conf="/etc/slurm/slurm.conf",
        exec_prefix=("chroot", str(fs_root)),
        slurm_user="root",
        fs_root=str(fs_root),
        user_lookup="passwd",
    )
    rest = make_adapter("rest", cluster)
    try:
        assert isinstance(rest, RestAdapter)
        assert rest.base_url == "http://127.0.0.1:6860"
        assert rest.output_root == fs_root
        with pytest.raises(UnsafeRequest, match="system account"):  # users come from the cluster's own passwd
            rest.render(spec(), "daemon")
    finally:
        await rest.aclose()
    assert isinstance(make_adapter("cli", cluster), CliAdapter)
    with pytest.raises(ValueError, match="unknown adapter kind"):
        adapter_config("ssh", cluster)


def test_defect_02_a_rest_adapter_that_cannot_resolve_uids_needs_allowed_users() -> None:
    with pytest.raises(AdapterConfigError) as refused:
        rest_config(user_lookup="none", allowed_users=None)
    assert refused.value.field == "allowed_users"


def test_an_agent_config_holds_no_key_and_its_adapter_lives_in_the_broker() -> None:
    config = AgentConfig(cluster="alpha")
    assert (config.timeout_s, config_to_dict(config)) == (30.0, {"kind": "agent", "cluster": "alpha"})
    with pytest.raises(AdapterConfigError) as refused:
        build_adapter(config)
    assert refused.value.field == "kind"
    with pytest.raises(AdapterConfigError) as bad:
        AgentConfig(cluster="alpha", timeout_s=0)
    assert bad.value.field == "timeout_s"
    # Names only: never root nor SlurmUser; the agent's own policy decides the rest.
    policy = site_policy(config)
    policy.check_user("alice")
    for user in ("root", "slurm", "not a name"):
        with pytest.raises(UnsafeRequest):
            policy.check_user(user)
