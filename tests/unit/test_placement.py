"""Placement v1: the first Factory in config order that fits and is available, and precise errors otherwise."""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest

from broker.factories import placement as placement_module
from broker.factories.placement import (
    NOT_CHECKED,
    AgentFeatures,
    FactoryStatus,
    Placement,
    PlacementError,
    Skipped,
    place,
)
from broker.factories.registry import FactoryRegistry, parse_factories
from conveyor.problems import PLACEMENT_FAILED, PlacementCode, PlacementFailed, error_from_problem
from conveyor.spec import JobSpec
from slurm_adapters.agent_protocol import FEATURES

Code = PlacementCode


def partition(name: str, max_time: int, default_time: int | None, nodes: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "max_time_min": max_time,
        "default_time_min": default_time,
        "nodes": nodes,
        "cpus_per_node": 8,
        "memory_mb_per_node": 16000,
        **extra,
    }


def factory(factory_id: str, country: str, *partitions: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": factory_id,
        "name": factory_id.title(),
        "country": country,
        "site": "lab",
        "adapter": {
            "kind": "rest",
            "cluster": factory_id,
            "url": "http://127.0.0.1:6820",
            "jwt_key_file": "/k",
            "operator_user": "root",
            "allowed_users": "alice|bob",
        },
        "mapping": {"default_user": "alice"},
        "partitions": list(partitions),
    }


# Config order is placement's order: alpha, bravo, charlie, delta, echo.
REGISTRY: FactoryRegistry = parse_factories(
    {
        "factories": [
            factory(
                "alpha",
                "IT",
                partition("cpu", 60, 10, 2, default=True, cpus_per_node=4, memory_mb_per_node=8000),
                partition("gpu", 120, 30, 2, gpus_per_node={"a100": 4}),
                partition("long", 1440, 60, 1, cpus_per_node=4),
            ),
            factory(
                "bravo",
                "ES",
                partition("cpu", 30, 5, 1, default=True, cpus_per_node=4),
                partition("gpu", 90, 20, 1, gpus_per_node={"h100": 2}),
            ),
            factory(
                "charlie",
                "FI",
                partition("cpu", 45, 10, 1, default=True),
                partition("gpu", 90, None, 1, gpus_per_node={"h100": 2}),  # no DefaultTime
            ),
            factory("delta", "DE", partition("gpu", 120, 30, 1, gpus_per_node={"a100": 2, "l4": 2})),
            factory("echo", "LU", partition("cpu", 30, 5, 1, default=True)),
        ]
    }
)
HEALTHY = FactoryStatus(healthy=True)
ALL_UP = {factory_id: HEALTHY for factory_id in REGISTRY.ids}


def job(placement: dict[str, Any] | None = None, *, directory: str | None = None, **resources: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "t",
            "project": "p",
            "command": ["true"],
            "resources": resources,
            "placement": placement or {},
            "working_directory": directory,
        }
    )


def placed(spec: JobSpec, statuses: dict[str, FactoryStatus] | None = None, **kwargs: Any) -> Placement:
    return place(spec, REGISTRY, ALL_UP if statuses is None else statuses, **kwargs)


def refused(spec: JobSpec, statuses: dict[str, FactoryStatus] | None = None, **kwargs: Any) -> PlacementError:
    with pytest.raises(PlacementError) as caught:
        placed(spec, statuses, **kwargs)
    return caught.value


def where(result: Placement) -> str:
    return f"{result.factory.id}/{result.partition.name}"


# -------------------------------------------------------------------------------------------------------
# Where jobs go
# -------------------------------------------------------------------------------------------------------


def test_a_gpu_job_goes_to_the_first_factory_offering_its_gpu_type() -> None:
    result = placed(job(gpus_per_node=4, gpu_type="a100", time_limit_min=60))
    assert where(result) == "alpha/gpu"
    assert (result.time_limit_min, result.time_limit_is_default, result.skipped) == (60, False, ())
    assert result.reason == (
        "alpha/gpu: the first Factory in config order that fits and is available; "
        "gpu offers 4 a100 GPUs per node on 2 nodes; time limit 60 min as requested (MaxTime 120 min)"
    )


