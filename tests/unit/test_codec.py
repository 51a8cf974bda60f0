"""The job spec as versioned data: a round trip keeps every field; what this side does not know is refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from slurm_adapters.agent_protocol import FEATURES, features_used
from slurm_adapters.codec import SPEC_FIELDS, ProtocolError, spec_from_json, spec_to_json
from slurm_adapters.records import SlurmJobSpec

FULL = SlurmJobSpec(
    name="train",
    script="#!/bin/bash\nsrun python train.py\n",
    working_directory="/scratch/alice/run1",
    tag="job_abc",
    stdout="/scratch/alice/run1/out.txt",
    stderr="/scratch/alice/run1/err.txt",
    environment={"EPOCHS": "3", "NOTE": "caf\u00e9 \u2028 line"},
    partition="gpu",
    account="ehpc-aif",
    qos="normal",
    nodes=2,
    tasks=8,
    tasks_per_node=4,
    cpus_per_task=2,
    memory_mb=16000,
    gpus_per_node=4,
    gpu_type="a100",
    time_limit_min=90,
    requeue=False,
)


def test_every_field_survives_a_round_trip() -> None:
    assert spec_from_json(spec_to_json(FULL)) == FULL
    minimal = SlurmJobSpec(name="n", script="true\n", working_directory="/tmp", tag="t")
    assert spec_from_json(spec_to_json(minimal)) == minimal
    assert set(spec_to_json(FULL)) == {"version", *(f.name for f in dataclasses.fields(SlurmJobSpec))}
    assert len(SPEC_FIELDS) == len(dataclasses.fields(SlurmJobSpec))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"array": "0-9"}, "unknown fields ['array']"),
        ({"version": 2}, "version 2"),
        ({"nodes": True}, "nodes"),
        ({"nodes": "2"}, "nodes"),
        ({"environment": {"A": 1}}, "environment"),
        ({"name": None}, "name"),
        ({"memory_mb": 1.5}, "memory_mb"),
    ],
)
def test_a_field_this_side_does_not_know_or_cannot_read_is_refused(change: dict[str, Any], words: str) -> None:
    data = spec_to_json(FULL) | change
    with pytest.raises(ProtocolError, match=words.replace("[", r"\[").replace("]", r"\]")):
        spec_from_json(data)


def test_a_spec_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ProtocolError, match="expected an object"):
        spec_from_json(["name"])
    data = spec_to_json(FULL)
    del data["tag"]
    with pytest.raises(ProtocolError, match="missing 'tag'"):
        spec_from_json(data)


def test_only_the_fields_a_spec_uses_travel_and_name_the_features_it_needs() -> None:
    """A field at its default is left out, so an agent that does not know it still runs the job."""
    minimal = SlurmJobSpec(name="n", script="true\n", working_directory="/tmp", tag="t", nodes=2)
    assert spec_to_json(minimal) == {
        "version": 1, "name": "n", "script": "true\n", "working_directory": "/tmp", "tag": "t", "nodes": 2,
    }  # fmt: skip
    assert features_used(minimal) == {"spec.name", "spec.script", "spec.working_directory", "spec.tag", "spec.nodes"}
    assert features_used(FULL) == {feature for feature in FEATURES if feature.startswith("spec.")}
