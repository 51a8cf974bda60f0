"""``conveyor-agent``: run the agent, make its key, or check its configuration against the local Slurm.

Errors an operator must fix are printed as one message each and exit 2 (no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.clock import BrokerClock
from agent.config import AgentConfig, AgentConfigError, load_config
from agent.executor import Executor, PauseSwitch
from agent.failpoints import UnknownFailpoint, active_failpoints
from agent.keys import KeyFileError, generate_jwk, load_signing_key, public_jwk, write_private_jwk
from agent.link import BrokerLink
from agent.policy import SitePolicyFile, load_policy
from agent.runner import Agent
from slurm_adapters import codec
from slurm_adapters.errors import SlurmError
from slurm_adapters.factory import build_adapter, site_policy

log = logging.getLogger("conveyor.agent")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="conveyor-agent",
        description="The Conveyor Factory agent: dials out to the broker and runs its orders on the local Slurm.",
    )
    top.add_argument("--version", action="version", version=f"conveyor-agent {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="connect to the broker and carry out its orders until SIGTERM")
    run.add_argument("--config", type=Path, required=True, help="the agent's YAML configuration file")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    keygen = commands.add_parser("keygen", help="write a new private key (EC P-256, ES256) and print its public JWKS")
    keygen.add_argument("--kid", required=True, help="the key's id, as the broker will know it")
    keygen.add_argument("--out", type=Path, required=True, help="the new private JWK file (mode 0600)")
    check = commands.add_parser("check", help="load the configuration and policy, and ask the local Slurm for health")
    check.add_argument("--config", type=Path, required=True, help="the agent's YAML configuration file")
    return top


def load_policy_for(config: AgentConfig) -> SitePolicyFile:
    return load_policy(config.policy_file, site_policy(config.adapter))


def keygen(kid: str, out: Path) -> int:
    jwk = generate_jwk(kid)
    try:
        write_private_jwk(out, jwk)
    except FileExistsError:
        raise KeyFileError(f"{out} exists; a key is never overwritten") from None
    print(json.dumps({"keys": [public_jwk(jwk)]}, indent=2))
    print(f"# private key written to {out} (mode 0600); register the JWKS above with "
          "PUT /v1/factories/{factory}/agent-keys", file=sys.stderr)  # fmt: skip
    return 0


async def check(config: AgentConfig) -> int:
    load_signing_key(config.key_file)
    load_policy_for(config)
    adapter = build_adapter(config.adapter)
    try:
        health = await adapter.health()
    except SlurmError as error:
        print(json.dumps({"ok": False, "error": codec.error_to_json(error)}, indent=2))
        return 1
    finally:
        await adapter.aclose()
    print(json.dumps(codec.health_to_json(health), indent=2))
    return 0 if health.ok else 1


async def run(config: AgentConfig, failpoints: frozenset[str] = frozenset()) -> int:
    key = load_signing_key(config.key_file)
    policy = load_policy_for(config)
    adapter = build_adapter(config.adapter)
    link = BrokerLink(config.broker_url, factory=config.factory, audience=config.audience, key=key,
                      ca_file=config.ca_file)  # fmt: skip
    executor = Executor(adapter, policy, BrokerClock(), PauseSwitch(config.pause_file),
                        deadline_s=config.adapter.timeout_s, failpoints=failpoints)  # fmt: skip
    agent = Agent(link, executor, concurrency=config.concurrency, report_batch=config.report_batch,
                  linger_s=config.linger_s, shutdown_grace_s=config.shutdown_grace_s)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("conveyor-agent %s for Factory %s (%s adapter) -> %s", __version__, config.factory,
             config.adapter.kind, config.broker_url)  # fmt: skip
    try:
        await agent.run(stop)
    finally:
        await link.aclose()
        await adapter.aclose()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return keygen(args.kid, args.out)
        failpoints = active_failpoints()  # tests only; checked first, a typo must not pass
        config = load_config(args.config)
        if args.command == "check":
            return asyncio.run(check(config))
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # not a line per poll and per Slurm call
            logging.getLogger("httpx").setLevel(logging.WARNING)
        return asyncio.run(run(config, failpoints))
    except (AgentConfigError, KeyFileError, UnknownFailpoint) as exc:
        print(f"conveyor-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
