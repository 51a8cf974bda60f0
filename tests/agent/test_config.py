"""The operator's files: the agent's config, its policy and its key are checked when loaded, and every mistake
is one clear message (no traceback, exit 2 from the command)."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml

from agent.__main__ import main
from agent.config import AgentConfigError, check_broker_url, load_config
from agent.keys import KeyFileError, generate_jwk, load_signing_key, write_private_jwk
from agent.link import BrokerLink, LinkDown, SessionLost
from agent.policy import PolicyFile
from slurm_adapters.agent_protocol import Heartbeat
from slurm_adapters.factory import RestConfig
from tests.agent.conftest import POLICY
from tests.agent.fakes import make_key

ADAPTER = {"kind": "rest", "cluster": "lumi", "url": "http://127.0.0.1:6820", "jwt_key_file": "/etc/slurm/jwt.key",
           "operator_user": "slurmops", "allowed_users": "[a-z]+"}  # fmt: skip


def write_config(tmp_path: Path, **changes: Any) -> Path:
    document = {
        "broker_url": "https://conveyor.example.eu",
        "factory": "lumi-ai",
        "audience": "https://conveyor.example.eu",
        "key_file": "agent.jwk",
        "adapter": ADAPTER,
        "policy_file": "policy.yaml",
        "pause_file": "/run/conveyor-agent/paused",
        **changes,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_config_loads_with_paths_relative_to_its_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.key_file == tmp_path / "agent.jwk"
    assert config.policy_file == tmp_path / "policy.yaml"
    assert config.pause_file == Path("/run/conveyor-agent/paused")
    assert isinstance(config.adapter, RestConfig)
    assert (config.adapter.timeout_s, config.concurrency) == (8.0, 40)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"brokre_url": "x"}, "brokre_url: Extra inputs are not permitted"),
        ({"broker_url": "http://conveyor.example.eu"}, "plain http is allowed only to loopback"),
        ({"broker_url": "https://user:pw@conveyor.example.eu"}, "must not carry credentials"),
        ({"adapter": {**ADAPTER, "timeout_s": -1}}, "timeout_s"),
        ({"adapter": {**ADAPTER, "kind": "ssh"}}, "adapter"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_a_wrong_config_says_what_to_fix(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        load_config(write_config(tmp_path, **changes))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000", "https://b.eu"]
)
def test_plain_http_only_to_loopback(url: str) -> None:
    assert check_broker_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"site_users": ["alice", "root"]}, "'root', which can never run jobs"),
        ({"site_users": ["daemon"]}, "'daemon', which can never run jobs"),
        ({"rules": [{"run_as": "carol"}]}, "names \\['carol'\\], which site_users does not list"),
        ({"default_account": "other"}, "default_account 'other' is not in accounts"),
        ({"rules": [{"users": ["*"], "shell": "sh"}]}, "Extra inputs"),
    ],
)
def test_a_policy_can_never_list_privileged_accounts(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicyFile.model_validate({**POLICY, **changes})


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "agent.jwk"
    assert main(["keygen", "--kid", "lumi-2026", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_signing_key(out)
    assert (key.kid, key.alg) == ("lumi-2026", "ES256")
    printed = json.loads(capsys.readouterr().out)
    assert printed == key.public_jwks
    assert "d" not in printed["keys"][0]
    assert main(["keygen", "--kid", "again", "--out", str(out)]) == 2  # never overwrites a key
    assert load_signing_key(out).kid == "lumi-2026"


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "oct", "k": "c2VjcmV0", "kid": "k", "alg": "HS256"}, "asymmetric alg"),
        ({**generate_jwk("k"), "alg": "none"}, "asymmetric alg"),
        ({key: value for key, value in generate_jwk("k").items() if key != "d"}, "not a private key"),
        ({**generate_jwk("k"), "kid": ""}, "has no kid"),
        ({"keys": [generate_jwk("a"), generate_jwk("b")]}, "exactly one private key"),
    ],
)
def test_a_key_that_cannot_sign_agent_assertions_is_refused(tmp_path: Path, jwk: dict[str, Any], message: str) -> None:
    path = tmp_path / "key.jwk"
    write_private_jwk(path, jwk)
    with pytest.raises(KeyFileError, match=message):
        load_signing_key(path)


def test_run_with_a_broken_config_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, broker_url="http://10.0.0.1")
    assert main(["run", "--config", str(path)]) == 2
    assert "plain http is allowed only to loopback" in capsys.readouterr().err


async def test_the_link_signs_the_exact_path_and_tells_a_lost_session_from_a_broken_link(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    seen: list[httpx.Request] = []
    answers = iter([httpx.Response(410), httpx.Response(503, text="overloaded"), httpx.Response(307)])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    link = BrokerLink(
        "https://b.eu/conveyor/", factory="f", audience="a", key=key, transport=httpx.MockTransport(handler)
    )
    beat = Heartbeat(agent_time=datetime.now(UTC))
    with pytest.raises(SessionLost):
        await link.heartbeat("s1", beat)
    with pytest.raises(LinkDown, match="HTTP 503: overloaded") as down:
        await link.heartbeat("s1", beat)
    assert not isinstance(down.value, SessionLost)
    with pytest.raises(LinkDown, match="HTTP 307"):  # a redirect is never followed with a path-bound assertion
        await link.heartbeat("s1", beat)
    await link.aclose()
    claims = jwt.decode(seen[0].headers["authorization"].split()[1], options={"verify_signature": False})
    assert claims["htu"] == "/conveyor/v1/agent/sessions/s1/heartbeat"  # the base URL's prefix included
    assert claims["htm"] == "POST"
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("f", "f", "a")
    assert seen[0].headers["authorization"] != seen[1].headers["authorization"]  # once-only: a new jti each time


def test_the_documented_examples_load(tmp_path: Path) -> None:
    """docs/agent.md's config and policy examples are what the agent accepts."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    config_text, policy_text = blocks
    (tmp_path / "agent.yaml").write_text(config_text)
    config = load_config(tmp_path / "agent.yaml")
    assert (config.factory, config.adapter.kind, config.adapter.timeout_s) == ("lumi-ai", "rest", 8)
    policy = PolicyFile.model_validate(yaml.safe_load(policy_text))
    assert policy.site_users == ("alice", "bob")
