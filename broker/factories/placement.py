"""Placement v1: the Factory and partition a job goes to and why, or precisely why it can go nowhere.

Pure logic over the registry's static facts and each Factory's current status (kept in the database and
passed in). Filters only, deterministic: the first Factory in config order that fits and is available wins
(scoring comes later). Every partition of every eligible Factory meets the same checks in the same order
(GPU type, GPUs per node, nodes, CPUs per node, memory per node, time limit); when none fits, the error
names the check at which the last partitions fell and lists them, so the user learns the one thing to
change. Fit is judged before health: a job that fits nowhere is told so now, not after an outage ends.

Version skew: on a Factory reached through its agent, the job goes only if the agent holding the Factory's
lease announced every job-spec field the job uses there (its translation for that Factory, as the dispatcher
sends it). A Factory whose agent lacks one is passed over; with no agent connected the job waits.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.factories import working_roots
from broker.factories.registry import Factory, FactoryRegistry, Partition
from broker.jobs.secrets import redacted_values
from broker.jobs.translate import TranslationError, container_problem, to_slurm_spec
from conveyor.problems import PlacementCode
from conveyor.spec import JobSpec
from slurm_adapters.agent_protocol import features_used

LISTED_AT_MOST = 8  # entries an error message lists before it says "and N more"


# The job fits, but where it fits is unavailable right now: it may be placed later, unchanged.
TRANSIENT_CODES = frozenset(
    {
        PlacementCode.FACTORY_DRAINED,
        PlacementCode.FACTORY_UNHEALTHY,
        PlacementCode.NO_AVAILABLE_FACTORY,
        PlacementCode.AGENT_NOT_CONNECTED,
    }
)

# Per agent Factory, the features its lease holder announced at hello; None: no agent holds the lease.
AgentFeatures = Mapping[str, frozenset[str] | None]


class PlacementError(Exception):
    """The job cannot be placed. ``code`` is the SDK's :class:`PlacementCode`, sent to clients as is, so the
    broker cannot emit a code the SDK does not know; ``details`` holds the facts of the message as data."""

    def __init__(self, code: PlacementCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: Mapping[str, Any] = details

    @property
    def transient(self) -> bool:
        """True when waiting may help (drained or unhealthy); False when the job itself must change."""
        return self.code in TRANSIENT_CODES


@dataclass(frozen=True, slots=True)
class FactoryStatus:
    """A Factory's run-time state, as the health checks and the operators left it in the database."""

    healthy: bool
    drained: bool = False
    detail: str | None = None  # the failed check's message, or the operator's drain reason

    @property
    def available(self) -> bool:
        return self.healthy and not self.drained

    def problem(self) -> str:
        state = "drained" if self.drained else "unhealthy"
        return f"{state}: {self.detail}" if self.detail else state


# A Factory the health check has not reached yet is not submitted to.
NOT_CHECKED = FactoryStatus(healthy=False, detail="health not checked yet")


