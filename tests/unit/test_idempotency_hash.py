"""The request fingerprint ignores how the JSON was written, not what it says."""

from __future__ import annotations

import json

from broker.jobs.idempotency import request_hash
from conveyor.spec import JobSpec


def test_the_same_request_written_differently_has_one_hash() -> None:
    body = '{"name": "a", "project": "P1", "command": ["python"], "labels": {"b": "1", "a": "2"}}'
    reordered = '{"labels":{"a":"2","b":"1"},"command":["python"],"project":"P1","name":"a"}'
    first = JobSpec.model_validate_json(body).model_dump(mode="json")
    second = JobSpec.model_validate_json(reordered).model_dump(mode="json")
    assert request_hash(first) == request_hash(second)
    assert len(request_hash(first)) == 64


def test_another_request_has_another_hash() -> None:
    one = json.loads('{"name": "a", "project": "P1", "command": ["python"]}')
    assert request_hash(one) != request_hash({**one, "name": "b"})
