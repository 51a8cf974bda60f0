"""The Prometheus text exposition format (version 0.0.4), written by hand: a few gauges need no library.

Gauges come from the database (jobs by state and Factory, the queue of jobs not yet at Slurm, Factory
health and drains), so every replica reports the same numbers, plus whatever the background loops of this
process measured (``Runtime.metrics()``: dispatch and reconcile lag, errors per Factory).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from conveyor.models import FactoryView
from conveyor.spec import JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
Sample = tuple[Mapping[str, str], float]


def _name(raw: str) -> str:
    name = _BAD_NAME_CHARS.sub("_", raw)
    return name if not name[:1].isdigit() else "_" + name


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Exposition:
    """Collects metric families and renders them in the text format."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def gauge(self, name: str, help_text: str, samples: Iterable[Sample]) -> None:
        self.family(name, "gauge", help_text, samples)

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        name = "conveyor_" + _name(name)
        self._lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            text = ",".join(f'{_name(k)}="{_label_value(v)}"' for k, v in sorted(labels.items()))
            self._lines.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _per_factory(figures: Mapping[str, Any], key: str) -> list[tuple[dict[str, str], float]]:
    values = figures.get(key)
    if not isinstance(values, Mapping):
        return []
    return [
        ({"factory": str(factory)}, number)
        for factory, value in sorted(values.items())
        if (number := _number_or_none(value)) is not None
    ]


def _runtime(out: Exposition, figures: Mapping[str, Any]) -> None:
    """The figures of :meth:`broker.loops.runtime.Runtime.metrics` (:class:`RuntimeFigures`) as Prometheus families;
    anything absent or not a number is skipped, so a partial figure never breaks /metrics."""
    lag = _number_or_none(figures.get("dispatch_lag_seconds"))
    if lag is not None:
        out.gauge(
            "dispatch_lag_seconds", "How long the oldest due queued job has waited for the dispatcher.", [({}, lag)]
        )
    cycle = _number_or_none(figures.get("dispatch_cycle_seconds"))
    if cycle is not None:
        out.gauge("dispatch_cycle_seconds", "Duration of the last dispatcher cycle.", [({}, cycle)])
    out.gauge("reconcile_lag_seconds", "Seconds since the Factory's last successful reconcile.",
              _per_factory(figures, "reconcile_lag_seconds"))  # fmt: skip
    out.gauge("reconcile_cycle_seconds", "Duration of the Factory's last reconcile cycle.",
              _per_factory(figures, "reconcile_cycle_seconds"))  # fmt: skip
    out.gauge("held_jobs", "Jobs of the Factory held in Slurm until someone releases them (last reconcile).",
              _per_factory(figures, "reconcile_held_jobs"))  # fmt: skip
    out.family(
        "errors_total",
        "counter",
        "Failed dispatch and reconcile calls per Factory, since this process started.",
        [
            ({**labels, "loop": loop}, value)
            for loop in ("dispatch", "reconcile")
            for labels, value in _per_factory(figures, f"{loop}_errors")
        ],
    )
    loops = figures.get("loop_errors")
    out.family(
        "loop_errors_total",
        "counter",
        "Cycles of a background loop that failed as a whole, since this process started.",
        [
            ({"loop": str(loop)}, value)
            for loop, n in sorted(loops.items() if isinstance(loops, Mapping) else [])
            if (value := _number_or_none(n)) is not None
        ],
    )


def _key(item: tuple[tuple[str | None, JobState], int]) -> tuple[str, str]:
    (factory, state), _ = item
    return factory or "", str(state)


def render(
    counts: Mapping[tuple[str | None, JobState], int],
    factories: Iterable[FactoryView],
    runtime: Mapping[str, Any] | None,
    accept_batches: tuple[int, int] | None = None,
) -> str:
    """Everything /metrics shows: database gauges (the same on every replica), then this process's group
    commits of accepts and its loops."""
    out = Exposition()
    out.gauge(
        "jobs",
        "Jobs by broker state and Factory (factory empty: not placed yet).",
        [
            ({"factory": factory or "", "state": str(state)}, n)
            for (factory, state), n in sorted(counts.items(), key=_key)
        ],
    )
    queued = sum(n for (_, state), n in counts.items() if state is JobState.QUEUED)
    out.gauge("queue_depth", "Jobs accepted and not yet submitted to Slurm (state queued).", [({}, queued)])
    views = list(factories)
    out.gauge(
        "factory_pending",
        "This broker's jobs pending in each Factory's Slurm queue (state submitted).",
        (({"factory": v.id}, v.queue_depth) for v in views),
    )
    out.gauge(
        "factory_healthy",
        "1 when the last health check of the Factory passed, 0 when it failed, absent when never checked.",
        (({"factory": v.id}, 1.0 if v.healthy else 0.0) for v in views if v.healthy is not None),
    )
    drained = (({"factory": v.id}, float(v.drained)) for v in views)
    out.gauge("factory_drained", "1 when operators drained the Factory.", drained)
    if accept_batches is not None:
        batches, jobs = accept_batches
        out.family(
            "accept_batches_total", "counter", "Group commits of accepted jobs by this process.", [({}, batches)]
        )
        out.family("accept_batched_jobs_total", "counter", "Jobs those group commits carried.", [({}, jobs)])
    if runtime is not None:
        _runtime(out, runtime)
    return out.render()