def test_factories_before_the_chosen_one_are_listed_with_why_they_were_skipped() -> None:
    result = placed(job(gpus_per_node=2, gpu_type="h100", time_limit_min=60), {**ALL_UP, "bravo": NOT_CHECKED})
    assert where(result) == "charlie/gpu"
    assert result.skipped == (
        Skipped("alpha", "no h100 GPUs"),
        Skipped("bravo", "unhealthy: health not checked yet"),
    )
    assert result.reason.endswith("; skipped alpha (no h100 GPUs), bravo (unhealthy: health not checked yet)")


def test_drained_and_unhealthy_factories_are_skipped() -> None:
    statuses = {
        **ALL_UP,
        "alpha": FactoryStatus(healthy=True, drained=True, detail="maintenance until Monday"),
        "delta": FactoryStatus(healthy=False, detail="slurmctld unreachable"),
    }
    with pytest.raises(PlacementError) as caught:
        placed(job(gpus_per_node=2, gpu_type="a100"), statuses)
    assert caught.value.code == Code.NO_AVAILABLE_FACTORY
    assert caught.value.transient  # the job fits; it can wait
    assert str(caught.value) == (
        "every Factory that fits the job is unavailable: alpha (drained: maintenance until Monday), "
        "delta (unhealthy: slurmctld unreachable)"
    )
    statuses["delta"] = HEALTHY
    result = placed(job(gpus_per_node=2, gpu_type="a100"), statuses)
    assert where(result) == "delta/gpu"
    assert result.skipped == (
        Skipped("alpha", "drained: maintenance until Monday"),
        Skipped("bravo", "no a100 GPUs"),
        Skipped("charlie", "no a100 GPUs"),
    )


def test_a_factory_without_a_status_counts_as_not_checked() -> None:
    result = placed(job(gpus_per_node=1, gpu_type="a100"), {"delta": HEALTHY})
    assert where(result) == "delta/gpu"
    assert result.skipped[0] == Skipped("alpha", "unhealthy: health not checked yet")


def test_without_a_time_limit_the_partition_default_is_used() -> None:
    result = placed(job(gpus_per_node=4, gpu_type="a100"))
    assert (where(result), result.time_limit_min, result.time_limit_is_default) == ("alpha/gpu", 30, True)
    assert "time limit 30 min: the DefaultTime of gpu (none was requested)" in result.reason


def test_a_partition_without_default_time_is_passed_over_when_no_limit_is_given() -> None:
    statuses = {**ALL_UP, "bravo": FactoryStatus(healthy=True, drained=True)}
    with pytest.raises(PlacementError) as caught:  # charlie/gpu would fit, had the job given a time limit
        placed(job(gpus_per_node=2, gpu_type="h100"), statuses)
    assert caught.value.code == Code.NO_AVAILABLE_FACTORY
    assert str(caught.value) == "every Factory that fits the job is unavailable: bravo (drained)"
    assert where(placed(job(gpus_per_node=2, gpu_type="h100", time_limit_min=60), statuses)) == "charlie/gpu"


def test_a_cpu_job_goes_to_the_default_partition_when_it_fits() -> None:
    result = placed(job(time_limit_min=30))
    assert where(result) == "alpha/cpu"
    assert "cpu is the default partition and fits" in result.reason


def test_a_cpu_job_goes_to_the_first_cpu_partition_that_fits_when_the_default_does_not() -> None:
    result = placed(job(time_limit_min=600))
    assert where(result) == "alpha/long"  # never alpha/gpu: a CPU job does not take GPU nodes
    assert "long is the first CPU partition that fits (passed over: cpu: MaxTime 60 min)" in result.reason


def test_an_untyped_gpu_request_counts_every_gpu_of_a_node() -> None:
    assert where(placed(job(gpus_per_node=4))) == "alpha/gpu"
    assert where(placed(job(gpus_per_node=4), {**ALL_UP, "alpha": FactoryStatus(healthy=False)})) == "delta/gpu"


