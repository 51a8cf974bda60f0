"""What every Slurm JSON format writes alike: unset values, word lists, output paths, node states, the
``errors`` array, and how partitions relate to nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from slurm_adapters.convert import expand_output_path, from_epoch, parse_gres, parse_tres
from slurm_adapters.records import JobRecord, NodeInfo, PartitionInfo, SlurmJobState

Json = Mapping[str, Any]
T = TypeVar("T")

_NULL_TEXT = {"", "(null)", "N/A"}
_NO_VAL32 = 0xFFFFFFFE  # NO_VAL and INFINITE as raw uint32, should one leak through (22.05)


def text(value: Any) -> str | None:
    """Slurm's unset strings ("", "(null)", "N/A") as None."""
    if value is None:
        return None
    result = str(value).strip()
    return None if result in _NULL_TEXT else result


def number(value: Any) -> int | None:
    """A JSON number: plain (v0.0.38) or ``{"set", "infinite", "number"}`` (data_parser v0.0.39+).

    Unset and infinite are None, so are the raw NO_VAL/INFINITE sentinels and negatives (-1 is INFINITE in
    some 22.05 fields, such as a partition's ``max_time_limit``).
    """
    if isinstance(value, Mapping):
        if not value.get("set") or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = int(value)
    return None if result < 0 or result >= _NO_VAL32 else result


def int_or_none(value: Any) -> int | None:
    """An int written as a JSON number or as a string of digits (error numbers, job ids)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def words(value: Any) -> tuple[str, ...]:
    """A list of strings, or a comma-separated string, as both appear across versions."""
    if isinstance(value, str):
        return tuple(item for item in (part.strip() for part in value.split(",")) if item)
    if isinstance(value, Sequence):
        return tuple(str(item) for item in value if str(item))
    return ()


def parse_each(body: Json, key: str, parse: Callable[[Json], T], *, named_by: str) -> list[T]:
    """``parse`` applied to every object of the array ``body[key]`` that has a ``named_by`` value."""
    raw = body.get(key)
    if not isinstance(raw, list):
        return []
    return [parse(entry) for entry in raw if isinstance(entry, Mapping) and text(entry.get(named_by)) is not None]


def release_in(meta: Any, slurm_key: str) -> str | None:
    """``meta[slurm_key]["release"]``; the key is "Slurm" in v0.0.38 and "slurm" in data_parser."""
    if not isinstance(meta, Mapping):
        return None
    slurm = meta.get(slurm_key)
    return text(slurm.get("release")) if isinstance(slurm, Mapping) else None


# --- jobs -------------------------------------------------------------------------------------------


def output_path(
    pattern: str | None, *, job_id: int, user: str | None, name: str | None, host: str | None, cwd: str | None
) -> str | None:
    """An output file as the job sees it: Slurm's ``%j``-style patterns expanded, relative to ``cwd``."""
    if pattern is None:
        return None
    path = expand_output_path(pattern, job_id, user, name, host)
    if not path.startswith("/") and cwd:
        path = f"{cwd.rstrip('/')}/{path}"
    return path


