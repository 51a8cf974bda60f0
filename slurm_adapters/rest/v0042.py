"""slurmrestd ``data_parser/v0.0.42`` (served by Slurm 24.11 and 26.05).

Wire facts this codec absorbs (measured on 24.11.5 and 26.05.5):

* paths end in "/" except ``job/submit`` and ``job/{id}``; the script goes inside ``job``;
* ``environment`` is a LIST of ``K=V``; GPUs are requested as ``tres_per_node`` "gres/gpu[:type]:N";
  a node count is ``minimum_nodes``/``maximum_nodes`` ("nodes" is a range string, easy to get wrong);
* numbers are wrapped as ``{"set", "infinite", "number"}``; ``job_state`` is a list of flags (a
  COMPLETING flag wins, as in scontrol and in 22.05's one-string state);
  ``exit_code`` is ``{"status", "return_code", "signal": {"id", "name"}}``;
* ``GET jobs/`` lists finished jobs still in slurmctld's memory without any flag (checked on both);
* partitions carry no "default" flag in v0.0.42 (26.05's v0.0.45 does, see ``partition_flags_path``);
* a cancel answers 200 and reports per-job failures in ``status[]``, not in ``errors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slurm_adapters.base import JobRecord, JobSpec, JobState, NodeInfo, PartitionInfo
from slurm_adapters.convert import from_epoch, parse_gres, parse_tres
from slurm_adapters.rest.codec import (
    Codec,
    Json,
    SlurmMessage,
    gpu_sum,
    gres_request,
    partitions_with_nodes,
    string_list,
    text_or_none,
    used_gpus,
)

_PREFIX = "/slurm/v0.0.42"


def number(value: Any) -> int | None:
    """A ``{"set", "infinite", "number"}`` struct (or a bare number) to an int; None if unset/infinite."""
    if isinstance(value, Mapping):
        if value.get("infinite") or not value.get("set"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _mapping(raw: Json, key: str) -> Json:
    value = raw.get(key)
    return value if isinstance(value, Mapping) else {}


def wrapped(value: int) -> dict[str, Any]:
    """An int in v0.0.42's no-value struct, as its request schema declares."""
    return {"set": True, "infinite": False, "number": value}


def _exit_status(raw: Any) -> tuple[int | None, int | None]:
    if not isinstance(raw, Mapping):
        return None, None
    code = number(raw.get("return_code"))
    signal_raw = raw.get("signal")
    signal = number(signal_raw.get("id")) if isinstance(signal_raw, Mapping) else None
    if code is None and signal is None:
        return None, None
    return code or 0, signal or 0


