"""Parsers for the text formats Slurm uses across its tools and releases (times, exit codes, GRES)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

_UNLIMITED = {"UNLIMITED", "INFINITE", "PARTITION_LIMIT", "NONE", ""}
_GRES_ITEM = re.compile(r"^gpu(?::(?P<type>[^:(]+))?:(?P<count>\d+)")


def parse_duration_min(text: str | None) -> int | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (or ``minutes``) to whole minutes; None for unlimited.

    Seconds round up: a limit of 00:00:30 is still a limit, not zero.
    """
    if text is None or text.strip().upper() in _UNLIMITED:
        return None
    text = text.strip()
    days, hours, minutes, seconds = 0, 0, 0, 0
    if "-" in text:  # days-hours[:minutes[:seconds]]
        day_text, rest = text.split("-", 1)
        days = int(day_text)
        parts = [int(p) for p in rest.split(":")] + [0, 0]
        hours, minutes, seconds = parts[:3]
    else:  # minutes | minutes:seconds | hours:minutes:seconds
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 3:
            hours, minutes, seconds = parts
        elif len(parts) == 2:
            minutes, seconds = parts
        else:
            minutes = parts[0]
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def format_duration(minutes: int) -> str:
    """Minutes as Slurm's ``D-HH:MM:00``."""
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00"


def parse_timestamp(text: str | None) -> datetime | None:
    """scontrol/sacct ISO timestamps (local time, no zone) to aware UTC; None for Unknown/None."""
    if text is None or text.strip() in {"", "Unknown", "None", "N/A", "0"}:
        return None
    return datetime.fromisoformat(text.strip()).astimezone(UTC)


def from_epoch(value: int | None) -> datetime | None:
    """A Unix time from JSON output; Slurm writes 0 for "not yet"."""
    if not value:
        return None
    return datetime.fromtimestamp(value, UTC)


def parse_exit_code(text: str | None) -> tuple[int | None, int | None]:
    """``"exit:signal"`` as printed by scontrol and sacct."""
    if not text or ":" not in text:
        return None, None
    code, signal = text.split(":", 1)
    return int(code), int(signal)


def split_wait_status(status: int | None) -> tuple[int | None, int | None]:
    """A raw ``wait()`` status, as Slurm stores a job's exit code, to ``(exit code, signal)``.

    This is what scontrol prints as ``ExitCode=exit:signal``: the low 7 bits are the terminating signal,
    the next byte the exit status.
    """
    if status is None or status < 0:
        return None, None
    return (status >> 8) & 0xFF, status & 0x7F


def parse_gres(text: str | None, default_type: str = "gpu") -> dict[str, int]:
    """GPU counts per type from a GRES string such as ``gpu:a100:4(S:0),gpu:h100:2``.

    Untyped GPUs (``gpu:2``) are counted under ``default_type``.
    """
    counts: dict[str, int] = {}
    if not text or text in {"(null)", "N/A"}:
        return counts
    for raw_item in re.split(r",(?![^()]*\))", text):
        item = raw_item.strip().removeprefix("gres/").removeprefix("gres:")
        match = _GRES_ITEM.match(item)
        if match:
            gpu_type = match.group("type") or default_type
            counts[gpu_type] = counts.get(gpu_type, 0) + int(match.group("count"))
    return counts


def gres_request(gpus_per_node: int, gpu_type: str | None) -> str | None:
    """``gpu[:type]:count``, per node, as sbatch's ``--gres`` and slurmrestd's ``gres``/``tres_per_node``
    take it; None for no GPU (an empty ``--gres=`` is an error, so the option is left out)."""
    if gpus_per_node <= 0:
        return None
    if gpu_type:
        return f"gpu:{gpu_type}:{gpus_per_node}"
    return f"gpu:{gpus_per_node}"


def parse_tres(text: str | None) -> dict[str, str]:
    """``cpu=2,mem=1000M,node=1,billing=2,gres/gpu=1`` to a mapping; values stay strings."""
    if not text:
        return {}
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {key: value for key, value in pairs}


def parse_key_values(line: str) -> dict[str, str]:
    """One line of ``scontrol show ... -o``: ``Key=Value Key2=Value with spaces`` keeps multi-word values.

    A value runs until the next `` Key=``; keys are CamelCase words (with ``/`` or ``:`` in a few of them).
    """
    result: dict[str, str] = {}
    for match in re.finditer(r"(?:^|\s)([A-Za-z][\w/:.]*)=(.*?)(?=\s+[A-Za-z][\w/:.]*=|\s*$)", line):
        result[match.group(1)] = match.group(2)
    return result


def expand_output_path(pattern: str, job_id: int, user: str | None, name: str | None, node: str | None) -> str:
    """Expand the filename patterns Slurm leaves unexpanded in some outputs (``%j``, ``%u``, ...)."""
    replacements: Mapping[str, str] = {
        "%j": str(job_id),
        "%A": str(job_id),
        "%u": user or "",
        "%x": name or "",
        "%N": node or "",
        "%%": "%",
    }
    return re.sub(r"%[jAuxN%]", lambda m: replacements[m.group(0)], pattern)


def gpu_counts(gres: Mapping[str, object], default_type: str = "gpu") -> dict[str, int]:
    """GPU counts per type from a GRES/TRES mapping such as ``{"gpu:a100": 2}`` or ``{"gres/gpu": "1"}``.

    Allocation TRES list a total beside the typed counts (``gres/gpu=2,gres/gpu:a100=2``): the total
    only adds untyped GPUs (under ``default_type``) where it exceeds the typed ones. Values may be ints,
    digit strings or ``{"count": n, ...}`` (pyslurm's form when GPU indexes are known).
    """
    typed: dict[str, int] = {}
    untyped = 0
    for key, value in gres.items():
        name = key.removeprefix("gres/").removeprefix("gres:")
        raw = value.get("count") if isinstance(value, Mapping) else value
        if isinstance(raw, int):
            count = raw
        elif isinstance(raw, str) and raw.isdigit():
            count = int(raw)
        else:
            continue
        if name == "gpu":
            untyped += count
        elif name.startswith("gpu:"):
            gpu_type = name.split(":", 2)[1]
            typed[gpu_type] = typed.get(gpu_type, 0) + count
    extra = untyped - sum(typed.values())
    if extra > 0:
        typed[default_type] = typed.get(default_type, 0) + extra
    return typed