def test_countries_restrict_the_factories() -> None:
    assert where(placed(job(gpus_per_node=1, gpu_type="h100", time_limit_min=10, placement={"countries": ["FI"]}))) == (
        "charlie/gpu"
    )
    result = placed(job(gpus_per_node=1, placement={"countries": ["DE", "FI"]}, time_limit_min=10))
    assert where(result) == "charlie/gpu"  # config order, not the order of the countries
    assert result.reason.startswith("charlie/gpu: the first Factory in DE, FI in config order")


def test_no_factory_in_the_allowed_countries() -> None:
    error = refused(job(placement={"countries": ["PL", "CZ"]}))
    assert error.code == Code.COUNTRY_EXCLUDED
    assert not error.transient
    assert str(error) == (
        "no Factory in the allowed countries PL, CZ; the Factories are: alpha (IT), bravo (ES), charlie (FI), "
        "delta (DE), echo (LU)"
    )


# -------------------------------------------------------------------------------------------------------
# An explicit Factory
# -------------------------------------------------------------------------------------------------------


def test_an_explicit_factory_is_used_even_when_an_earlier_one_fits() -> None:
    result = placed(job(placement={"factory": "echo"}))
    assert (where(result), result.time_limit_min) == ("echo/cpu", 5)
    assert result.reason.startswith("echo/cpu: the Factory the job names; cpu is the default partition and fits")


def test_an_unknown_factory_lists_the_known_ones() -> None:
    error = refused(job(placement={"factory": "mimer"}))
    assert error.code == Code.UNKNOWN_FACTORY
    assert str(error) == "unknown Factory 'mimer'; the Factories are: alpha, bravo, charlie, delta, echo"


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (
            FactoryStatus(healthy=True, drained=True, detail="upgrade"),
            Code.FACTORY_DRAINED,
            "Factory bravo is drained: upgrade; the job fits it and can wait",
        ),
        (
            FactoryStatus(healthy=False, detail="slurmrestd: 503"),
            Code.FACTORY_UNHEALTHY,
            "Factory bravo is unhealthy: slurmrestd: 503; the job fits it and can wait",
        ),
    ],
)
def test_an_explicit_factory_that_is_unavailable_is_an_error_not_a_detour(
    status: FactoryStatus, code: PlacementCode, message: str
) -> None:
    error = refused(job(placement={"factory": "bravo"}), {**ALL_UP, "bravo": status})
    assert (error.code, str(error), error.transient) == (code, message, True)


def test_an_explicit_factory_the_job_does_not_fit_says_so_even_when_drained() -> None:
    error = refused(
        job(gpus_per_node=1, gpu_type="a100", placement={"factory": "bravo"}),
        {**ALL_UP, "bravo": FactoryStatus(healthy=True, drained=True)},
    )
    assert error.code == Code.GPU_TYPE_UNAVAILABLE  # waiting for bravo would never help
    assert not error.transient
    assert str(error) == (
        "no partition on Factory bravo offers a100 GPUs; a100 is offered by alpha/gpu (IT), delta/gpu (DE)"
    )


def test_an_explicit_factory_outside_the_countries_or_the_allowed_set() -> None:
    error = refused(job(placement={"factory": "bravo", "countries": ["IT"]}))
    assert error.code == Code.COUNTRY_EXCLUDED
    assert str(error) == "Factory 'bravo' is in ES, outside the allowed countries IT"
    error = refused(job(placement={"factory": "bravo"}), allowed={"alpha", "echo"})
    assert error.code == Code.FACTORY_NOT_ALLOWED
    assert str(error) == "this job may not use Factory 'bravo'; it may use: alpha, echo"


def test_an_explicit_factory_without_a_cpu_partition_refuses_cpu_jobs() -> None:
    error = refused(job(placement={"factory": "delta"}))
    assert error.code == Code.NO_CPU_PARTITION
    assert str(error) == "no CPU partition on Factory delta (and no default partition to run a CPU job in)"