def output_files(raw: Json, job_id: int, user: str | None, name: str | None) -> tuple[str | None, str | None]:
    """A job's (stdout, stderr). 22.05 and 26.05's data_parser v0.0.45 leave ``%j`` in them, 22.05 leaves
    ``standard_output`` empty when the job took sbatch's default, an empty ``standard_error`` means stdout."""
    host = text(raw.get("batch_host"))
    cwd = text(raw.get("current_working_directory"))
    stdout = output_path(text(raw.get("standard_output")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    if stdout is None and raw.get("batch_flag") and cwd:
        stdout = f"{cwd.rstrip('/')}/slurm-{job_id}.out"  # sbatch's default
    stderr = output_path(text(raw.get("standard_error")), job_id=job_id, user=user, name=name, host=host, cwd=cwd)
    return stdout, stderr or stdout


def job_record(
    raw: Json, *, raw_state: str, state: SlurmJobState, exit_status: tuple[int | None, int | None]
) -> JobRecord:
    """One job from the keys every format shares; the state and exit code are each format's own."""
    job_id = int(raw["job_id"])
    user = text(raw.get("user_name"))
    name = text(raw.get("name"))
    stdout, stderr = output_files(raw, job_id, user, name)
    reason = text(raw.get("state_reason"))
    exit_code, signal = exit_status if state.is_terminal else (None, None)
    return JobRecord(
        job_id=job_id,
        tag=text(raw.get("comment")),
        state=state,
        raw_state=raw_state,
        reason=None if reason == "None" else reason,
        exit_code=exit_code,
        signal=signal,
        submit_time=from_epoch(number(raw.get("submit_time"))),
        start_time=from_epoch(number(raw.get("start_time"))),
        end_time=from_epoch(number(raw.get("end_time"))),
        nodes=text(raw.get("nodes")),
        user=user,
        name=name,
        partition=text(raw.get("partition")),
        time_limit_min=number(raw.get("time_limit")),
        stdout=stdout,
        stderr=stderr,
        allocated_tres=parse_tres(text(raw.get("tres_alloc_str"))),
    ).observed()


def _accounted_exit_status(raw: Any) -> tuple[int | None, int | None]:
    """slurmdbd's ``exit_code``: ``{"status", "return_code", "signal": {"signal_id" | "id", "name"}}``."""
    if not isinstance(raw, Mapping):
        return None, None
    signal_raw = raw.get("signal")
    signal = None
    if isinstance(signal_raw, Mapping):
        signal = number(signal_raw.get("signal_id", signal_raw.get("id")))
    return number(raw.get("return_code")), signal or 0


def accounted_tres(raw: Any) -> dict[str, str]:
    """slurmdbd's TRES list as the ``tres_alloc_str`` mapping slurmctld gives (``mem`` in MB: "500M")."""
    tres: dict[str, str] = {}
    for entry in raw if isinstance(raw, list) else ():
        if not isinstance(entry, Mapping) or (count := number(entry.get("count"))) is None:
            continue
        kind, name = text(entry.get("type")), text(entry.get("name"))
        if kind is None:
            continue
        key = f"{kind}/{name}" if name else kind
        tres[key] = f"{count}M" if key == "mem" else str(count)
    return tres


def _object(raw: Json, key: str) -> Json:
    value = raw.get(key)
    return value if isinstance(value, Mapping) else {}


def accounted_job(raw: Json) -> JobRecord:
    """One job as slurmdbd keeps it (``sacct --json``, slurmrestd's ``/slurmdb``): nested ``time``,
    ``state``, ``comment`` and ``tres`` objects, alike in dbv0.0.38 and data_parser v0.0.42 but for the
    wrapped numbers and list states that :func:`number` and :func:`words` absorb.

    slurmdbd records the job's comment (its tag) only when the job ends: a pending or running job comes
    back untagged (measured on 22.05.8)."""
    times, state_raw, tres = (_object(raw, key) for key in ("time", "state", "tres"))
    comment = raw.get("comment")
    flags = list(words(state_raw.get("current")))
    state = SlurmJobState.parse(flags or None)
    reason = text(state_raw.get("reason"))
    exit_code, signal = _accounted_exit_status(raw.get("exit_code")) if state.is_terminal else (None, None)
    if state is SlurmJobState.FAILED and not exit_code and not signal:
        # 22.05's dbv0.0.38 writes {"status": "SUCCESS", "return_code": 0} for every job (measured: a job that
        # exited 3 shows 3:0 in sacct's text, 0 in its JSON); a FAILED job's code is then unknown, not 0.
        exit_code, signal = None, None
    nodes = text(raw.get("nodes"))
    return JobRecord(
        job_id=int(raw["job_id"]),
        tag=text(comment.get("job")) if isinstance(comment, Mapping) else text(comment),
        state=state,
        raw_state=",".join(flags),
        reason=None if reason == "None" else reason,
        exit_code=exit_code,
        signal=signal,
        submit_time=from_epoch(number(times.get("submission"))),
        start_time=from_epoch(number(times.get("start"))),
        end_time=from_epoch(number(times.get("end"))),
        nodes=None if nodes == "None assigned" else nodes,
        user=text(raw.get("user")),
        name=text(raw.get("name")),
        partition=text(raw.get("partition")),
        time_limit_min=number(times.get("limit")),
        allocated_tres=accounted_tres(tres.get("allocated")),
        elapsed_s=number(times.get("elapsed")),
    ).observed()


def parse_accounted_jobs(body: Json) -> list[JobRecord]:
    """Every job of slurmdbd's ``jobs`` array, once: a requeued job has a record per run there (the
    ``/slurmdb`` routes return them all), and the last one is the job now, as sacct shows by default."""
    latest = {record.job_id: record for record in parse_each(body, "jobs", accounted_job, named_by="job_id")}
    return list(latest.values())


def controller_uptime_facts(body: Json) -> tuple[datetime | None, int | None]:
    """From a diag answer (slurmrestd ``/diag``, data_parser ``sdiag --json``): since when slurmctld's
    statistics run, which is never before its last start, and its backlog of messages for slurmdbd."""
    stats = body.get("statistics")
    if not isinstance(stats, Mapping):
        return None, None
    return from_epoch(number(stats.get("req_time_start"))), number(stats.get("dbd_agent_queue_size"))


# --- nodes and partitions ---------------------------------------------------------------------------


def node_state(raw: Json) -> str:
    """``IDLE``, ``MIXED+DRAIN``, ...: the base state and its flags, upper case, as on every release.

    v0.0.38 writes a lower-case ``state`` plus a ``state_flags`` list; data_parser one list of upper-case words.
    """
    states = [word.upper() for word in words(raw.get("state")) + words(raw.get("state_flags"))]
    return "+".join(dict.fromkeys(states)) or "UNKNOWN"


def used_gpus(configured: Mapping[str, int], used: Mapping[str, int]) -> dict[str, int]:
    """Drop the ``gpu:0`` that Slurm prints as "used" on nodes without any GPU."""
    return {kind: count for kind, count in used.items() if kind in configured or count}


def parse_node(raw: Json) -> NodeInfo:
    """One node. Every format (and ``sinfo --json`` of 22.05) uses the same keys; only ``state`` differs,
    see :func:`node_state`."""
    gpus = parse_gres(text(raw.get("gres")))
    return NodeInfo(
        name=str(raw["name"]),
        state=node_state(raw),
        cpus=number(raw.get("cpus")) or 0,
        alloc_cpus=number(raw.get("alloc_cpus")) or 0,
        memory_mb=number(raw.get("real_memory")) or 0,
        partitions=words(raw.get("partitions")),
        gpus=gpus,
        gpus_used=used_gpus(gpus, parse_gres(text(raw.get("gres_used")))),
    )


def parse_nodes(body: Json) -> list[NodeInfo]:
    """A ``nodes`` array (slurmrestd's nodes, ``sinfo --json`` on 22.05, ``scontrol show node --json``)."""
    return parse_each(body, "nodes", parse_node, named_by="name")


def partition_info(
    name: str,
    nodes: Sequence[NodeInfo],
    *,
    default: bool | None,
    state: str,
    max_time_min: int | None,
    default_time_min: int | None,
    total_cpus: int | None,
) -> PartitionInfo:
    """A partition whose nodes and GPU totals are taken from the nodes' side, so that no hostlist expression
    such as ``gn[1-4]`` needs expanding. ``total_cpus`` None: the sum over its nodes."""
    members = [node for node in nodes if name in node.partitions]
    gpus: dict[str, int] = {}
    for node in members:
        for gpu_type, count in node.gpus.items():
            gpus[gpu_type] = gpus.get(gpu_type, 0) + count
    return PartitionInfo(
        name=name,
        default=default,
        state=state,
        max_time_min=max_time_min,
        default_time_min=default_time_min,
        nodes=tuple(node.name for node in members),
        total_cpus=sum(node.cpus for node in members) if total_cpus is None else total_cpus,
        total_gpus=gpus,
    )


def flagged_default(raw: Json) -> bool:
    """Whether a partition's ``flags`` say DEFAULT (v0.0.38 writes "default", v0.0.43+ "DEFAULT")."""
    return "DEFAULT" in {flag.upper() for flag in words(raw.get("flags"))}


def default_partition_names(body: Json) -> set[str]:
    """The partitions an answer flags as the default (none in v0.0.40-42, which have no such flag)."""
    return {
        str(raw.get("name"))
        for raw in body.get("partitions") or ()
        if isinstance(raw, Mapping) and flagged_default(raw)
    }


# --- errors -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlurmMessage:
    """One entry of an answer's ``errors`` array (or of a v0.0.42 kill ``status`` entry)."""

    number: int | None
    error: str
    description: str = ""

    @property
    def text(self) -> str:
        """Slurm's own words: the short error, with the longer description when it adds something."""
        if self.error and self.description and self.description not in self.error:
            return f"{self.error} ({self.description})"
        return self.error or self.description or f"Slurm error {self.number}"


def errors_of(body: Json) -> list[SlurmMessage]:
    """The answer's ``errors`` entries. The number's key varies by release and endpoint."""
    raw = body.get("errors")
    if not isinstance(raw, list):
        return []
    messages: list[SlurmMessage] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        number = next(
            (n for key in ("error_number", "error_code", "errno") if (n := int_or_none(entry.get(key))) is not None),
            None,
        )
        error = str(entry.get("error") or "").strip()
        description = str(entry.get("description") or "").strip()
        if number in (None, 0) and not error and not description:
            continue
        messages.append(SlurmMessage(number=number, error=error, description=description))
    return messages
