"""Every value a client can send is bounded, and a value out of bounds is a 422, never a 500.

The OpenAPI document is the contract: a walk over it finds every request body, parameter and component
reachable from them, and fails on any integer or number without both bounds (integers within int64), any
string without a maxLength (or an enum), any array without maxItems, any map without maxProperties and bounded
keys, any object open to unknown keys, and any value of no type at all. The concrete overflows that once
answered 500 run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.main import create_app
from broker.settings import Settings
from conveyor.models import Job
from tests.api.conftest import TOKEN, Api, job_body
from tests.api.test_antennas import AntennaKit
from tests.api.test_jobs import problem_of

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UNBOUNDED_BY_DESIGN: dict[str, str] = {
    "Report.result": "a Factory agent's Slurm data (records, cluster info): bounded by the body limit, then read "
    "field by field by slurm_adapters.codec, which refuses any value it does not expect",
    "Report.error": "a Factory agent's typed error: bounded by the body limit, then read by codec.error_from_json, "
    "which takes only a known type, a message and a list of strings",
    "Listing.jobs[]": "a Factory agent's job records: at most MAX_LISTED, bounded by the (report) body limit, each "
    "read by codec.record_from_json when the listing is applied, which refuses any value it does not expect",
    "SiteState.health": "a Factory agent's Slurm health: bounded by the (report) body limit, read by "
    "codec.health_from_json before it is stored",
    "SiteState.error": "the error of a Factory agent's health call: bounded by the (report) body limit, read by "
    "codec.error_from_json before it is stored",
    "SiteState.cluster_info": "a Factory agent's cluster information: bounded by the (report) body limit, read by "
    "codec.cluster_info_from_json before it is stored",
}
"""Places the walk may find unbounded, each with its reason."""


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document (it depends on the code only, so any settings build it)."""
    settings = Settings(dev_mode=True, dev_token=TOKEN, database_url="sqlite+aiosqlite:///unused.db", run_loops=False)
    return create_app(settings).openapi()


def request_schemas(document: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, schema) of every parameter and request body of every operation in the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                yield f"{method.upper()} {path} {parameter['in']} {parameter['name']}", parameter["schema"]
            for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
                yield f"{method.upper()} {path} body ({media_type})", content["schema"]


@dataclass
class BoundsWalk:
    """A walk over request schemas that notes every unbounded value, following ``$ref`` into components."""

    components: Mapping[str, Any]
    unbounded: list[str] = field(default_factory=list)
    visited: set[str] = field(default_factory=set)

    def check(self, where: str, schema: Mapping[str, Any], stack: tuple[str, ...] = ()) -> None:
        if "$ref" in schema:
            self._component(where, schema["$ref"].rsplit("/", 1)[-1], stack)
            return
        branches = [*schema.get("anyOf", []), *schema.get("oneOf", []), *schema.get("allOf", [])]
        for branch in branches:
            self.check(where, branch, stack)
        if "enum" in schema or "const" in schema or (branches and "type" not in schema):
            return
        kinds = schema.get("type")
        if kinds is None:
            self.unbounded.append(f"{where}: no type (any JSON value)")
        for kind in kinds if isinstance(kinds, list) else [kinds] if kinds else []:
            self._typed(where, kind, schema, stack)

    def _component(self, where: str, name: str, stack: tuple[str, ...]) -> None:
        if name in stack:
            self.unbounded.append(f"{where}: {name} contains itself (unbounded nesting)")
        elif name not in self.visited:
            self.visited.add(name)
            self.check(name, self.components[name], (*stack, name))

    def _typed(self, where: str, kind: str, schema: Mapping[str, Any], stack: tuple[str, ...]) -> None:
        if kind in ("integer", "number"):
            self._number(where, kind, schema)
        elif kind == "string" and "maxLength" not in schema:
            self.unbounded.append(f"{where}: a string without maxLength")
        elif kind == "array":
            if "maxItems" not in schema:
                self.unbounded.append(f"{where}: an array without maxItems")
            for index, item in enumerate(schema.get("prefixItems", [])):
                self.check(f"{where}[{index}]", item, stack)
            if isinstance(schema.get("items"), Mapping):
                self.check(f"{where}[]", schema["items"], stack)
        elif kind == "object":
            self._object(where, schema, stack)

    def _number(self, where: str, kind: str, schema: Mapping[str, Any]) -> None:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is None or high is None:
            self.unbounded.append(f"{where}: an {kind} without a minimum and a maximum")
        elif kind == "integer" and not INT64_MIN <= low <= high <= INT64_MAX:
            self.unbounded.append(f"{where}: integer bounds [{low}, {high}] outside int64")

    def _object(self, where: str, schema: Mapping[str, Any], stack: tuple[str, ...]) -> None:
        for name, prop in schema.get("properties", {}).items():
            self.check(f"{where}.{name}", prop, stack)
        extra = schema.get("additionalProperties")
        patterns = schema.get("patternProperties", {})
        if extra is False:
            return  # a fixed set of named properties
        if extra is True or (extra is None and not patterns):
            self.unbounded.append(f"{where}: an object open to any other key and value")
            return
        if "maxProperties" not in schema:
            self.unbounded.append(f"{where}: a map without maxProperties")
        if "maxLength" not in schema.get("propertyNames", {}):
            self.unbounded.append(f"{where}: a map whose keys have no maxLength")
        for value in [*patterns.values(), *([extra] if isinstance(extra, Mapping) else [])]:
            self.check(f"{where}{{}}", value, stack)