class V0042(Codec):
    version = "v0.0.42"
    ping_path = f"{_PREFIX}/ping/"
    diag_path = f"{_PREFIX}/diag/"
    submit_path = f"{_PREFIX}/job/submit"
    jobs_path = f"{_PREFIX}/jobs/"
    nodes_path = f"{_PREFIX}/nodes/"
    partitions_path = f"{_PREFIX}/partitions/"
    # jobs_params stays empty: without flags/update_time slurmctld returns every job in memory,
    # finished ones included (update_time would only turn the answer into "nothing changed").
    # v0.0.42 cannot tell the default partition; 26.05 also serves v0.0.45, whose partitions have
    # flags ["DEFAULT", ...]. 24.11 answers 404 there and the default stays unknown.
    partition_flags_path = "/slurm/v0.0.45/partitions/"

    def job_path(self, job_id: int) -> str:
        return f"{_PREFIX}/job/{int(job_id)}"

    def render_submit(self, spec: JobSpec, script: str, environment: Mapping[str, str]) -> dict[str, Any]:
        job: dict[str, Any] = {
            "name": spec.name,
            "comment": spec.tag,
            "script": script,
            "current_working_directory": spec.working_directory,
            "environment": [f"{key}={value}" for key, value in environment.items()],
            "minimum_nodes": spec.nodes,
            "maximum_nodes": spec.nodes,
            "tasks": spec.tasks,
            "cpus_per_task": spec.cpus_per_task,
        }
        gres = gres_request(spec)
        optional: dict[str, Any] = {
            "standard_output": spec.stdout,
            "standard_error": spec.stderr,
            "partition": spec.partition,
            "account": spec.account,
            "qos": spec.qos,
            "memory_per_node": None if spec.memory_mb is None else wrapped(spec.memory_mb),
            "tres_per_node": None if gres is None else f"gres/{gres}",
            "time_limit": None if spec.time_limit_min is None else wrapped(spec.time_limit_min),
        }
        job.update({key: value for key, value in optional.items() if value is not None})
        return {"job": job}

    def parse_job(self, raw: Json) -> JobRecord:
        job_id = int(raw["job_id"])
        flags = [str(flag) for flag in string_list(raw.get("job_state"))]
        # ["CANCELLED", "COMPLETING"]: as scontrol and 22.05 say, the job is still COMPLETING; its exit
        # code is not final until the flag clears (measured: 0:0 while completing, then 0:15).
        state = JobState.parse(flags or None)
        exit_code, signal = _exit_status(raw.get("exit_code")) if state.is_terminal else (None, None)
        stdout = text_or_none(raw.get("standard_output"))
        reason = text_or_none(raw.get("state_reason"))
        return JobRecord(
            job_id=job_id,
            tag=text_or_none(raw.get("comment")),
            state=state,
            raw_state=",".join(flags),
            reason=None if reason == "None" else reason,
            exit_code=exit_code,
            signal=signal,
            submit_time=from_epoch(number(raw.get("submit_time"))),
            start_time=from_epoch(number(raw.get("start_time"))),
            end_time=from_epoch(number(raw.get("end_time"))),
            nodes=text_or_none(raw.get("nodes")),
            user=text_or_none(raw.get("user_name")),
            name=text_or_none(raw.get("name")),
            partition=text_or_none(raw.get("partition")),
            time_limit_min=number(raw.get("time_limit")),
            stdout=stdout,  # already expanded by slurmctld on these releases
            stderr=text_or_none(raw.get("standard_error")) or stdout,
            allocated_tres=parse_tres(text_or_none(raw.get("tres_alloc_str"))),
        )

    def parse_nodes(self, body: Json) -> list[NodeInfo]:
        nodes: list[NodeInfo] = []
        for raw in body.get("nodes") or ():
            if not isinstance(raw, Mapping):
                continue
            gpus = parse_gres(text_or_none(raw.get("gres")))
            used = parse_gres(text_or_none(raw.get("gres_used")))
            nodes.append(
                NodeInfo(
                    name=str(raw.get("name")),
                    state="+".join(string_list(raw.get("state"))) or "UNKNOWN",
                    cpus=number(raw.get("cpus")) or 0,
                    alloc_cpus=number(raw.get("alloc_cpus")) or 0,
                    memory_mb=number(raw.get("real_memory")) or 0,
                    partitions=string_list(raw.get("partitions")),
                    gpus=gpus,
                    gpus_used=used_gpus(gpus, used),
                )
            )
        return nodes

    def parse_partitions(self, body: Json, nodes: Sequence[NodeInfo]) -> list[PartitionInfo]:
        partitions: list[PartitionInfo] = []
        for raw in body.get("partitions") or ():
            if not isinstance(raw, Mapping):
                continue
            name = str(raw.get("name"))
            members = partitions_with_nodes(nodes, name)
            maximums, defaults = _mapping(raw, "maximums"), _mapping(raw, "defaults")
            cpus, part = _mapping(raw, "cpus"), _mapping(raw, "partition")
            partitions.append(
                PartitionInfo(
                    name=name,
                    default=None,  # v0.0.42 cannot tell, see the module doc
                    state="+".join(string_list(part.get("state"))) or "UNKNOWN",
                    max_time_min=number(maximums.get("time")),
                    default_time_min=number(defaults.get("time")),
                    nodes=tuple(node.name for node in members),
                    total_cpus=number(cpus.get("total")) or 0,
                    total_gpus=gpu_sum(members),
                )
            )
        return partitions

    def release(self, body: Json) -> str | None:
        meta = body.get("meta")
        if not isinstance(meta, Mapping):
            return None
        slurm = meta.get("slurm")
        return text_or_none(slurm.get("release")) if isinstance(slurm, Mapping) else None

    def signal_errors(self, body: Json) -> list[SlurmMessage]:
        messages: list[SlurmMessage] = []
        for entry in body.get("status") or ():
            error = entry.get("error") if isinstance(entry, Mapping) else None
            if not isinstance(error, Mapping):
                continue
            code = error.get("code")
            if isinstance(code, int) and not isinstance(code, bool) and code != 0:
                messages.append(
                    SlurmMessage(
                        number=code,
                        error=str(error.get("string") or ""),
                        description=str(error.get("message") or ""),
                    )
                )
        return messages