@dataclass(frozen=True, slots=True)
class Skipped:
    """A Factory placement passed over before the chosen one, and why (briefly)."""

    factory: str
    why: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the job goes. ``reason`` is recorded on the job and shown by a dry run."""

    factory: Factory
    partition: Partition
    time_limit_min: int
    time_limit_is_default: bool
    reason: str
    skipped: tuple[Skipped, ...] = ()


class _Check(enum.IntEnum):
    """The checks, in the order every partition meets them."""

    KIND = 1
    GPUS = 2
    NODES = 3
    CPUS = 4
    MEMORY = 5
    TIME = 6


@dataclass(frozen=True, slots=True)
class _Need:
    """What the job asks of one partition, per node."""

    gpus_per_node: int
    gpu_type: str | None
    nodes: int
    cpus_per_node: int
    memory_mb: int | None
    time_limit_min: int | None

    @classmethod
    def of(cls, spec: JobSpec) -> _Need:
        r = spec.resources
        return cls(
            gpus_per_node=r.gpus_per_node,
            gpu_type=r.gpu_type,
            nodes=r.nodes,
            cpus_per_node=r.tasks_per_node * r.cpus_per_task,
            memory_mb=r.memory_mb,
            time_limit_min=r.time_limit_min,
        )

    @property
    def wants_gpus(self) -> bool:
        return self.gpus_per_node > 0

    @property
    def gpu_label(self) -> str:
        return f"{self.gpu_type} GPUs" if self.gpu_type else "GPUs"


@dataclass(frozen=True, slots=True)
class _Misfit:
    factory: Factory
    partition: Partition
    check: _Check
    detail: str  # short, for skip reasons

    @property
    def where(self) -> str:
        return f"{self.factory.id}/{self.partition.name}"


def _misfit(factory: Factory, partition: Partition, need: _Need) -> _Misfit | None:
    """The first check ``partition`` fails for ``need``, or None when the job fits it."""
    name, offered = partition.name, partition.gpus_of(need.gpu_type)
    checks = (
        (_Check.KIND, need.wants_gpus and offered == 0, f"no {need.gpu_label}"),
        (_Check.KIND, not need.wants_gpus and partition.has_gpus and not partition.default, "no CPU partition"),
        (_Check.GPUS, offered < need.gpus_per_node, f"{name}: {offered} {need.gpu_label} per node"),
        (_Check.NODES, partition.nodes < need.nodes, f"{name}: {_count(partition.nodes, 'node')}"),
        (_Check.CPUS, partition.cpus_per_node < need.cpus_per_node, f"{name}: {partition.cpus_per_node} CPUs per node"),
        (
            _Check.MEMORY,
            need.memory_mb is not None and partition.memory_mb_per_node < need.memory_mb,
            f"{name}: {partition.memory_mb_per_node} MiB per node",
        ),
        (
            _Check.TIME,
            need.time_limit_min is not None and partition.max_time_min < need.time_limit_min,
            f"{name}: MaxTime {partition.max_time_min} min",
        ),
        (_Check.TIME, need.time_limit_min is None and partition.default_time_min is None, f"{name}: no DefaultTime"),
    )
    for check, failed, detail in checks:
        if failed:
            return _Misfit(factory, partition, check, detail)
    return None


def _partitions_in_preference(factory: Factory, need: _Need) -> list[Partition]:
    """GPU jobs: config order. CPU jobs: the default partition first, then the others in config order."""
    if need.wants_gpus:
        return list(factory.partitions)
    return sorted(factory.partitions, key=lambda partition: not partition.default)


@dataclass(frozen=True, slots=True)
class _FactoryFit:
    factory: Factory
    partition: Partition | None
    misfits: tuple[_Misfit, ...]  # the partitions considered before the fitting one (all, when none fits)

    @property
    def closest(self) -> _Misfit:
        """The misfit that got furthest through the checks (the first such, in preference order)."""
        return max(self.misfits, key=lambda misfit: misfit.check)


def _fit(factory: Factory, need: _Need) -> _FactoryFit:
    misfits: list[_Misfit] = []
    for partition in _partitions_in_preference(factory, need):
        misfit = _misfit(factory, partition, need)
        if misfit is None:
            return _FactoryFit(factory, partition, tuple(misfits))
        misfits.append(misfit)
    return _FactoryFit(factory, None, tuple(misfits))


# -------------------------------------------------------------------------------------------------------
# Which Factories are eligible at all
# -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scope:
    """The Factories placement may choose from, and how to name them in messages."""

    factories: tuple[Factory, ...]
    explicit: bool
    countries: tuple[str, ...]
    restricted: bool  # only some Factories are allowed (Antenna links, allocations)

    @property
    def phrase(self) -> str:
        """' on Factory alpha', ' in IT, FI', '' ... for 'no partition{phrase} offers ...'."""
        if self.explicit:
            return f" on Factory {self.factories[0].id}"
        text = f" in {', '.join(self.countries)}" if self.countries else ""
        return text + (" among the Factories this job may use" if self.restricted else "")


def _scope(spec: JobSpec, registry: FactoryRegistry, allowed: Collection[str] | None) -> _Scope:
    countries = tuple(spec.placement.countries)
    wanted = spec.placement.factory
    if wanted is not None:
        factory = registry.get(wanted)
        if factory is None:
            raise PlacementError(
                PlacementCode.UNKNOWN_FACTORY,
                f"unknown Factory {wanted!r}; the Factories are: {_listing(registry.ids)}",
                factory=wanted,
                known=list(registry.ids),
            )
        if allowed is not None and wanted not in allowed:
            raise PlacementError(
                PlacementCode.FACTORY_NOT_ALLOWED,
                f"this job may not use Factory {wanted!r}; it may use: {_listing(sorted(allowed)) or 'none'}",
                factory=wanted,
                allowed=sorted(allowed),
            )
        if countries and factory.country not in countries:
            raise PlacementError(
                PlacementCode.COUNTRY_EXCLUDED,
                f"Factory {wanted!r} is in {factory.country}, outside the allowed countries {', '.join(countries)}",
                factory=wanted,
                country=factory.country,
                countries=list(countries),
            )
        _check_container(spec, _check_directory(spec, [factory]))
        return _Scope((factory,), explicit=True, countries=countries, restricted=allowed is not None)
    usable = [factory for factory in registry if allowed is None or factory.id in allowed]
    if not usable:
        message = "no Factory is configured" if len(registry) == 0 else "this job may use no Factory"
        raise PlacementError(PlacementCode.NO_FACTORY_ALLOWED, message, allowed=sorted(allowed or ()))
    in_countries = [factory for factory in usable if not countries or factory.country in countries]
    if not in_countries:
        present = _listing(f"{factory.id} ({factory.country})" for factory in usable)
        raise PlacementError(
            PlacementCode.COUNTRY_EXCLUDED,
            f"no Factory in the allowed countries {', '.join(countries)}; the Factories are: {present}",
            countries=list(countries),
            factories={factory.id: factory.country for factory in usable},
        )
    return _Scope(
        tuple(_check_container(spec, _check_directory(spec, in_countries))),
        explicit=False,
        countries=countries,
        restricted=allowed is not None,
    )


def _check_directory(spec: JobSpec, factories: Sequence[Factory]) -> list[Factory]:
    """The Factories that let the job work in its working directory (for some site user: the user it runs
    as is checked once known); none is an error that names what each allows."""
    directory = spec.working_directory
    if directory is None:
        return list(factories)
    fitting = [factory for factory in factories if factory.allows_directory(directory, None)]
    if not fitting:
        roots = {factory.id: list(factory.allowed_roots) for factory in factories}
        where = "; ".join(
            f"Factory {factory.id}: {working_roots.listing(factory.allowed_roots)}" for factory in factories
        )
        raise PlacementError(
            PlacementCode.WORKING_DIRECTORY_NOT_ALLOWED,
            f"working_directory {directory} is outside the directories jobs may work in ({where})",
            working_directory=directory,
            allowed_roots=roots,
        )
    return fitting


def _check_container(spec: JobSpec, factories: Sequence[Factory]) -> list[Factory]:
    """The Factories that can run the job's container (its runtime, image and mounts; the site user it runs
    as is checked once known); none is an error that says why for each."""
    problems = {factory.id: container_problem(spec, factory, None) for factory in factories}
    fitting = [factory for factory in factories if problems[factory.id] is None]
    if not fitting:
        assert spec.container is not None  # without one, every Factory fits
        where = "; ".join(f"Factory {factory_id} {problem}" for factory_id, problem in problems.items())
        raise PlacementError(
            PlacementCode.CONTAINER_NOT_ALLOWED,
            f"no Factory can run container image {spec.container.image} as asked: {where}",
            image=spec.container.image,
            factories=problems,
        )
    return fitting


# -------------------------------------------------------------------------------------------------------
# The error when nothing fits
# -------------------------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _listing(items: Iterable[str]) -> str:
    listed = list(items)
    if len(listed) > LISTED_AT_MOST:
        return ", ".join(listed[:LISTED_AT_MOST]) + f" and {len(listed) - LISTED_AT_MOST} more"
    return ", ".join(listed)


def _no_fit_error(need: _Need, scope: _Scope, registry: FactoryRegistry, misfits: Sequence[_Misfit]) -> PlacementError:
    check = max((misfit.check for misfit in misfits), default=_Check.KIND)
    last = [misfit for misfit in misfits if misfit.check == check]
    if check == _Check.KIND:
        return _kind_error(need, scope.phrase, registry)
    if check == _Check.TIME and need.time_limit_min is None:
        values = {m.where: m.partition.max_time_min for m in last}
        return PlacementError(
            PlacementCode.NO_DEFAULT_TIME_LIMIT,
            f"no time limit given, and no partition{scope.phrase} that fits has a default (DefaultTime): "
            + _listing(f"{where} (MaxTime {n} min)" for where, n in values.items())
            + "; set resources.time_limit_min",
            partitions=values,
        )
    return _limit_error(check, need, scope.phrase, last)


def _limit_error(check: _Check, need: _Need, phrase: str, last: Sequence[_Misfit]) -> PlacementError:
    """The job asks more of one limit than every partition that passed the earlier checks offers."""
    limits: dict[_Check, tuple[PlacementCode, int | None, Callable[[Partition], int], str, str]] = {
        _Check.GPUS: (
            PlacementCode.GPUS_PER_NODE_EXCEEDED,
            need.gpus_per_node,
            lambda p: p.gpus_of(need.gpu_type),
            f"{need.gpus_per_node} {need.gpu_label} per node requested, more than any node{phrase} has",
            "",
        ),
        _Check.NODES: (
            PlacementCode.NODES_EXCEEDED,
            need.nodes,
            lambda p: p.nodes,
            f"{_count(need.nodes, 'node')} requested, more than any partition{phrase} that fits has",
            "",
        ),
        _Check.CPUS: (
            PlacementCode.CPUS_PER_NODE_EXCEEDED,
            need.cpus_per_node,
            lambda p: p.cpus_per_node,
            f"{need.cpus_per_node} CPUs per node requested (tasks_per_node x cpus_per_task), "
            f"more than any node{phrase} that fits has",
            "",
        ),
        _Check.MEMORY: (
            PlacementCode.MEMORY_PER_NODE_EXCEEDED,
            need.memory_mb,
            lambda p: p.memory_mb_per_node,
            f"{need.memory_mb} MiB of memory per node requested, more than any node{phrase} that fits has",
            " MiB",
        ),
        _Check.TIME: (
            PlacementCode.TIME_LIMIT_EXCEEDED,
            need.time_limit_min,
            lambda p: p.max_time_min,
            f"time limit {need.time_limit_min} min exceeds the MaxTime of every partition{phrase} that fits",
            " min",
        ),
    }
    code, requested, limit_of, head, unit = limits[check]
    values = {m.where: limit_of(m.partition) for m in last}
    listed = _listing(f"{where} {n}{unit}" for where, n in values.items())
    return PlacementError(code, f"{head}: {listed}", requested=requested, gpu_type=need.gpu_type, partitions=values)


def _kind_error(need: _Need, phrase: str, registry: FactoryRegistry) -> PlacementError:
    """No partition in scope offers the kind of node the job needs; say where it does exist."""
    if not need.wants_gpus:
        return PlacementError(
            PlacementCode.NO_CPU_PARTITION,
            f"no CPU partition{phrase} (and no default partition to run a CPU job in)",
        )
    offering = {
        f"{factory.id}/{partition.name}": factory.country
        for factory in registry
        for partition in factory.partitions
        if partition.gpus_of(need.gpu_type) > 0
    }
    where = _listing(f"{name} ({country})" for name, country in offering.items())
    if need.gpu_type is None:
        elsewhere = f"GPUs are offered by {where}" if offering else "no Factory has GPUs"
        return PlacementError(PlacementCode.NO_GPUS, f"no partition{phrase} has GPUs; {elsewhere}", offered_by=offering)
    if offering:
        elsewhere = f"{need.gpu_type} is offered by {where}"
    else:
        types = sorted({gpu_type for factory in registry for gpu_type in factory.gpu_types})
        elsewhere = f"no Factory offers {need.gpu_type}; GPU types on offer: {', '.join(types) or 'none'}"
    return PlacementError(
        PlacementCode.GPU_TYPE_UNAVAILABLE,
        f"no partition{phrase} offers {need.gpu_type} GPUs; {elsewhere}",
        gpu_type=need.gpu_type,
        offered_by=offering,
    )


# -------------------------------------------------------------------------------------------------------
# Placement
# -------------------------------------------------------------------------------------------------------


def place(
    spec: JobSpec,
    registry: FactoryRegistry,
    statuses: Mapping[str, FactoryStatus],
    *,
    allowed: Collection[str] | None = None,
    agents: AgentFeatures | None = None,
) -> Placement:
    """The Factory and partition for ``spec``, or :class:`PlacementError`.

    ``statuses``: each Factory's current status (a Factory missing from it counts as :data:`NOT_CHECKED`).
    ``allowed``: the Factory ids this job may use at all (Antenna links, allocations); None: every one.
    ``agents``: what each agent Factory's lease holder announced (a Factory missing from it is not checked
    for version skew; None: no Factory is).
    """
    need = _Need.of(spec)
    scope = _scope(spec, registry, allowed)
    fits = [_fit(factory, need) for factory in scope.factories]
    if not any(fit.partition for fit in fits):
        raise _no_fit_error(need, scope, registry, [misfit for fit in fits for misfit in fit.misfits])
    skipped: list[Skipped] = []
    agent_problems: dict[str, _AgentProblem] = {}
    for fit in fits:
        status = statuses.get(fit.factory.id, NOT_CHECKED)
        if fit.partition is None:
            skipped.append(Skipped(fit.factory.id, fit.closest.detail))
        elif not status.available:
            skipped.append(Skipped(fit.factory.id, status.problem()))
        else:
            chosen = _placement(fit, fit.partition, need, scope, tuple(skipped))
            problem = _agent_problem(spec, chosen, agents)
            if problem is None:
                return chosen
            agent_problems[fit.factory.id] = problem
            skipped.append(Skipped(fit.factory.id, problem.text))
    raise _unavailable_error(scope, fits, statuses, agent_problems)


@dataclass(frozen=True, slots=True)
class _AgentProblem:
    """Why a Factory's agent cannot take the job: none connected (``lacking`` empty), or fields it lacks."""

    lacking: tuple[str, ...]

    @property
    def text(self) -> str:
        if not self.lacking:
            return "no agent connected to take orders"
        return f"its agent lacks {', '.join(self.lacking)}"