# -------------------------------------------------------------------------------------------------------
# Allowed Factories (Antenna links, allocations)
# -------------------------------------------------------------------------------------------------------


def test_only_allowed_factories_are_considered() -> None:
    assert where(placed(job(gpus_per_node=2, gpu_type="h100", time_limit_min=60), allowed={"charlie"})) == (
        "charlie/gpu"
    )
    error = refused(job(gpus_per_node=2, gpu_type="h100"), allowed={"alpha", "delta"})
    assert error.code == Code.GPU_TYPE_UNAVAILABLE
    assert str(error) == (
        "no partition among the Factories this job may use offers h100 GPUs; "
        "h100 is offered by bravo/gpu (ES), charlie/gpu (FI)"
    )
    assert refused(job(), allowed=set()).code == Code.NO_FACTORY_ALLOWED


# -------------------------------------------------------------------------------------------------------
# Resources no partition offers
# -------------------------------------------------------------------------------------------------------


def test_a_gpu_type_no_factory_offers_lists_the_types_on_offer() -> None:
    error = refused(job(gpus_per_node=1, gpu_type="mi250x"))
    assert error.code == Code.GPU_TYPE_UNAVAILABLE
    assert str(error) == "no partition offers mi250x GPUs; no Factory offers mi250x; GPU types on offer: a100, h100, l4"


def test_a_gpu_type_that_exists_only_outside_the_countries_says_where() -> None:
    error = refused(job(gpus_per_node=1, gpu_type="a100", placement={"countries": ["ES", "LU"]}))
    assert error.code == Code.GPU_TYPE_UNAVAILABLE
    assert str(error) == "no partition in ES, LU offers a100 GPUs; a100 is offered by alpha/gpu (IT), delta/gpu (DE)"
    assert error.details["offered_by"] == {"alpha/gpu": "IT", "delta/gpu": "DE"}


def test_gpus_without_a_type_where_no_partition_has_any() -> None:
    error = refused(job(gpus_per_node=1, placement={"countries": ["LU"]}))
    assert error.code == Code.NO_GPUS
    assert str(error).startswith("no partition in LU has GPUs; GPUs are offered by alpha/gpu (IT), bravo/gpu (ES)")


def test_more_gpus_per_node_than_any_node_has() -> None:
    error = refused(job(gpus_per_node=8, gpu_type="a100"))
    assert error.code == Code.GPUS_PER_NODE_EXCEEDED
    assert str(error) == "8 a100 GPUs per node requested, more than any node has: alpha/gpu 4, delta/gpu 2"
    assert error.details["partitions"] == {"alpha/gpu": 4, "delta/gpu": 2}


def test_more_nodes_than_any_partition_that_fits_has() -> None:
    error = refused(job(nodes=3, gpus_per_node=2, gpu_type="a100"))
    assert error.code == Code.NODES_EXCEEDED
    assert str(error) == "3 nodes requested, more than any partition that fits has: alpha/gpu 2, delta/gpu 1"


def test_more_cpus_or_memory_per_node_than_any_node_has() -> None:
    error = refused(job(tasks_per_node=4, cpus_per_task=4, time_limit_min=10))
    assert error.code == Code.CPUS_PER_NODE_EXCEEDED
    assert str(error) == (
        "16 CPUs per node requested (tasks_per_node x cpus_per_task), more than any node that fits has: "
        "alpha/cpu 4, alpha/long 4, bravo/cpu 4, charlie/cpu 8, echo/cpu 8"
    )
    error = refused(job(memory_mb=32000, time_limit_min=10))
    assert error.code == Code.MEMORY_PER_NODE_EXCEEDED
    assert "32000 MiB of memory per node requested" in str(error)
    assert "alpha/cpu 8000 MiB, alpha/long 16000 MiB" in str(error)


def test_a_time_limit_above_every_maxtime_names_the_limit_and_the_partitions() -> None:
    error = refused(job(gpus_per_node=1, time_limit_min=300, placement={"countries": ["IT", "ES"]}))
    assert error.code == Code.TIME_LIMIT_EXCEEDED
    assert not error.transient
    assert str(error) == (
        "time limit 300 min exceeds the MaxTime of every partition in IT, ES that fits: alpha/gpu 120 min, "
        "bravo/gpu 90 min"
    )
    assert (error.details["requested"], error.details["partitions"]) == (300, {"alpha/gpu": 120, "bravo/gpu": 90})


