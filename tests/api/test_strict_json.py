"""Request bodies are read with JSON's own types, on SQLite and PostgreSQL: a boolean is not an integer, a
string is not a number or a boolean, a number is not a timestamp. A value of the wrong JSON type is a 422
naming the field, and nothing is made of it.

Answers stay lenient (the SDK reads them as a newer server may write them); only what a client sends is strict.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from broker.db.models import User
from tests.api.conftest import PROJECT, Api, Broker, job_body
from tests.api.test_jobs import problem_of
from tests.api.test_wire_bounds import openapi_document

WRONG_TYPES: dict[str, list[Any]] = {
    "integer": [True, "1"],
    "number": [True, "10"],
    "boolean": ["yes", "true", 1],
    "string": [1, True],
}
"""For each JSON type, values of other JSON types that a lax reader would coerce into it (or might)."""
PATH_VALUES = {"factory_id": "alpha", "project_id": PROJECT, "user_id": "u_nobody", "kind": "user",
               "subject": "someone", "antenna_id": "be", "session_id": "as_none"}  # fmt: skip
MAP_KEYS = {"environment": "SOME_NAME", "labels": "team"}  # a key each map accepts


def field_errors_at(response: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    """The 422's errors about the value at ``loc`` (or inside it)."""
    problem_of(response, 422, "validation_error")
    return [error for error in response.json().get("errors", []) if error["loc"][: len(loc)] == loc]


async def test_defect_06_strict_json_types_allocations(api: Api) -> None:
    made = await api.client.post("/v1/admin/projects", json={"id": PROJECT, "title": "strict types"})
    assert made.status_code == 201, made.text
    now = datetime.now(UTC)
    grant = {"project": PROJECT, "factory": "alpha", "unit": "gpu_hours", "hours": 10,
             "starts_at": now.isoformat(), "ends_at": (now + timedelta(days=30)).isoformat()}  # fmt: skip
    for field, wrong in [("hours", "10"), ("hours", True), ("hours", "1e3"), ("starts_at", 1_700_000_000),
                         ("ends_at", 4_000_000_000.0)]:  # fmt: skip
        response = await api.client.post("/v1/admin/allocations", json={**grant, field: wrong})
        assert field_errors_at(response, ["body", field]), response.text
    usage = await api.client.get(f"/v1/projects/{PROJECT}/usage")
    assert usage.status_code == 200, usage.text
    assert usage.json() == [], "an allocation was made of a wrongly typed grant"
    granted = await api.client.post("/v1/admin/allocations", json=grant)  # the same grant, typed right
    assert granted.status_code == 201, granted.text
    assert granted.json()["granted_hours"] == 10


async def test_defect_06_strict_json_types_job_fields(api: Api) -> None:
    cases: list[tuple[list[str | int], dict[str, Any]]] = [
        (["resources", "nodes"], job_body(resources={"nodes": True})),
        (["resources", "nodes"], job_body(resources={"nodes": "1"})),
        (["resources", "cpus_per_task"], job_body(resources={"cpus_per_task": "2"})),
        (["resources", "gpus_per_node"], job_body(resources={"gpus_per_node": False})),
        (["resources", "tasks_per_node"], job_body(resources={"tasks_per_node": True})),
        (["resources", "memory_mb"], job_body(resources={"memory_mb": "4096"})),
        (["resources", "time_limit_min"], job_body(resources={"time_limit_min": "20"})),
        (["environment", "EPOCHS"], job_body(environment={"EPOCHS": 3})),
        (["command", 1], job_body(command=["sleep", 10])),
    ]
    for loc, body in cases:
        for dry_run in (False, True):
            response = await api.client.post("/v1/jobs", json=body, params={"dry_run": dry_run})
            assert field_errors_at(response, ["body", *loc]), (loc, response.text)
    listed = await api.client.get("/v1/jobs")
    assert listed.json()["items"] == [], "a job was made of a wrongly typed spec"
    typed = await api.client.post("/v1/jobs", json=job_body(resources={"nodes": 1, "time_limit_min": 20}))
    assert typed.status_code == 201, typed.text


async def test_defect_06_strict_json_types_admin_users(broker: Broker) -> None:
    async with broker.client(broker.admin_token) as admin:
        for wrong in ("yes", "true", 1, "1", "on"):
            response = await admin.post("/v1/admin/users", json={"name": f"mallory-{wrong}", "admin": wrong})
            assert field_errors_at(response, ["body", "admin"]), response.text
        typed = await admin.post("/v1/admin/users", json={"name": "alice", "admin": False})
        assert typed.status_code == 201, typed.text
        assert typed.json()["user"]["admin"] is False
    async with broker.db.read() as session:
        names = set((await session.scalars(select(User.name))).all())
    assert not {name for name in names if name.startswith("mallory")}, "a user was made of a wrongly typed request"