def _agent_problem(spec: JobSpec, placement: Placement, agents: AgentFeatures | None) -> _AgentProblem | None:
    """None when the Factory is not reached through an agent, or its lease holder announced every feature
    the job uses there (its translation for this Factory, with the Factory's default account)."""
    factory = placement.factory
    if agents is None or factory.id not in agents:
        return None
    announced = agents[factory.id]
    if announced is None:
        return _AgentProblem(())
    try:
        probe = to_slurm_spec(
            "placement-probe", spec, placement, factory, secrets=redacted_values(spec.secret_environment)
        )
        used = features_used(probe)
    except TranslationError:  # the dispatcher's own translation tells the user
        return None
    lacking = used - announced
    return _AgentProblem(tuple(sorted(lacking))) if lacking else None


def _unavailable_error(
    scope: _Scope,
    fits: Sequence[_FactoryFit],
    statuses: Mapping[str, FactoryStatus],
    agent_problems: Mapping[str, _AgentProblem],
) -> PlacementError:
    fitting = [(fit.factory.id, statuses.get(fit.factory.id, NOT_CHECKED)) for fit in fits if fit.partition]
    lacking = {f: list(p.lacking) for f, p in agent_problems.items() if p.lacking}
    if len(lacking) == len(fitting):  # every Factory that fits has an agent that cannot run it: the job must change
        return PlacementError(
            PlacementCode.AGENT_LACKS_FEATURE,
            f"the agent of every Factory{scope.phrase} that fits the job lacks a field the job uses: "
            + _listing(f"{factory_id} lacks {', '.join(fields)}" for factory_id, fields in lacking.items()),
            factories=lacking,
        )

    def problem(factory_id: str, status: FactoryStatus) -> str:
        agent = agent_problems.get(factory_id)
        return agent.text if agent is not None else status.problem()

    if scope.explicit:
        factory_id, status = fitting[0]
        if factory_id in agent_problems:
            return PlacementError(
                PlacementCode.AGENT_NOT_CONNECTED,
                f"Factory {factory_id} has no agent connected; the job fits it and can wait",
                factory=factory_id,
            )
        code = PlacementCode.FACTORY_DRAINED if status.drained else PlacementCode.FACTORY_UNHEALTHY
        return PlacementError(
            code, f"Factory {factory_id} is {status.problem()}; the job fits it and can wait", factory=factory_id
        )
    return PlacementError(
        PlacementCode.NO_AVAILABLE_FACTORY,
        f"every Factory{scope.phrase} that fits the job is unavailable: "
        + _listing(f"{factory_id} ({problem(factory_id, status)})" for factory_id, status in fitting),
        factories={factory_id: problem(factory_id, status) for factory_id, status in fitting},
    )


