"""A Factory reached through its agent: ``adapter: {kind: agent}`` in the Factory file (the minimal config this
branch needs to authenticate agents; the agent's own adapter config is the site's)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.factories.registry import parse_factories
from slurm_adapters.errors import UnsafeRequest
from slurm_adapters.factory import AdapterConfigError, AgentConfig, build_adapter, config_to_dict, site_policy
from tests.unit.test_factories import document, problems


def agent_document(**adapter: Any) -> dict[str, Any]:
    loaded = document()
    loaded["factories"][1]["adapter"] = {"kind": "agent", "cluster": "lumi", **adapter}
    return loaded


def test_an_agent_factory_loads_with_its_cluster_alone_and_the_broker_builds_no_adapter_for_it() -> None:
    lumi = parse_factories(agent_document())["lumi"]
    assert isinstance(lumi.adapter, AgentConfig)
    assert (lumi.adapter.kind, lumi.adapter.cluster, lumi.adapter.timeout_s) == ("agent", "lumi", 30.0)
    assert config_to_dict(lumi.adapter) == {"kind": "agent", "cluster": "lumi"}
    with pytest.raises(AdapterConfigError, match="built by the broker"):
        build_adapter(lumi.adapter)


def test_an_agent_factory_still_refuses_privileged_names_before_any_order() -> None:
    policy = site_policy(AgentConfig(cluster="lumi", forbidden_users=("svc",)))
    for user in ("root", "slurm", "svc", "no/name"):
        with pytest.raises(UnsafeRequest):
            policy.check_name(user)
    policy.check_name("alice")
    narrowed = site_policy(AgentConfig(cluster="lumi", allowed_users="a[a-z]+"))
    with pytest.raises(UnsafeRequest, match="allowed_users"):
        narrowed.check_name("bob")


def test_an_agent_factory_is_checked_like_the_others() -> None:
    assert problems(agent_document(url="https://x.example")) == ["factory lumi: adapter.url: unknown field"]
    assert problems(agent_document(cluster="bad name")) == [
        "factory lumi: adapter.cluster: 'bad name' is not a cluster name"
    ]
    loaded = agent_document()
    loaded["factories"][1]["mapping"]["default_user"] = "root"
    assert problems(loaded) == ["factory lumi: mapping.default_user: refusing to submit as privileged user 'root'"]
