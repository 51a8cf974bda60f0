"""``/v1/jobs``: submit (or dry-run), read, list, cancel, events, output. Logic lives in broker.jobs.service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from app.deps import JobServiceDep, Reader, Submitter, client_address
from app.problems import BODY_UNREADABLE
from broker.jobs.idempotency import MAX_KEY_LENGTH
from broker.jobs.service import MAX_OUTPUT_BYTES, MAX_OUTPUT_OFFSET
from conveyor.models import (
    DryRun,
    EventList,
    EventQuery,
    Job,
    JobList,
    JobOutput,
    JobOutputChunk,
    JobQuery,
    OutputStream,
)
from conveyor.problems import Problem
from conveyor.spec import JobSpec

router = APIRouter(tags=["jobs"])
JobIdPath = Annotated[str, Path(description="The job's id, as returned on submit (job_...).", max_length=64)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job (or not yours: the same answer)", "model": Problem}
}


@router.post(
    "/jobs",
    status_code=201,
    response_model=None,
    summary="Submit a job (or dry-run it)",
    responses={
        201: {"description": "Accepted and durably stored (state queued); Location names it", "model": Job},
        200: {
            "description": "dry_run=true: where the job would go and what Slurm would receive (a DryRun); "
            "or an Idempotency-Key replay of an earlier identical request (that Job)",
            "model": Job | DryRun,
        },
        409: {"description": "The Idempotency-Key was already used with another body", "model": Problem},
        422: {"description": "Invalid spec, or no Factory can ever run it", "model": Problem},
        **BODY_UNREADABLE,
    },
)
async def submit_job(  # noqa: PLR0917 - body, headers, query and dependencies
    spec: JobSpec,
    request: Request,
    caller: Submitter,
    service: JobServiceDep,
    dry_run: Annotated[bool, Query(description="Place and render only: nothing is stored or submitted.")] = False,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_KEY_LENGTH,
            description="Makes retries safe: the same key and body return the same job (200), another body "
            "with the same key is refused (409). Scoped to the caller.",
        ),
    ] = None,
) -> JSONResponse:
    """The answer is sent only after the job and its first event are committed: a 201 job is readable at once.
    The request never waits on Slurm; the dispatcher submits the job."""
    if dry_run:
        result = await service.dry_run(caller, spec)
        return JSONResponse(result.model_dump(mode="json"))
    job, created = await service.submit(caller, spec, idempotency_key, source=client_address(request))
    return JSONResponse(
        job.model_dump(mode="json"), status_code=201 if created else 200, headers={"Location": job.links.self}
    )


@router.get("/jobs", summary="List your jobs, newest first")
async def list_jobs(query: Annotated[JobQuery, Query()], caller: Reader, service: JobServiceDep) -> JobList:
    return await service.list(caller, query)


@router.get("/jobs/{job_id}", summary="Read a job", responses=_NOT_FOUND)
async def get_job(job_id: JobIdPath, caller: Reader, service: JobServiceDep) -> Job:
    """Served from the broker's database, never a live Slurm call."""
    return await service.get(caller, job_id)


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    summary="Request cancellation",
    responses={**_NOT_FOUND, 409: {"description": "The job already ended", "model": Problem}},
)
async def cancel_job(job_id: JobIdPath, request: Request, caller: Submitter, service: JobServiceDep) -> Job:
    """Records the intent and returns; the broker cancels the job in Slurm. Asking twice is harmless."""
    return await service.request_cancel(caller, job_id, source=client_address(request))


@router.get("/jobs/{job_id}/events", summary="A job's events, oldest first", responses=_NOT_FOUND)
async def job_events(
    job_id: JobIdPath, query: Annotated[EventQuery, Query()], caller: Reader, service: JobServiceDep
) -> EventList:
    return await service.events(caller, job_id, query)


@router.get(
    "/jobs/{job_id}/output",
    summary="The tail of a job's stdout or stderr, or with offset, its bytes from there",
    responses={
        200: {
            "description": "Without offset, the tail (JobOutput); with offset, the bytes from there (JobOutputChunk)"
        },
        **_NOT_FOUND,
        409: {
            "description": "No output, and retrying at once will not help: not at Slurm yet, pending, no longer known "
            "to Slurm (output_unavailable.gone), or the Factory's files are out of reach",
            "model": Problem,
        },
        503: {"description": "The Factory could not be reached; retry after Retry-After", "model": Problem},
    },
)
async def job_output(
    job_id: JobIdPath,
    caller: Reader,
    service: JobServiceDep,
    *,
    stream: Annotated[OutputStream, Query(description="Which stream.")] = "stdout",
    max_bytes: Annotated[
        int, Query(ge=1, le=MAX_OUTPUT_BYTES, description="At most this many bytes (the last ones without offset).")
    ] = 65536,
    offset: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_OUTPUT_OFFSET,
            description="Read from this byte on and answer a JobOutputChunk (base64 data, the stream's size, eof); "
            "without it, the tail as a JobOutput.",
        ),
    ] = None,
) -> JobOutput | JobOutputChunk:
    """Read from the Factory when asked (the broker does not store output); bounded by a deadline."""
    if offset is None:
        return await service.output(caller, job_id, stream, max_bytes)
    return await service.output_chunk(caller, job_id, stream, offset, max_bytes)
