"""The HTTP edge in-process, on SQLite and PostgreSQL: what the broker reads of a request before any route
does (its size, its encoding: plain UTF-8 JSON without duplicate keys), and that its default limits admit the
largest job."""

from __future__ import annotations

import codecs
import gzip
import json

import pytest

from conveyor.spec import MAX_SCRIPT_BYTES
from tests.api.conftest import Api, job_body
from tests.api.test_jobs import problem_of

ROOT = "/scratch/alpha/"


def largest_job() -> dict[str, object]:
    """A job at the spec's bounds: a script of MAX_SCRIPT_BYTES characters of shell with quotes and newlines (which
    JSON escapes), the longest name and working directory, every label at its longest, and some environment."""
    line = 'echo "step $i of a long script" >> "$HOME/log.txt"\n'
    script = "#!/bin/bash\n" + line * MAX_SCRIPT_BYTES
    labels = {f"{'k' * 59}{index:04d}": "v" * 256 for index in range(64)}
    return job_body(
        name="n" * 128,
        command=None,
        script=script[:MAX_SCRIPT_BYTES],
        working_directory=ROOT + "w" * (4096 - len(ROOT)),  # inside the test Factories' roots
        labels=labels,
        environment={f"VARIABLE_{index}": "x" * 1024 for index in range(64)},
    )


def padded(body: dict[str, object], size: int) -> bytes:
    """``body`` as JSON followed by spaces up to ``size`` bytes (still the same JSON document)."""
    encoded = json.dumps({key: value for key, value in body.items() if value is not None}).encode()
    assert len(encoded) <= size
    return encoded + b" " * (size - len(encoded))


async def test_the_default_body_limit_admits_the_largest_job(api: Api) -> None:
    content = json.dumps({key: value for key, value in largest_job().items() if value is not None}).encode()
    assert len(content) > MAX_SCRIPT_BYTES
    response = await api.client.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text[:500]
    assert len(content) <= api.settings.max_body_bytes


async def test_a_body_at_the_limit_is_read_and_one_byte_more_is_a_413(api: Api) -> None:
    limit = api.settings.max_body_bytes
    kind = {"content-type": "application/json"}
    at_limit = await api.client.post("/v1/jobs", content=padded(job_body(), limit), headers=kind)
    assert at_limit.status_code == 201, at_limit.text
    over = await api.client.post("/v1/jobs", content=padded(job_body(name="over"), limit + 1), headers=kind)
    problem = problem_of(over, 413, "payload_too_large")
    assert (problem.model_extra or {})["limit_bytes"] == limit
    assert over.headers["connection"] == "close"
    names = [job["name"] for job in (await api.client.get("/v1/jobs")).json()["items"]]
    assert names == ["train"]


JOB = json.dumps(job_body())
JSON = "application/json"


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (JOB[:-1] + ', "name": "again"}', {}, 400, "malformed_request.duplicate_key"),
        (
            JOB.replace('"time_limit_min": 20', '"time_limit_min": 20, "time_limit_min": 30'),
            {},
            400,
            "malformed_request.duplicate_key",
        ),
        (codecs.BOM_UTF8 + JOB.encode(), {}, 400, "malformed_request.byte_order_mark"),
        (JOB.encode("utf-16"), {}, 400, "malformed_request.not_utf8"),
        (JOB.encode("utf-16-le"), {}, 400, "malformed_request.not_utf8"),
        (JOB.encode("utf-32"), {}, 400, "malformed_request.not_utf8"),
        (JOB.replace('"train"', '"tr\u00e9n"').encode("latin-1"), {}, 400, "malformed_request.not_utf8"),
        (JOB.encode("utf-16"), {"content-type": f"{JSON}; charset=utf-16"}, 415, "unsupported_media_type.charset"),
        (JOB, {"content-type": f"{JSON}; charset=iso-8859-1"}, 415, "unsupported_media_type.charset"),
        (gzip.compress(JOB.encode()), {"content-encoding": "gzip"}, 415, "unsupported_media_type.content_encoding"),
        (JOB, {"content-encoding": "br"}, 415, "unsupported_media_type.content_encoding"),
    ],
    ids=[
        "duplicate-key",
        "nested-duplicate-key",
        "utf8-bom",
        "utf16-bom",
        "utf16le",
        "utf32",
        "latin1-bytes",
        "charset-utf16",
        "charset-latin1",
        "gzip",
        "br-declared",
    ],
)
async def test_defect_06_raw_body_is_plain_utf8_json_without_duplicate_keys(
    api: Api, content: str | bytes, headers: dict[str, str], status: int, code: str
) -> None:
    """A body the JSON parser would read only by guessing (a BOM, another encoding), by ignoring what the request
    declares (its charset or Content-Encoding) or by dropping a value (a duplicate key) is refused: 400 when it is
    malformed, 415 when its declared encoding is not supported. Nothing is stored."""
    response = await api.client.post("/v1/jobs", content=content, headers={"content-type": JSON, **headers})
    problem_of(response, status, code)
    assert (await api.client.get("/v1/jobs")).json()["items"] == []


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (JOB, {"content-type": f"{JSON}; charset=utf-8"}),
        (JOB, {"content-type": f'{JSON}; charset="UTF-8"'}),
        (JOB, {"content-encoding": "identity"}),
        (JOB.replace('"train"', '"tr\\u00e9n \\ud83d\\ude00"'), {}),
        (JOB.replace('"train"', '"trén 😀"').encode(), {}),
    ],
    ids=["charset-utf8", "charset-quoted-upper", "identity", "escaped-non-ascii", "raw-utf8"],
)
async def test_plain_utf8_json_is_accepted_however_it_is_declared(
    api: Api, content: str | bytes, headers: dict[str, str]
) -> None:
    response = await api.client.post("/v1/jobs", content=content, headers={"content-type": JSON, **headers})
    assert response.status_code == 201, response.text


async def test_json_nested_beyond_the_parser_is_a_400_not_a_500(api: Api) -> None:
    depth = 200_000
    response = await api.client.post("/v1/jobs", content="[" * depth + "]" * depth, headers={"content-type": JSON})
    problem_of(response, 400, "malformed_request.nesting")