def test_defect_04_every_value_a_request_can_carry_is_bounded_in_the_openapi_document() -> None:
    document = openapi_document()
    walk = BoundsWalk(document["components"]["schemas"])
    places = list(request_schemas(document))
    for where, schema in places:
        walk.check(where, schema)
    # The walk really went everywhere: every parameter, and every component a request body names.
    assert {"JobSpec", "Resources", "Placement", "AllocationRequest", "AntennaRequest", "AntennaUpdate",
            "UserRequest", "TokenRequest", "SiteAccountRequest"} <= walk.visited  # fmt: skip
    assert any(where.endswith("query after") for where, _ in places)
    unexpected = [found for found in walk.unbounded if found.split(":", 1)[0] not in UNBOUNDED_BY_DESIGN]
    assert unexpected == [], "\n".join(unexpected)


def test_the_bounds_walk_finds_what_is_unbounded() -> None:
    """The walk itself: each kind of unbounded value is noted, and a bounded one is not."""
    components = {
        "Open": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
        "Tree": {"type": "object", "additionalProperties": False, "properties": {"kids": {
            "type": "array", "maxItems": 2, "items": {"$ref": "#/components/schemas/Tree"}}}},
        "Fine": {"type": "object", "additionalProperties": False, "properties": {
            "s": {"type": "string", "maxLength": 3}, "e": {"type": "string", "enum": ["a"]},
            "m": {"type": "object", "maxProperties": 2, "propertyNames": {"maxLength": 3},
                  "additionalProperties": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}}}},
    }  # fmt: skip
    walk = BoundsWalk(components)
    for name in components:
        walk.check("test", {"$ref": f"#/components/schemas/{name}"})
    walk.check("big", {"type": "integer", "minimum": 0, "maximum": 2**64})
    walk.check("text", {"type": "string"})
    walk.check("map", {"type": "object", "additionalProperties": {"type": "string", "maxLength": 1}})
    walk.check("any", {})
    assert sorted(walk.unbounded) == sorted([
        "Open.n: an integer without a minimum and a maximum",
        "Open: an object open to any other key and value",
        "Tree.kids[]: Tree contains itself (unbounded nesting)",
        "big: integer bounds [0, 18446744073709551616] outside int64",
        "text: a string without maxLength",
        "map: a map without maxProperties",
        "map: a map whose keys have no maxLength",
        "any: no type (any JSON value)",
    ])  # fmt: skip


@pytest.mark.parametrize("after", [2**63, 2**64, 10**30])
async def test_defect_04_an_events_cursor_beyond_int64_is_422(api: Api, after: int) -> None:
    created = await api.client.post("/v1/jobs", json=job_body())
    assert created.status_code == 201, created.text
    job = Job.model_validate(created.json())
    problem_of(await api.client.get(f"/v1/jobs/{job.id}/events", params={"after": after}), 422, "validation_error")
    largest = await api.client.get(f"/v1/jobs/{job.id}/events", params={"after": INT64_MAX})
    assert largest.status_code == 200, largest.text
    assert largest.json()["items"] == []


@pytest.mark.parametrize("quota", [2**31, 2**63, 10**30])
async def test_defect_04_an_antenna_quota_beyond_its_column_is_422(api: Api, quota: int) -> None:
    kit = AntennaKit("lv")
    body = {"id": kit.id, "country": "LV", "title": "Antenna Latvia", "factories": ["alpha"],
            "jwks": kit.public_jwks()}  # fmt: skip
    registered = await api.client.post("/v1/admin/antennas", json=body)
    assert registered.status_code == 201, registered.text
    patch = await api.client.patch(f"/v1/admin/antennas/{kit.id}", json={"max_active_jobs": quota})
    problem_of(patch, 422, "validation_error")
    problem_of(await api.client.post("/v1/admin/antennas", json={**body, "id": "lt", "max_active_jobs": quota}), 422,
               "validation_error")  # fmt: skip
    unchanged = await api.client.get(f"/v1/antennas/{kit.id}")
    assert unchanged.json()["max_active_jobs"] is None
