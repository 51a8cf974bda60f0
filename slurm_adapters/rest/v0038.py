"""slurmrestd ``openapi/v0.0.38`` (Slurm 22.05).

Wire facts this codec absorbs (measured on 22.05.8 and read from its plugin source):

* the submit body is ``{"job": {...}, "script": "..."}`` and ``environment`` is a required OBJECT
  (HTTP 400 "environment must be set" without it); job options go through sbatch's own option parser;
* ``job_state`` is one string; ``exit_code`` is the raw ``wait()`` status; unset numbers are ``null``;
* ``standard_output`` comes back unexpanded (``%j``) and empty when the job took Slurm's default;
* partitions report ``max_time_limit`` -1 for INFINITE and a ``flags`` list with "default"; some 22.05
  sources write DefMemPerCPU into ``default_time_limit``, but 22.05.8 reports DefaultTime there (measured).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slurm_adapters.base import JobRecord, JobSpec, JobState, NodeInfo, PartitionInfo
from slurm_adapters.convert import (
    expand_output_path,
    from_epoch,
    parse_gres,
    parse_tres,
    split_wait_status,
)
from slurm_adapters.rest.codec import (
    Codec,
    Json,
    default_partition_names,
    gpu_sum,
    gres_request,
    partitions_with_nodes,
    string_list,
    text_or_none,
    used_gpus,
)

_PREFIX = "/slurm/v0.0.38"
_NO_VAL = 0xFFFFFFFE  # Slurm's "not set" and INFINITE, should a raw uint32 ever leak through


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _minutes(value: Any) -> int | None:
    """A time limit in minutes; None for unset, INFINITE (-1) and raw NO_VAL/INFINITE."""
    number = _int(value)
    if number is None or number < 0 or number >= _NO_VAL:
        return None
    return number


def _epoch(value: Any) -> int | None:
    return _int(value)


def _output_path(raw: Json, key: str, job_id: int, user: str | None, name: str | None) -> str | None:
    pattern = text_or_none(raw.get(key))
    if pattern is None:
        return None
    node = text_or_none(raw.get("batch_host"))
    path = expand_output_path(pattern, job_id, user, name, node)
    cwd = text_or_none(raw.get("current_working_directory"))
    if not path.startswith("/") and cwd:
        path = f"{cwd.rstrip('/')}/{path}"
    return path


class V0038(Codec):
    version = "v0.0.38"
    ping_path = f"{_PREFIX}/ping"
    diag_path = f"{_PREFIX}/diag"
    submit_path = f"{_PREFIX}/job/submit"
    jobs_path = f"{_PREFIX}/jobs"
    nodes_path = f"{_PREFIX}/nodes"
    partitions_path = f"{_PREFIX}/partitions"
    # jobs_params stays empty: 22.05 lists every job in slurmctld's memory (SHOW_ALL|SHOW_DETAIL,
    # finished ones included) and has no filter to set.

    def job_path(self, job_id: int) -> str:
        return f"{_PREFIX}/job/{int(job_id)}"

    def render_submit(self, spec: JobSpec, script: str, environment: Mapping[str, str]) -> dict[str, Any]:
        job: dict[str, Any] = {
            "name": spec.name,
            "comment": spec.tag,
            "current_working_directory": spec.working_directory,
            "environment": dict(environment),
            "nodes": spec.nodes,
            "tasks": spec.tasks,
            "cpus_per_task": spec.cpus_per_task,
        }
        optional: dict[str, Any] = {
            "standard_output": spec.stdout,
            "standard_error": spec.stderr,
            "partition": spec.partition,
            "account": spec.account,
            "qos": spec.qos,
            "memory_per_node": spec.memory_mb,
            "gres": gres_request(spec),  # sbatch --gres: per node, typed or not
            "time_limit": spec.time_limit_min,
        }
        job.update({key: value for key, value in optional.items() if value is not None})
        return {"job": job, "script": script}

    def parse_job(self, raw: Json) -> JobRecord:
        job_id = int(raw["job_id"])
        raw_state = str(raw.get("job_state") or "")
        state = JobState.parse(raw_state or None)
        exit_code, signal = (None, None)
        if state.is_terminal:
            exit_code, signal = split_wait_status(_int(raw.get("exit_code")))
        user = text_or_none(raw.get("user_name"))
        name = text_or_none(raw.get("name"))
        stdout = _output_path(raw, "standard_output", job_id, user, name)
        if stdout is None and raw.get("batch_flag"):
            cwd = text_or_none(raw.get("current_working_directory"))
            stdout = f"{cwd.rstrip('/')}/slurm-{job_id}.out" if cwd else None  # sbatch's default
        stderr = _output_path(raw, "standard_error", job_id, user, name) or stdout
        reason = text_or_none(raw.get("state_reason"))
        return JobRecord(
            job_id=job_id,
            tag=text_or_none(raw.get("comment")),
            state=state,
            raw_state=raw_state,
            reason=None if reason == "None" else reason,
            exit_code=exit_code,
            signal=signal,
            submit_time=from_epoch(_epoch(raw.get("submit_time"))),
            start_time=from_epoch(_epoch(raw.get("start_time"))),
            end_time=from_epoch(_epoch(raw.get("end_time"))),
            nodes=text_or_none(raw.get("nodes")),
            user=user,
            name=name,
            partition=text_or_none(raw.get("partition")),
            time_limit_min=_minutes(raw.get("time_limit")),
            stdout=stdout,
            stderr=stderr,
            allocated_tres=parse_tres(text_or_none(raw.get("tres_alloc_str"))),
        )

    def parse_nodes(self, body: Json) -> list[NodeInfo]:
        nodes: list[NodeInfo] = []
        for raw in body.get("nodes") or ():
            if not isinstance(raw, Mapping):
                continue
            flags = [str(flag).upper() for flag in string_list(raw.get("state_flags"))]
            gpus = parse_gres(text_or_none(raw.get("gres")))
            state = "+".join([str(raw.get("state") or "unknown").upper(), *flags])
            nodes.append(
                NodeInfo(
                    name=str(raw.get("name")),
                    state=state,
                    cpus=_int(raw.get("cpus")) or 0,
                    alloc_cpus=_int(raw.get("alloc_cpus")) or 0,
                    memory_mb=_int(raw.get("real_memory")) or 0,
                    partitions=string_list(raw.get("partitions")),
                    gpus=gpus,
                    gpus_used=used_gpus(gpus, parse_gres(text_or_none(raw.get("gres_used")))),
                )
            )
        return nodes

    def parse_partitions(self, body: Json, nodes: Sequence[NodeInfo]) -> list[PartitionInfo]:
        partitions: list[PartitionInfo] = []
        flagged_default = default_partition_names(body)
        for raw in body.get("partitions") or ():
            if not isinstance(raw, Mapping):
                continue
            name = str(raw.get("name"))
            members = partitions_with_nodes(nodes, name)
            partitions.append(
                PartitionInfo(
                    name=name,
                    default=name in flagged_default,
                    state=str(raw.get("state") or "UNKNOWN").upper(),
                    max_time_min=_minutes(raw.get("max_time_limit")),
                    default_time_min=_minutes(raw.get("default_time_limit")),
                    nodes=tuple(node.name for node in members),
                    total_cpus=_int(raw.get("total_cpus")) or 0,
                    total_gpus=gpu_sum(members),
                )
            )
        return partitions

    def release(self, body: Json) -> str | None:
        meta = body.get("meta")
        if not isinstance(meta, Mapping):
            return None
        slurm = meta.get("Slurm")
        return text_or_none(slurm.get("release")) if isinstance(slurm, Mapping) else None
