"""Job records from scontrol's ``key=value`` line (22.05) and from squeue/scontrol JSON (all releases).

The JSON is the release's record format (:mod:`slurm_adapters.formats`: openapi/v0.0.38 on 22.05,
data_parser v0.0.4x from 23.02), read by the same parser as slurmrestd's answers; only the owner's uid
is taken here on top.

Times Slurm projects rather than observed are dropped here as in every adapter (:meth:`JobRecord.observed`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slurm_adapters.convert import parse_duration_min, parse_exit_code, parse_tres
from slurm_adapters.formats import RecordFormat
from slurm_adapters.formats.common import errors_of, number, output_path, parse_each, text
from slurm_adapters.records import JobRecord, SlurmJobState

_USER_ID = re.compile(r"^(?P<name>[^()]*)\((?P<uid>\d+)\)$")


@dataclass(frozen=True, slots=True)
class CliJob:
    """A record plus what only the adapter needs: the owner's uid (to check output files)."""

    record: JobRecord
    uid: int | None


def utc_timestamp(value: str | None) -> datetime | None:
    """scontrol's ISO time, printed in UTC because the runner sets TZ=UTC."""
    if value is None or value.strip() in {"", "Unknown", "None", "N/A", "0"}:
        return None
    return datetime.fromisoformat(value.strip()).replace(tzinfo=UTC)


def from_key_values(kv: Mapping[str, str]) -> CliJob:
    """One line of ``scontrol show job -o``."""
    job_id = int(kv["JobId"])
    raw_state = kv.get("JobState", "")
    state = SlurmJobState.parse(raw_state or None)
    user, uid = _user_and_uid(kv.get("UserId"))
    name = text(kv.get("JobName"))
    host = text(kv.get("BatchHost"))
    cwd = text(kv.get("WorkDir"))
    stdout = output_path(text(kv.get("StdOut")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    stderr = output_path(text(kv.get("StdErr")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    exit_code, signal = parse_exit_code(kv.get("ExitCode")) if state.is_terminal else (None, None)
    reason = text(kv.get("Reason"))
    record = JobRecord(
        job_id=job_id,
        tag=text(kv.get("Comment")),
        state=state,
        raw_state=raw_state,
        reason=None if reason == "None" else reason,
        exit_code=exit_code,
        signal=signal,
        submit_time=utc_timestamp(kv.get("SubmitTime")),
        start_time=utc_timestamp(kv.get("StartTime")),
        end_time=utc_timestamp(kv.get("EndTime")),
        nodes=text(kv.get("NodeList")),
        user=user,
        name=name,
        partition=text(kv.get("Partition")),
        time_limit_min=parse_duration_min(kv.get("TimeLimit")),
        stdout=stdout,
        stderr=stderr or stdout,
        # 22.05 prints TRES=; 24.11+ splits it into ReqTRES= and AllocTRES=.
        allocated_tres=parse_tres(text(kv.get("AllocTRES", kv.get("TRES")))),
    )
    return CliJob(record=record.observed(), uid=uid)


def _user_and_uid(value: str | None) -> tuple[str | None, int | None]:
    """``UserId=alice(1001)``."""
    if not value:
        return None, None
    match = _USER_ID.match(value.strip())
    if not match:
        return text(value), None
    return text(match.group("name")), int(match.group("uid"))


def jobs_from_json(body: Mapping[str, Any], fmt: RecordFormat) -> list[CliJob]:
    """The ``jobs`` of ``squeue --json`` or ``scontrol show job --json``, written in ``fmt``."""

    def job(raw: Mapping[str, Any]) -> CliJob:
        return CliJob(record=fmt.parse_job(raw), uid=number(raw.get("user_id")))

    return parse_each(body, "jobs", job, named_by="job_id")


def json_errors(body: Mapping[str, Any]) -> list[str]:
    """The texts of a JSON answer's ``errors`` array (``error: description``)."""
    messages: list[str] = []
    for entry in errors_of(body):
        message = ": ".join(part for part in (text(entry.error), text(entry.description)) if part)
        if message:
            messages.append(message)
    return messages
