"""Job records from scontrol's ``key=value`` line (22.05) and from squeue/scontrol JSON (all releases).

JSON shapes absorbed: 22.05 (openapi/v0.0.38) writes plain numbers, ``job_state`` as one string and
``exit_code`` as the raw wait() status; 23.02+ (data_parser v0.0.4x) wraps numbers as
``{"set", "infinite", "number"}``, lists ``job_state`` flags and structures ``exit_code``. Some releases
leave ``%j`` in output paths (22.05, 26.05): paths are expanded here, with Slurm's defaults filled in.

Times Slurm projects rather than observed (a pending job's expected start, a running job's end at its
time limit) are dropped: a record says when things happened.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slurm_adapters.base import JobRecord, JobState
from slurm_adapters.convert import (
    expand_output_path,
    from_epoch,
    parse_duration_min,
    parse_exit_code,
    parse_tres,
    split_wait_status,
)

_NULL_TEXT = {"", "(null)", "N/A"}
_NO_VAL32 = 0xFFFFFFFE  # NO_VAL and INFINITE as raw uint32 (22.05 JSON)
_USER_ID = re.compile(r"^(?P<name>[^()]*)\((?P<uid>\d+)\)$")


@dataclass(frozen=True, slots=True)
class CliJob:
    """A record plus what only the adapter needs: the owner's uid (to check output files)."""

    record: JobRecord
    uid: int | None


def text(value: Any) -> str | None:
    """Slurm's unset strings ("", "(null)", "N/A") as None."""
    if value is None:
        return None
    result = str(value).strip()
    return None if result in _NULL_TEXT else result


def number(value: Any) -> int | None:
    """A JSON number: plain (22.05) or ``{"set", "infinite", "number"}`` (23.02+).

    Unset and infinite are None, so are the raw NO_VAL/INFINITE sentinels and negatives.
    """
    if isinstance(value, Mapping):
        if not value.get("set") or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = int(value)
    return None if result < 0 or result >= _NO_VAL32 else result  # -1: INFINITE in some 22.05 fields


def utc_timestamp(value: str | None) -> datetime | None:
    """scontrol's ISO time, printed in UTC because the runner sets TZ=UTC."""
    if value is None or value.strip() in {"", "Unknown", "None", "N/A", "0"}:
        return None
    return datetime.fromisoformat(value.strip()).replace(tzinfo=UTC)


def _output_path(
    pattern: str | None, *, job_id: int, user: str | None, name: str | None, host: str | None, cwd: str | None
) -> str | None:
    if pattern is None:
        return None
    path = expand_output_path(pattern, job_id, user, name, host)
    if not path.startswith("/") and cwd:
        path = f"{cwd.rstrip('/')}/{path}"
    return path


def _observed(
    state: JobState,
    submit: datetime | None,
    start: datetime | None,
    end: datetime | None,
) -> tuple[datetime | None, datetime | None, datetime | None]:
    """Drop projections: no start while pending, no end before the job ended."""
    if state in {JobState.PENDING, JobState.UNKNOWN}:
        start = None
    if not state.is_terminal:
        end = None
    return submit, start, end


