"""Reading a job's output by byte range (``GET /v1/jobs/{id}/output?offset=``): a JobOutputChunk with the bytes
as base64; without ``offset`` the answer is the tail (JobOutput) exactly as before; a bad range is a 422 problem
naming the field; the 409 / 503 rules are the tail's. On SQLite and PostgreSQL; the Factory is the FakeAdapter."""

from __future__ import annotations

import base64

import httpx

from conveyor.client import AsyncClient
from conveyor.models import JobOutput, JobOutputChunk
from conveyor.spec import JobState
from slurm_adapters.errors import ClusterUnavailable, JobNotFound
from tests.api.conftest import TOKEN, Api
from tests.api.test_jobs import place_on, problem_of, submit

TEXT = "epoch 1\nepoch 2\n\u00e9t\u00e9\n"  # 16 ASCII bytes, then multi-byte UTF-8 a chunk may cut in two
DATA = TEXT.encode()


async def _placed(api: Api) -> str:
    job = await submit(api.client)
    await place_on(api, job.id, "alpha", "4242", JobState.RUNNING)
    api.adapter("alpha").outputs[(4242, "stdout")] = TEXT
    return job.id


async def test_chunks_from_offsets_join_to_the_streams_bytes(api: Api) -> None:
    job_id = await _placed(api)
    pieces, offset = [], 0
    while True:
        response = await api.client.get(f"/v1/jobs/{job_id}/output", params={"offset": offset, "max_bytes": 7})
        assert response.status_code == 200, response.text
        chunk = JobOutputChunk.model_validate(response.json())
        assert (chunk.job_id, chunk.stream, chunk.offset, chunk.size) == (job_id, "stdout", offset, len(DATA))
        assert 0 < len(chunk.data) <= 7
        assert base64.b64decode(response.json()["data_base64"]) == chunk.data
        pieces.append(chunk.data)
        offset += len(chunk.data)
        assert chunk.eof is (offset == len(DATA))
        if chunk.eof:
            break
    assert b"".join(pieces) == DATA
    past = JobOutputChunk.model_validate(
        (await api.client.get(f"/v1/jobs/{job_id}/output", params={"offset": len(DATA) + 100})).json()
    )
    assert (past.data, past.offset, past.size, past.eof) == (b"", len(DATA) + 100, len(DATA), True)


async def test_without_offset_the_answer_is_the_tail_as_before(api: Api) -> None:
    job_id = await _placed(api)
    body = (await api.client.get(f"/v1/jobs/{job_id}/output", params={"max_bytes": 8})).json()
    assert set(body) == {"job_id", "stream", "content", "truncated", "size_bytes"}
    tail = JobOutput.model_validate(body)
    assert (tail.content, tail.truncated) == (DATA[-8:].decode(), True)


async def test_a_bad_range_is_a_422_naming_the_field(api: Api) -> None:
    job_id = await _placed(api)
    calls_before = api.adapter("alpha").output_calls
    for params, field in (
        ({"offset": -1}, "offset"),
        ({"offset": "ten"}, "offset"),
        ({"offset": 2**53}, "offset"),
        ({"offset": 0, "max_bytes": 0}, "max_bytes"),
        ({"offset": 0, "max_bytes": 1024 * 1024 + 1}, "max_bytes"),
    ):
        problem = problem_of(await api.client.get(f"/v1/jobs/{job_id}/output", params=params), 422, "validation_error")
        assert problem.errors is not None
        assert [error.loc for error in problem.errors] == [["query", field]], problem.errors
    assert api.adapter("alpha").output_calls == calls_before  # refused before the Factory was asked


async def test_a_ranged_read_answers_409_and_503_as_the_tail_does(api: Api) -> None:
    waiting = await submit(api.client)
    problem_of(
        await api.client.get(f"/v1/jobs/{waiting.id}/output", params={"offset": 0}),
        409,
        "output_unavailable.not_submitted",
    )
    job_id = await _placed(api)
    adapter = api.adapter("alpha")
    adapter.output_error = JobNotFound("job 4242 is not known to slurmctld", cluster="alpha")
    gone = await api.client.get(f"/v1/jobs/{job_id}/output", params={"offset": 5})
    problem_of(gone, 409, "output_unavailable.gone")
    assert "retry-after" not in gone.headers
    adapter.output_error = ClusterUnavailable("slurmctld did not answer", cluster="alpha")
    unreachable = await api.client.get(f"/v1/jobs/{job_id}/output", params={"offset": 5})
    problem_of(unreachable, 503, "unavailable")
    assert "retry-after" in unreachable.headers


async def test_the_sdk_reads_chunks(api: Api) -> None:
    job_id = await _placed(api)
    transport = httpx.ASGITransport(app=api.app)
    async with AsyncClient("http://conveyor.test", token=TOKEN, transport=transport) as sdk:
        remote = await sdk.job(job_id)
        first = await remote.output_chunk(0, max_bytes=10)
        rest = await remote.output_chunk(first.offset + len(first.data))
    assert (first.data, first.eof) == (DATA[:10], False)
    assert (rest.data, rest.eof) == (DATA[10:], True)