# --- the walk: every scalar of every JSON request body, sent with each wrong JSON type ---------------------


@dataclass(frozen=True)
class Position:
    """One scalar a request body can carry: the operation, the path to it, and its JSON type."""

    method: str
    path: str
    base: Mapping[str, Any]
    loc: tuple[str | int, ...]
    kind: str

    def body(self, value: Any) -> dict[str, Any]:
        """The base body (the component's example) with ``value`` put at this position."""
        body = copy.deepcopy(dict(self.base))
        parent: Any = body
        for step, after in zip(self.loc, self.loc[1:], strict=False):
            kind = list if isinstance(after, int) else dict
            current = (parent[0] if parent else None) if isinstance(step, int) else parent.get(step)
            if not isinstance(current, kind):
                current = kind()
            if isinstance(step, int):
                parent[:] = [current]
            else:
                parent[step] = current
            parent = current
        last = self.loc[-1]
        if isinstance(last, int):
            parent[:] = [value]
        else:
            parent[last] = value
        return body


def _resolve(components: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def scalars(
    components: Mapping[str, Any], schema: Mapping[str, Any], loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path, JSON type) of every scalar inside ``schema``: properties, array items and map values."""
    schema = _resolve(components, schema)
    for branch in [*schema.get("anyOf", []), *schema.get("oneOf", [])]:
        yield from scalars(components, branch, loc)
    kind = schema.get("type")
    if kind == "object":
        for name, prop in schema.get("properties", {}).items():
            yield from scalars(components, prop, (*loc, name))
        values = [*schema.get("patternProperties", {}).values()]
        if isinstance(schema.get("additionalProperties"), Mapping):
            values.append(schema["additionalProperties"])
        for value in values:
            yield from scalars(components, value, (*loc, MAP_KEYS.get(str(loc[-1]), "k") if loc else "k"))
    elif kind == "array":
        yield from scalars(components, schema["items"], (*loc, 0))
    elif kind in WRONG_TYPES:
        yield loc, kind


def body_positions(document: Mapping[str, Any]) -> list[Position]:
    """Every scalar position of every JSON request body in the document, once each."""
    components = document["components"]["schemas"]
    positions: dict[tuple[str, str, tuple[str | int, ...]], Position] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            schema = content["schema"]
            base = (_resolve(components, schema).get("examples") or [{}])[0]
            target = path.format(**PATH_VALUES)
            for loc, kind in scalars(components, schema):
                positions.setdefault((method, target, loc), Position(method.upper(), target, base, loc, kind))
    return list(positions.values())


AGENT_LINK = "/v1/agent/"  # signed by a Factory's agent, not a bearer token: walked in test_agent_link_strict.py


async def test_defect_06_strict_json_types_every_request_body_field(api: Api) -> None:
    positions = [p for p in body_positions(openapi_document()) if not p.path.startswith(AGENT_LINK)]
    covered = {(p.path, p.loc) for p in positions}
    assert {("/v1/admin/users", ("admin",)), ("/v1/admin/allocations", ("hours",)),
            ("/v1/admin/allocations", ("starts_at",)), ("/v1/jobs", ("resources", "nodes")),
            ("/v1/tokens", ("days",)), ("/v1/admin/antennas/be", ("max_active_jobs",)),
            ("/v1/admin/antennas/be/keys", ("keys", 0, "kid"))} <= covered  # fmt: skip
    lax: list[str] = []
    for position in positions:
        for wrong in WRONG_TYPES[position.kind]:
            response = await api.client.request(position.method, position.path, json=position.body(wrong))
            if response.status_code != 422 or not field_errors_at(response, ["body", *position.loc]):
                lax.append(
                    f"{position.method} {position.path} {list(position.loc)} = {wrong!r}: {response.status_code}"
                )
    assert lax == [], "\n".join(lax)


@pytest.mark.parametrize("value", ["2026-11-01T00:00:00Z", "2026-11-01T01:00:00+01:00"])
async def test_timestamps_and_enum_strings_are_still_read_from_json_strings(api: Api, value: str) -> None:
    """Strict JSON types, not strict Python types: an RFC 3339 string is a timestamp, a string an enum value."""
    made = await api.client.post("/v1/admin/projects", json={"id": PROJECT, "title": "strict types"})
    assert made.status_code in (201, 409), made.text
    grant = {"project": PROJECT, "factory": "bravo", "unit": "node_hours", "hours": 2.5, "starts_at": value,
             "ends_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    granted = await api.client.post("/v1/admin/allocations", json=grant)
    assert granted.status_code == 201, granted.text
    assert (granted.json()["unit"], granted.json()["starts_at"]) == ("node_hours", "2026-11-01T00:00:00Z")