def test_the_error_lists_only_partitions_that_passed_every_earlier_check() -> None:
    # delta/gpu has too few a100 per node: it is not a partition "that fits", so the time error leaves it out.
    error = refused(job(gpus_per_node=4, gpu_type="a100", time_limit_min=300))
    assert str(error) == "time limit 300 min exceeds the MaxTime of every partition that fits: alpha/gpu 120 min"


def test_no_time_limit_and_no_default_time_is_an_error_never_an_infinite_job() -> None:
    error = refused(job(gpus_per_node=1, gpu_type="h100", placement={"factory": "charlie"}))
    assert error.code == Code.NO_DEFAULT_TIME_LIMIT
    assert str(error) == (
        "no time limit given, and no partition on Factory charlie that fits has a default (DefaultTime): "
        "charlie/gpu (MaxTime 90 min); set resources.time_limit_min"
    )


def test_placement_is_deterministic() -> None:
    spec = job(gpus_per_node=1, time_limit_min=20)
    assert placed(spec) == placed(spec)


# -------------------------------------------------------------------------------------------------------
# One vocabulary with the SDK
# -------------------------------------------------------------------------------------------------------

DRAINED = FactoryStatus(healthy=True, drained=True)
# Every way placement fails, as (spec, statuses, allowed): the codes come from place() itself, not from a list.
FAILURES: list[tuple[JobSpec, dict[str, FactoryStatus] | None, set[str] | None]] = [
    (job(placement={"factory": "mimer"}), None, None),
    (job(directory="/root"), None, None),  # no Factory here has a job_root or working_roots
    (job(placement={"factory": "bravo"}), None, {"alpha"}),
    (job(), None, set()),
    (job(placement={"factory": "bravo", "countries": ["IT"]}), None, None),
    (job(placement={"countries": ["PL"]}), None, None),
    (job(gpus_per_node=1, gpu_type="mi250x"), None, None),
    (job(gpus_per_node=1, placement={"countries": ["LU"]}), None, None),
    (job(placement={"factory": "delta"}), None, None),
    (job(gpus_per_node=8, gpu_type="a100"), None, None),
    (job(nodes=3, gpus_per_node=2, gpu_type="a100"), None, None),
    (job(tasks_per_node=4, cpus_per_task=4, time_limit_min=10), None, None),
    (job(memory_mb=32000, time_limit_min=10), None, None),
    (job(gpus_per_node=1, time_limit_min=300), None, None),
    (job(gpus_per_node=1, gpu_type="h100", placement={"factory": "charlie"}), None, None),
    (job(placement={"factory": "bravo"}), {**ALL_UP, "bravo": DRAINED}, None),
    (job(placement={"factory": "bravo"}), {**ALL_UP, "bravo": FactoryStatus(healthy=False)}, None),
    (job(), {}, None),
    (JobSpec.model_validate({**job().model_dump(), "container": {"image": "/opt/images/x.sif"}}), None, None),
]


def _codes_named_in_placement() -> set[str]:
    """Every ``PlacementCode.X`` that broker/factories/placement.py mentions: what it can emit."""
    tree = ast.parse(inspect.getsource(placement_module))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "PlacementCode"
    }


# Two Factories reached through agents (placement knows them only by ``agents``), with a default job directory.
AGENT_REGISTRY: FactoryRegistry = parse_factories(
    {
        "factories": [
            {**factory(name, "IT", partition("cpu", 60, 10, 2, default=True)), "job_root": "/scratch"}
            for name in ("foxtrot", "golf")
        ]
    }
)
AGENT_UP = {factory_id: HEALTHY for factory_id in AGENT_REGISTRY.ids}
EVERY_FEATURE = frozenset(FEATURES)
NO_ENVIRONMENT = EVERY_FEATURE - {"spec.environment"}


