"""The Prometheus text exposition format (version 0.0.4), written by hand: a few gauges need no library.

Gauges come from the database (jobs by state and Factory, the queue of jobs not yet at Slurm, Factory
health and drains), so every replica reports the same numbers, plus whatever the background loops of this
process measured (``Runtime.metrics()``: dispatch and reconcile lag, errors per Factory).

Per agent Factory (:meth:`broker.agents.service.AgentService.figures`): its live sessions, lease epoch and
seconds since its last heartbeat (from the database), and this process's counts of orders written and
delivered, reports applied and ignored, listings pushed, reads served from pushes or orders, and order
latencies (histograms). Labels: ``factory``, ``kind``, ``outcome``, ``what`` and ``source``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from broker.agents.metrics import Histogram
from broker.agents.service import AgentFigures
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
            self._sample(name, labels, value)

    def histogram(self, name: str, help_text: str, series: Iterable[tuple[Mapping[str, str], Histogram]]) -> None:
        """A histogram family: per label set, cumulative ``_bucket`` lines (``le``), ``_sum`` and ``_count``."""
        name = "conveyor_" + _name(name)
        self._lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for labels, histogram in series:
            for bound, n in histogram.cumulative():
                self._sample(f"{name}_bucket", {**labels, "le": _number(bound)}, n)
            self._sample(f"{name}_sum", labels, histogram.total)
            self._sample(f"{name}_count", labels, histogram.count)

    def _sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
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


ORDER_KINDS = ("submit", "cancel", "read")


def _agents(out: Exposition, figures: AgentFigures) -> None:
    """Per agent Factory: the sessions table's view, then this process's counts (zero until something
    happened, so a rate is defined from the first scrape); latencies once observed."""
    ids, present, counted = figures.factories, figures.presences, figures.counted
    out.gauge("agent_sessions", "Live sessions of the Factory's agent (0: none connected).",
              (({"factory": f}, p.live_sessions if (p := present.get(f)) else 0) for f in ids))  # fmt: skip
    out.gauge(
        "agent_lease_epoch",
        "The fencing epoch of the Factory's agent lease (absent: never taken).",
        (({"factory": f}, p.epoch) for f in ids if (p := present.get(f)) is not None and p.epoch is not None),
    )
    out.gauge(
        "agent_seconds_since_heartbeat",
        "Seconds since any session of the Factory's agent last sent a heartbeat (absent: never connected).",
        (
            ({"factory": f}, round((figures.now - seen).total_seconds(), 3))
            for f in ids
            if (p := present.get(f)) is not None and (seen := p.last_heartbeat_at) is not None
        ),
    )
    per_kind = [(f, kind) for f in ids for kind in ORDER_KINDS]
    out.family("agent_orders_written_total", "counter", "Orders written for the Factory's agent, by kind.",
               (({"factory": f, "kind": k}, counted.orders_written[(f, k)]) for f, k in per_kind))  # fmt: skip
    out.family("agent_orders_delivered_total", "counter", "Orders handed to the Factory's agent the first time.",
               (({"factory": f, "kind": k}, counted.orders_delivered[(f, k)]) for f, k in per_kind))  # fmt: skip
    for outcome, meaning in (("applied", "applied to their orders"), ("ignored", "ignored (repeats, unknown)")):
        out.family(f"agent_reports_{outcome}_total", "counter", f"Reports of the Factory's agent {meaning}.",
                   (({"factory": f}, counted.reports[(f, outcome)]) for f in ids))  # fmt: skip
    listing_kinds = [(f, k, o) for f in ids for k in ("full", "delta") for o in ("applied", "refused")]
    out.family(
        "agent_listings_total",
        "counter",
        "Listings pushed by the Factory's agent: full or delta, applied "
        "or refused (a delta on another snapshot, an older listing).",
        (({"factory": f, "kind": k, "outcome": o}, counted.listings[(f, k, o)]) for f, k, o in listing_kinds),
    )
    out.family("agent_listed_jobs_total", "counter", "Jobs carried by the applied listings of the Factory's agent.",
               (({"factory": f}, counted.listed_jobs[f]) for f in ids))  # fmt: skip
    served = [(f, w, src) for f in ids for w in ("listing", "health", "cluster_info") for src in ("push", "order")]
    out.family(
        "agent_reads_served_total",
        "counter",
        "Reads of the Factory through its agent (listing, health, cluster_info) by source: what the agent pushed, "
        "or an order (no fresh push in time).",
        (({"factory": f, "what": w, "source": src}, counted.served_reads[(f, w, src)]) for f, w, src in served),
    )
    for name, latencies, meaning in (
        ("agent_order_delivery_seconds", counted.delivery_latency, "from an order's creation to its delivery"),
        ("agent_order_answer_seconds", counted.answer_latency, "from an order's delivery to its applied report"),
    ):
        out.histogram(name, f"Seconds {meaning}, by Factory and order kind.",
                      (({"factory": f, "kind": k}, h) for (f, k), h in sorted(latencies.items())))  # fmt: skip


def _key(item: tuple[tuple[str | None, JobState], int]) -> tuple[str, str]:
    (factory, state), _ = item
    return factory or "", str(state)


def render(
    counts: Mapping[tuple[str | None, JobState], int],
    factories: Iterable[FactoryView],
    runtime: Mapping[str, Any] | None,
    accept_batches: tuple[int, int] | None = None,
    agents: AgentFigures | None = None,
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
    if agents is not None and agents.factories:
        _agents(out, agents)
    if runtime is not None:
        _runtime(out, runtime)
    return out.render()
