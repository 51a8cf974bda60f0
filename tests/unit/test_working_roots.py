"""Working roots: how a Factory's allowed directories match a job's working directory, and which roots a
Factory file may declare."""

from __future__ import annotations

from typing import Any

import pytest

from broker.factories import working_roots
from broker.factories.registry import FactoryConfigError, parse_factories
from slurm_adapters.errors import UnsafeRequest
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.safety import check_spec

ROOTS = ("/scratch/alpha", "/home/{user}")


@pytest.mark.parametrize(
    ("path", "user", "allowed"),
    [
        ("/scratch/alpha", None, True),
        ("/scratch/alpha/run/1", None, True),
        ("/scratch/alphabet", None, False),  # a prefix of the text, not of the path
        ("/scratch", None, False),
        ("/", None, False),
        ("/home/alice", "alice", True),
        ("/home/alice/x", "alice", True),
        ("/home/bob/x", "alice", False),
        ("/home/bob/x", None, True),  # for some user: placement's question
        ("/home/Not A User/x", None, False),
        ("/home", None, False),
    ],
)
def test_a_directory_is_within_a_root_segment_by_segment(path: str, user: str | None, allowed: bool) -> None:
    assert working_roots.allows(ROOTS, path, user) is allowed


def test_only_a_user_root_needs_the_user_to_decide() -> None:
    assert working_roots.needs_user(ROOTS, "/home/bob/x")
    assert not working_roots.needs_user(ROOTS, "/scratch/alpha/x")
    assert "({user}: the site user the job runs as)" in working_roots.listing(ROOTS)
    assert working_roots.listing(()).startswith("none")


def _factory(**extra: Any) -> dict[str, Any]:
    return {
        "id": "alpha",
        "name": "Alpha",
        "country": "IT",
        "site": "lab",
        "adapter": {"kind": "rest", "cluster": "alpha", "url": "http://127.0.0.1:6820", "jwt_key_file": "/k",
                    "operator_user": "root", "allowed_users": "alice|bob"},
        "mapping": {"default_user": "alice"},
        "partitions": [{"name": "cpu", "default": True, "max_time_min": 60, "nodes": 1, "cpus_per_node": 4,
                        "memory_mb_per_node": 8000}],
        **extra,
    }  # fmt: skip


def test_without_working_roots_the_job_root_alone_is_allowed() -> None:
    assert parse_factories({"factories": [_factory(job_root="/scratch/a")]})["alpha"].allowed_roots == ("/scratch/a",)
    assert parse_factories({"factories": [_factory()]})["alpha"].allowed_roots == ()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"working_roots": ["/"]}, "at least 2 characters"),
        ({"working_roots": ["//"]}, "other than /"),
        ({"working_roots": ["/scratch/../etc"]}, "normalized"),
        ({"working_roots": ["/scratch/"]}, "normalized"),
        ({"working_roots": ["/home/user-{user}"]}, "whole path segment"),
        ({"working_roots": ["scratch"]}, "working_roots"),
        ({"working_roots": ["/home/{user}"], "job_root": "/scratch/a"}, "outside working_roots"),
    ],
)
def test_a_factory_file_declares_only_usable_roots(extra: dict[str, Any], words: str) -> None:
    with pytest.raises(FactoryConfigError) as caught:
        parse_factories({"factories": [_factory(**extra)]})
    assert words in str(caught.value)


@pytest.mark.parametrize("field", ["working_directory", "stdout", "stderr"])
def test_adapters_refuse_paths_that_climb(field: str) -> None:
    values: dict[str, Any] = {"name": "t", "script": "true\n", "working_directory": "/scratch", "tag": "t"}
    values[field] = "/scratch/../etc/x"
    with pytest.raises(UnsafeRequest, match=r"'\.\.'"):
        check_spec(SlurmJobSpec(**values))