def with_environment(**placement: Any) -> JobSpec:
    return JobSpec.model_validate(
        {"name": "t", "project": "p", "command": ["true"], "environment": {"A": "1"}, "placement": placement}
    )


def agent_refused(spec: JobSpec, agents: AgentFeatures) -> PlacementError:
    with pytest.raises(PlacementError) as caught:
        place(spec, AGENT_REGISTRY, AGENT_UP, agents=agents)
    return caught.value


AGENT_FAILURES: list[tuple[JobSpec, AgentFeatures]] = [
    (with_environment(factory="foxtrot"), {"foxtrot": None}),
    (with_environment(), {"foxtrot": NO_ENVIRONMENT, "golf": NO_ENVIRONMENT}),
]


def test_a_factory_whose_agent_lacks_a_field_the_job_uses_is_passed_over_with_the_field_named() -> None:
    agents = {"foxtrot": NO_ENVIRONMENT, "golf": EVERY_FEATURE}
    result = place(with_environment(), AGENT_REGISTRY, AGENT_UP, agents=agents)
    assert where(result) == "golf/cpu"
    assert result.skipped == (Skipped("foxtrot", "its agent lacks spec.environment"),)
    # A job that does not use the field goes to the first Factory as before.
    assert where(place(job(), AGENT_REGISTRY, AGENT_UP, agents=agents)) == "foxtrot/cpu"


def test_a_secret_environment_alone_needs_an_agent_that_announced_the_environment() -> None:
    secret_only = JobSpec.model_validate(
        {"name": "t", "project": "p", "command": ["true"], "secret_environment": {"HF_TOKEN": "x"}}
    )
    result = place(secret_only, AGENT_REGISTRY, AGENT_UP, agents={"foxtrot": NO_ENVIRONMENT, "golf": EVERY_FEATURE})
    assert where(result) == "golf/cpu"


def test_when_every_fitting_agent_lacks_a_field_the_job_must_change() -> None:
    error = agent_refused(with_environment(), {"foxtrot": NO_ENVIRONMENT, "golf": NO_ENVIRONMENT})
    assert (error.code, error.transient) == (Code.AGENT_LACKS_FEATURE, False)
    assert error.details["factories"] == {"foxtrot": ["spec.environment"], "golf": ["spec.environment"]}
    assert "foxtrot lacks spec.environment" in error.message


def test_with_no_agent_connected_the_job_waits() -> None:
    error = agent_refused(with_environment(factory="foxtrot"), {"foxtrot": None})
    assert (error.code, error.transient) == (Code.AGENT_NOT_CONNECTED, True)
    mixed = agent_refused(with_environment(), {"foxtrot": None, "golf": NO_ENVIRONMENT})
    assert (mixed.code, mixed.transient) == (Code.NO_AVAILABLE_FACTORY, True)
    assert mixed.details["factories"] == {
        "foxtrot": "no agent connected to take orders",
        "golf": "its agent lacks spec.environment",
    }


def test_a_factory_not_among_the_agents_is_not_checked_for_features() -> None:
    assert where(place(with_environment(), AGENT_REGISTRY, AGENT_UP, agents={"golf": None})) == "foxtrot/cpu"
    assert where(place(with_environment(), AGENT_REGISTRY, AGENT_UP)) == "foxtrot/cpu"


def test_every_code_placement_emits_is_an_sdk_placement_code() -> None:
    emitted = [refused(spec, statuses, allowed=allowed).code for spec, statuses, allowed in FAILURES]
    emitted += [agent_refused(spec, agents).code for spec, agents in AGENT_FAILURES]
    for code in emitted:
        assert type(code) is PlacementCode
        assert PlacementCode(code.value) is code
        problem = PLACEMENT_FAILED.problem("x", code=code)  # refuses a code outside placement_failed.*
        assert isinstance(error_from_problem(problem), PlacementFailed)
    # The cases above reach every code placement can emit, so a new failure without a case fails here.
    assert {code.name for code in emitted} == _codes_named_in_placement()
