"""What the ``conveyor`` CLI prints for people: aligned tables and ``key  value`` blocks.

Kept apart from :mod:`conveyor.cli` so the command logic reads without layout noise. Machine-readable output
never goes through here: ``--json`` prints the SDK models' own JSON, so it parses back into them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel

from conveyor.config import Connection
from conveyor.models import DryRun, FactoryView, Job, JobEvent, Me, TokenView

EMPTY = "-"


def json_array(items: Iterable[BaseModel]) -> str:
    """A JSON array of models, each exactly as ``model_dump_json`` writes it (so each parses back)."""
    return "[" + ",".join(item.model_dump_json() for item in items) + "]"


def when(moment: datetime | None) -> str:
    """A UTC timestamp to the second, marked ``Z``: unambiguous whatever the reader's time zone."""
    return EMPTY if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; None cells print as ``-``. The last column is not padded."""
    cells = [[EMPTY if value is None else str(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def pairs(rows: Iterable[tuple[str, object]]) -> str:
    """``key  value`` lines, values aligned; rows whose value is None are left out."""
    kept = [(key, str(value)) for key, value in rows if value is not None]
    width = max((len(key) for key, _ in kept), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in kept)


def state_of(job: Job) -> str:
    """The state with what explains it: exit code or signal at the end, a pending cancel before."""
    extra = []
    if job.exit_code is not None:
        extra.append(f"exit code {job.exit_code}")
    if job.signal:  # 0: no signal ended it
        extra.append(f"signal {job.signal}")
    if job.cancel_requested and not job.state.is_terminal:
        extra.append("cancel requested")
    return f"{job.state.value} ({', '.join(extra)})" if extra else job.state.value


def job_details(job: Job) -> str:
    where = None
    if job.factory is not None:
        where = job.factory + (f", partition {job.partition}" if job.partition else "")
        where += f", as {job.site_user}" if job.site_user else ""
    slurm = None
    if job.slurm_job_id is not None:
        slurm = f"job {job.slurm_job_id}" + (f", {job.slurm_state}" if job.slurm_state else "")
        slurm += f" ({job.slurm_reason})" if job.slurm_reason and job.slurm_reason != "None" else ""
    return pairs([
        ("id", job.id), ("name", job.name), ("project", job.project), ("state", state_of(job)),
        ("reason", job.state_reason), ("factory", where), ("slurm", slurm), ("placement", job.placement_reason),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items())) or None),
        ("created", when(job.created_at)), ("submitted", job.submitted_at and when(job.submitted_at)),
        ("started", job.started_at and when(job.started_at)), ("ended", job.ended_at and when(job.ended_at)),
    ])  # fmt: skip


def jobs_table(jobs: Iterable[Job]) -> str:
    headers = ("ID", "STATE", "FACTORY", "NAME", "PROJECT", "CREATED")
    return table(headers, ([j.id, j.state.value, j.factory, j.name, j.project, when(j.created_at)] for j in jobs))


def events_table(events: Iterable[JobEvent]) -> str:
    def change(event: JobEvent) -> str | None:
        if event.to_state is None:
            return None
        return f"{event.from_state.value if event.from_state else ''} -> {event.to_state.value}".strip()

    def detail(event: JobEvent) -> str:
        return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in event.detail.items())

    rows = ([e.id, when(e.at), e.kind, change(e), e.actor, detail(e)] for e in events)
    return table(("ID", "AT", "KIND", "STATE", "ACTOR", "DETAIL"), rows)


def factories_table(factories: Iterable[FactoryView]) -> str:
    def health(factory: FactoryView) -> str:
        return {True: "ok", False: "down", None: "unknown"}[factory.healthy]

    def gpus(factory: FactoryView) -> str:
        shown = []
        for kind in factory.gpu_types:
            free = (factory.free_gpus or {}).get(kind, "?")
            total = (factory.total_gpus or {}).get(kind, "?")
            shown.append(f"{kind} {free}/{total}")
        return ", ".join(shown) or EMPTY

    def drained(factory: FactoryView) -> str:
        if not factory.drained:
            return "no"
        return f"yes: {factory.drained_reason}" if factory.drained_reason else "yes"

    rows = ([f.id, f.name, f.country, health(f), drained(f), gpus(f), f.queue_depth] for f in factories)
    return table(("ID", "NAME", "COUNTRY", "HEALTH", "DRAINED", "GPUS FREE/TOTAL", "QUEUED"), rows)


def tokens_table(tokens: Iterable[TokenView]) -> str:
    rows = ([t.id, t.name, t.prefix, ",".join(t.scopes), when(t.created_at), when(t.expires_at),
             t.revoked_at and when(t.revoked_at)] for t in tokens)  # fmt: skip
    return table(("ID", "NAME", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "REVOKED"), rows)


def me_details(me: Me, connection: Connection) -> str:
    broker = connection.url + (f" (profile {connection.profile})" if connection.profile else "")
    broker += " via an Antenna gateway" if connection.via == "antenna" else ""
    antenna = None if me.antenna is None else me.antenna + (f" (as {me.subject})" if me.subject else "")
    return pairs([
        ("id", me.id), ("name", me.name), ("admin", "yes" if me.admin else "no"), ("scopes", ", ".join(me.scopes)),
        ("token", me.token_id), ("antenna", antenna),
        ("factories", None if me.factories is None else ", ".join(me.factories)), ("broker", broker),
    ])  # fmt: skip


def dry_run_details(answer: DryRun) -> str:
    """Where the job would go and why, every Factory considered, then exactly what Slurm would receive."""
    head = pairs([
        ("factory", answer.factory), ("partition", answer.partition),
        ("time limit", f"{answer.time_limit_min} min"), ("reason", answer.reason),
        ("adapter", answer.rendering.adapter), ("site user", answer.rendering.site_user),
    ])  # fmt: skip
    rows = ([c.factory, "yes" if c.eligible else "no", c.score, "; ".join(c.reasons)] for c in answer.candidates)
    candidates = table(("FACTORY", "ELIGIBLE", "SCORE", "WHY"), rows)
    payload = json.dumps(answer.rendering.payload, indent=2, sort_keys=True)
    script = answer.rendering.script.rstrip("\n")
    sections = [
        head,
        candidates,
        f"--- batch script ---\n{script}",
        f"--- {answer.rendering.adapter} payload ---\n{payload}",
    ]
    return "\n\n".join(sections)