def from_key_values(kv: Mapping[str, str]) -> CliJob:
    """One line of ``scontrol show job -o``."""
    job_id = int(kv["JobId"])
    raw_state = kv.get("JobState", "")
    state = JobState.parse(raw_state or None)
    user, uid = _user_and_uid(kv.get("UserId"))
    name = text(kv.get("JobName"))
    host = text(kv.get("BatchHost"))
    cwd = text(kv.get("WorkDir"))
    stdout = _output_path(text(kv.get("StdOut")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    stderr = _output_path(text(kv.get("StdErr")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    exit_code, signal = parse_exit_code(kv.get("ExitCode")) if state.is_terminal else (None, None)
    reason = text(kv.get("Reason"))
    submit, start, end = _observed(
        state,
        utc_timestamp(kv.get("SubmitTime")),
        utc_timestamp(kv.get("StartTime")),
        utc_timestamp(kv.get("EndTime")),
    )
    # 22.05 prints TRES=; 24.11+ splits it into ReqTRES= and AllocTRES=.
    tres = kv.get("AllocTRES", kv.get("TRES")) if state is not JobState.PENDING else None
    record = JobRecord(
        job_id=job_id,
        tag=text(kv.get("Comment")),
        state=state,
        raw_state=raw_state,
        reason=None if reason == "None" else reason,
        exit_code=exit_code,
        signal=signal,
        submit_time=submit,
        start_time=start,
        end_time=end,
        nodes=text(kv.get("NodeList")),
        user=user,
        name=name,
        partition=text(kv.get("Partition")),
        time_limit_min=parse_duration_min(kv.get("TimeLimit")),
        stdout=stdout,
        stderr=stderr or stdout,
        allocated_tres=parse_tres(text(tres)),
    )
    return CliJob(record=record, uid=uid)


def _user_and_uid(value: str | None) -> tuple[str | None, int | None]:
    """``UserId=alice(1001)``."""
    if not value:
        return None, None
    match = _USER_ID.match(value.strip())
    if not match:
        return text(value), None
    return text(match.group("name")), int(match.group("uid"))


def _json_state(value: Any) -> tuple[str, JobState]:
    if isinstance(value, list):
        words = [str(word) for word in value]
        return ",".join(words), JobState.parse(words or None)
    raw = str(value or "")
    return raw, JobState.parse(raw or None)


def _json_exit(value: Any) -> tuple[int | None, int | None]:
    if isinstance(value, Mapping):  # 23.02+: {"status": [...], "return_code": {...}, "signal": {"id": ...}}
        code = number(value.get("return_code"))
        sig = value.get("signal")
        signal = number(sig.get("id")) if isinstance(sig, Mapping) else None
        if code is None and signal is None:
            return None, None
        return code or 0, signal or 0
    return split_wait_status(number(value))  # 22.05: the raw wait() status


def from_json(raw: Mapping[str, Any]) -> CliJob:
    """One entry of a ``jobs`` array from ``squeue --json`` or ``scontrol show job --json``."""
    job_id = int(raw["job_id"])
    raw_state, state = _json_state(raw.get("job_state"))
    user = text(raw.get("user_name"))
    name = text(raw.get("name"))
    host = text(raw.get("batch_host"))
    cwd = text(raw.get("current_working_directory"))
    stdout = _output_path(text(raw.get("standard_output")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    if stdout is None and raw.get("batch_flag") and cwd:
        stdout = f"{cwd.rstrip('/')}/slurm-{job_id}.out"  # sbatch's default, left empty by 22.05
    stderr = _output_path(text(raw.get("standard_error")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    exit_code, signal = _json_exit(raw.get("exit_code")) if state.is_terminal else (None, None)
    reason = text(raw.get("state_reason"))
    submit, start, end = _observed(
        state,
        from_epoch(number(raw.get("submit_time"))),
        from_epoch(number(raw.get("start_time"))),
        from_epoch(number(raw.get("end_time"))),
    )
    tres = text(raw.get("tres_alloc_str")) if state is not JobState.PENDING else None
    record = JobRecord(
        job_id=job_id,
        tag=text(raw.get("comment")),
        state=state,
        raw_state=raw_state,
        reason=None if reason == "None" else reason,
        exit_code=exit_code,
        signal=signal,
        submit_time=submit,
        start_time=start,
        end_time=end,
        nodes=text(raw.get("nodes")),
        user=user,
        name=name,
        partition=text(raw.get("partition")),
        time_limit_min=number(raw.get("time_limit")),
        stdout=stdout,
        stderr=stderr or stdout,
        allocated_tres=parse_tres(tres),
    )
    return CliJob(record=record, uid=number(raw.get("user_id")))


def jobs_from_json(body: Mapping[str, Any]) -> list[CliJob]:
    raw = body.get("jobs")
    if not isinstance(raw, list):
        return []
    return [from_json(job) for job in raw if isinstance(job, Mapping) and "job_id" in job]


def json_errors(body: Mapping[str, Any]) -> list[str]:
    """The texts of a JSON answer's ``errors`` array (``error`` plus ``description``)."""
    messages: list[str] = []
    for entry in body.get("errors") or ():
        if not isinstance(entry, Mapping):
            continue
        parts = [text(entry.get("error")), text(entry.get("description"))]
        message = ": ".join(part for part in parts if part)
        if message:
            messages.append(message)
    return messages