def _placement(
    fit: _FactoryFit, partition: Partition, need: _Need, scope: _Scope, skipped: tuple[Skipped, ...]
) -> Placement:
    factory = fit.factory
    if need.time_limit_min is not None:
        time_limit, is_default = need.time_limit_min, False
        time_text = f"time limit {time_limit} min as requested (MaxTime {partition.max_time_min} min)"
    else:
        assert partition.default_time_min is not None  # a partition without one does not fit
        time_limit, is_default = partition.default_time_min, True
        time_text = f"time limit {time_limit} min: the DefaultTime of {partition.name} (none was requested)"
    if scope.explicit:
        why_factory = "the Factory the job names"
    else:
        why_factory = f"the first Factory{scope.phrase} in config order that fits and is available"
    if need.wants_gpus:
        why_partition = (
            f"{partition.name} offers {partition.gpus_of(need.gpu_type)} {need.gpu_label} per node on "
            f"{_count(partition.nodes, 'node')}"
        )
    elif partition.default:
        why_partition = f"{partition.name} is the default partition and fits"
    else:
        passed = "; ".join(m.detail for m in fit.misfits if m.check > _Check.KIND) or "no default partition"
        why_partition = f"{partition.name} is the first CPU partition that fits (passed over: {passed})"
    reason = f"{factory.id}/{partition.name}: {why_factory}; {why_partition}; {time_text}"
    if skipped:
        reason += "; skipped " + ", ".join(f"{skip.factory} ({skip.why})" for skip in skipped)
    return Placement(
        factory=factory,
        partition=partition,
        time_limit_min=time_limit,
        time_limit_is_default=is_default,
        reason=reason,
        skipped=skipped,
    )


__all__ = [
    "NOT_CHECKED",
    "TRANSIENT_CODES",
    "AgentFeatures",
    "FactoryStatus",
    "Placement",
    "PlacementError",
    "Skipped",
    "place",
]
