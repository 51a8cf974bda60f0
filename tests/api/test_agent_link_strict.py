"""Strict JSON types on the agent link: every scalar of every body an agent sends, with each wrong JSON type,
signed by a registered agent (so the broker reads the body), is a 422 naming that field, never taken."""

from __future__ import annotations

import json

from slurm_adapters import agent_protocol
from tests.api.test_agent_auth import Setup, agent_broker, setup  # fixtures, found by name
from tests.api.test_strict_json import AGENT_LINK, WRONG_TYPES, body_positions, field_errors_at
from tests.api.test_wire_bounds import openapi_document

__all__ = ["agent_broker", "setup"]


async def test_every_agent_link_body_field_takes_only_its_json_type(setup: Setup) -> None:
    positions = [p for p in body_positions(openapi_document()) if p.path.startswith(AGENT_LINK)]
    covered = {(p.path, p.loc) for p in positions}
    assert {("/v1/agent/sessions", ("protocol",)), ("/v1/agent/sessions/as_none/heartbeat", ("paused",)),
            ("/v1/agent/sessions/as_none/orders", ("ack",)),
            ("/v1/agent/sessions/as_none/reports", ("reports", 0, "ok")),
            ("/v1/agent/sessions/as_none/listing", ("seq",))} <= covered  # fmt: skip
    lax: list[str] = []
    async with setup.broker.client(None) as client:
        for position in positions:
            for wrong in WRONG_TYPES[position.kind]:
                body = json.dumps(position.body(wrong)).encode()
                assertion = setup.gamma.sign(position.method, position.path, body)
                response = await client.request(
                    position.method, position.path, content=body,
                    headers={"Authorization": f"{agent_protocol.SCHEME} {assertion}",
                             "Content-Type": "application/json"},
                )  # fmt: skip
                if response.status_code != 422 or not field_errors_at(response, ["body", *position.loc]):
                    lax.append(f"{position.path} {list(position.loc)} = {wrong!r}: {response.status_code}")
    assert lax == [], "\n".join(lax)
