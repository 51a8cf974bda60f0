"""The agent with a real Slurm: the executor behind the real REST adapter of the lab's expendable cluster
``echo`` takes a submit order from the fake broker, reports Slurm's job id, and Slurm itself (``scontrol show
job``, run by the test) shows the broker's tag and the account and user the site's policy decided."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from agent.__main__ import main
from agent.backoff import Backoff
from agent.clock import BrokerClock
from agent.executor import Executor, PauseSwitch
from agent.keys import SigningKey, generate_jwk, write_private_jwk
from agent.link import BrokerLink
from agent.policy import PolicyFile, SitePolicyFile
from agent.runner import Agent
from dev.lab.view import adapter_config
from slurm_adapters import codec
from slurm_adapters.agent_protocol import CancelOrder, Requester, SubmitOrder
from slurm_adapters.factory import build_adapter, config_to_dict, site_policy
from slurm_adapters.records import SlurmJobSpec, SlurmJobState
from tests.agent.fakes import AUDIENCE, BROKER_URL, FACTORY, FakeBroker
from tests.lab import SUBMIT_USER, Cluster, clusters, job_dir, new_tag, wait_for_job

pytestmark = pytest.mark.lab

ACCOUNT = "ehpc-agent-site"  # echo keeps no accounting: Slurm records the account the policy set


@pytest.fixture(scope="module")
def echo() -> Cluster:
    found = [cluster for cluster in clusters() if cluster.name == "echo"]
    assert found, "the lab has no cluster 'echo'"
    return found[0]


def policy_document() -> dict[str, object]:
    return {
        "site_users": [SUBMIT_USER],
        "rules": [{"projects": ["EHPC-AIF-2026PG01-1147"]}],
        "accounts": [ACCOUNT],
        "default_account": ACCOUNT,
        "partitions": ["cpu"],
        "max_nodes": 1,
        "max_time_min": 10,
    }


async def test_a_submit_order_reaches_echo_as_the_policy_decided(
    echo: Cluster, key: SigningKey, tmp_path: Path
) -> None:
    config = adapter_config("rest", echo)
    adapter = build_adapter(config)
    policy = SitePolicyFile(PolicyFile.model_validate(policy_document()), site_policy(config))
    broker = FakeBroker(key)
    link = BrokerLink(BROKER_URL, factory=FACTORY, audience=AUDIENCE, key=key, transport=broker.transport)
    executor = Executor(adapter, policy, BrokerClock(), PauseSwitch(tmp_path / "pause"), deadline_s=config.timeout_s)
    agent = Agent(link, executor, backoff=Backoff(base_s=0.05, cap_s=0.5))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    tag = new_tag("agent")
    spec = SlurmJobSpec(
        name="agent-probe", script="#!/bin/bash\nexec sleep 120\n", working_directory=job_dir(echo, tag), tag=tag,
        partition="cpu", time_limit_min=2,
    )  # fmt: skip
    job_id: int | None = None
    try:
        await broker.wait_for(lambda: bool(broker.polls), timeout_s=30)
        assert broker.sessions["s1"].hello.slurm_release == echo.release  # from the adapter's health, at hello
        await broker.give(
            SubmitOrder(
                id=1,
                epoch=1,
                not_after=datetime.now(UTC) + timedelta(seconds=30),
                attempt=f"{tag}/1",
                spec=codec.spec_to_json(spec),
                site_user=SUBMIT_USER,
                requester=Requester(user="u-alice", project="EHPC-AIF-2026PG01-1147"),
            )
        )
        await broker.wait_for(lambda: bool(broker.reports_for(1)), timeout_s=30)
        [report] = broker.reports_for(1)
        assert report["ok"], report
        job_id = int(report["result"])
        assert report["site_account"] == SUBMIT_USER
        shown = echo.show_job(job_id)  # Slurm's own view, not the adapter's
        assert shown["Comment"] == tag
        assert shown["Account"] == ACCOUNT
        assert shown["UserId"].startswith(f"{SUBMIT_USER}(")
        assert shown["Partition"] == "cpu"

        await broker.give(
            CancelOrder(
                id=2,
                epoch=1,
                not_after=datetime.now(UTC) + timedelta(seconds=30),
                slurm_job_id=job_id,
                tag=tag,
                site_user=SUBMIT_USER,
            )
        )
        await broker.wait_for(lambda: bool(broker.reports_for(2)), timeout_s=30)
        assert broker.reports_for(2)[0]["ok"], broker.reports_for(2)
        record = await wait_for_job(adapter, job_id, {SlurmJobState.CANCELLED})
        assert record.state is SlurmJobState.CANCELLED
        job_id = None
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        if job_id is not None:
            echo.slurm("scancel", str(job_id))
        await link.aclose()
        await adapter.aclose()
    assert broker.rejected == []


def test_check_asks_the_local_slurm_for_its_health(
    echo: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_private_jwk(tmp_path / "agent.jwk", generate_jwk("echo-agent"))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy_document()))
    config = {
        "broker_url": "http://127.0.0.1:8000",
        "factory": "echo",
        "audience": "conveyor",
        "key_file": "agent.jwk",  # relative to the config file
        "adapter": config_to_dict(adapter_config("rest", echo)),
        "policy_file": "policy.yaml",
        "pause_file": "paused",
    }
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    assert main(["check", "--config", str(tmp_path / "agent.yaml")]) == 0
    health = json.loads(capsys.readouterr().out)
    assert health["ok"] is True
    assert health["release"] == echo.release
