"""The Factory file: what loads, what is refused and how precisely, and the file the lab writes for the broker."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config_files import ConfigFileError, parse_text
from broker.factories import registry as factories_module
from broker.factories.registry import Factory, FactoryConfigError, FactoryRegistry, load_factories, parse_factories
from dev.lab.describe import cluster_entry
from dev.lab.factories_config import allowed_users, write_factories
from dev.lab.layout import layout
from dev.lab.slurmconf import slurm_conf
from dev.lab.topology import CLUSTERS
from slurm_adapters.factory import CliConfig, RestConfig

VALID = """\
factories:
  - id: it4lia
    name: IT4LIA
    country: IT
    site: CINECA
    adapter:
      kind: rest
      cluster: leonardo
      url: https://slurmrest.cineca.example:6820
      jwt_key_file: /etc/conveyor/keys/leonardo.jwt
      operator_user: conveyor
      allowed_users: "[a-z][a-z0-9]{2,15}"
    mapping: {default_user: cvyjobs, default_account: EUHPC_A01_001}
    enforce_part_limits: ALL
    partitions:
      - {name: boost_usr_prod, default: true, max_time_min: 1440, default_time_min: 60, nodes: 3456,
         cpus_per_node: 32, memory_mb_per_node: 491520, gpus_per_node: {a100: 4}}
      - {name: lrd_all_serial, max_time_min: 240, nodes: 2, cpus_per_node: 4, memory_mb_per_node: 30000}
  - id: lumi
    name: LUMI AI Factory
    country: FI
    site: CSC
    adapter: {kind: cli, cluster: lumi, slurm_conf: /etc/slurm/slurm.conf, exec_prefix: [ssh, login1]}
    mapping: {default_user: cvyjobs}
    partitions:
      - {name: standard-g, max_time_min: 2880, default_time_min: 30, nodes: 2978, cpus_per_node: 56,
         memory_mb_per_node: 491520, gpus_per_node: {mi250x: 8}}
"""


def write(tmp_path: Path, text: str, name: str = "factories.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def document() -> dict[str, Any]:
    """VALID as data, to change one field at a time."""
    loaded: dict[str, Any] = yaml.safe_load(VALID)
    return loaded


def problems(document: Any) -> list[str]:
    with pytest.raises(FactoryConfigError) as caught:
        parse_factories(document, source="factories.yaml")
    return list(caught.value.problems)


# -------------------------------------------------------------------------------------------------------
# What loads
# -------------------------------------------------------------------------------------------------------


def test_a_valid_file_loads_in_config_order_with_every_field(tmp_path: Path) -> None:
    registry = load_factories(write(tmp_path, VALID))
    assert registry.ids == ("it4lia", "lumi")
    assert [factory.id for factory in registry] == ["it4lia", "lumi"]
    it4lia = registry["it4lia"]
    assert (it4lia.name, it4lia.country, it4lia.site, it4lia.enforce_part_limits) == ("IT4LIA", "IT", "CINECA", "ALL")
    assert it4lia.adapter == RestConfig(
        cluster="leonardo",
        url="https://slurmrest.cineca.example:6820",
        jwt_key_file="/etc/conveyor/keys/leonardo.jwt",
        operator_user="conveyor",
        allowed_users="[a-z][a-z0-9]{2,15}",
    )
    assert (it4lia.mapping.default_user, it4lia.mapping.default_account) == ("cvyjobs", "EUHPC_A01_001")
    prod = it4lia.partition("boost_usr_prod")
    assert (prod.default, prod.max_time_min, prod.default_time_min, prod.nodes) == (True, 1440, 60, 3456)
    assert (prod.cpus_per_node, prod.memory_mb_per_node, prod.gpus_per_node) == (32, 491520, {"a100": 4})
    serial = it4lia.partition("lrd_all_serial")
    assert (serial.default, serial.default_time_min, serial.gpus_per_node) == (False, None, {})
    assert it4lia.default_partition == prod
    assert it4lia.gpu_types == {"a100"}
    lumi = registry.get("lumi")
    assert lumi is not None
    assert lumi.adapter == CliConfig(cluster="lumi", slurm_conf="/etc/slurm/slurm.conf", exec_prefix=("ssh", "login1"))
    assert lumi.mapping.default_account is None
    assert lumi.default_partition is None
    assert registry.get("mimer") is None
    assert "lumi" in registry
    assert "mimer" not in registry


def test_the_example_in_the_module_docstring_loads() -> None:
    assert factories_module.__doc__ is not None
    example = factories_module.__doc__.split("::", 1)[1]
    registry = parse_factories(parse_text(textwrap.dedent(example), "docstring", as_json=False))
    assert registry["it4lia"].partition("boost_usr_prod").gpus_per_node == {"a100": 4}


def test_json_files_load_the_same(tmp_path: Path) -> None:
    as_json = write(tmp_path, json.dumps(document()), "factories.json")
    as_yaml = write(tmp_path, VALID)
    assert list(load_factories(as_json)) == list(load_factories(as_yaml))


def test_yaml_scalars_follow_yaml_1_2_so_norway_stays_a_country(tmp_path: Path) -> None:
    text = VALID.replace("country: FI", "country: NO").replace("name: IT4LIA", "name: 2026-01-01")
    registry = load_factories(write(tmp_path, text))
    assert registry["lumi"].country == "NO"  # YAML 1.1 would read false
    assert registry["it4lia"].name == "2026-01-01"  # ... and a date
    sexagesimal = VALID.replace("max_time_min: 240", "max_time_min: 4:00")  # YAML 1.1: 240
    with pytest.raises(FactoryConfigError) as caught:
        load_factories(write(tmp_path, sexagesimal))
    assert caught.value.issues == (
        ("it4lia", "partitions[1].max_time_min", "Input should be a valid integer (got '4:00')"),
    )
    yes = VALID.replace("default: true", "default: yes")
    with pytest.raises(FactoryConfigError, match=r"partitions\[0\]\.default: Input should be a valid boolean"):
        load_factories(write(tmp_path, yes))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("NO", "NO"),
        ("yes", "yes"),
        ("off", "off"),
        ("true", True),
        ("False", False),
        ("2026-01-01", "2026-01-01"),
        ("1:30", "1:30"),
        ("010", 10),  # YAML 1.1: octal 8
        ("0x10", "0x10"),
        ("-7", -7),
        ("1e3", 1000.0),
        ("2.5", 2.5),
        ("~", None),
        ("null", None),
    ],
)
def test_yaml_scalars_are_read_as_yaml_1_2_core_says(text: str, value: Any) -> None:
    assert parse_text(f"key: {text}\n", "t.yaml", as_json=False) == {"key": value}


# -------------------------------------------------------------------------------------------------------
# What is refused, and how precisely
# -------------------------------------------------------------------------------------------------------


def test_errors_name_the_file_the_factory_and_the_field(tmp_path: Path) -> None:
    text = VALID.replace("max_time_min: 1440", "max_time_min: 0").replace("site: CSC", "site: CSC\n    sites: [x]")
    path = write(tmp_path, text)
    with pytest.raises(FactoryConfigError) as caught:
        load_factories(path)
    error = caught.value
    assert error.source == str(path)
    assert error.issues == (
        ("it4lia", "partitions[0].max_time_min", "Input should be greater than or equal to 1 (got 0)"),
        ("lumi", "sites", "unknown field"),
    )
    assert str(error).startswith(f"{path}: 2 problems:\n")
    assert "factory it4lia: partitions[0].max_time_min: Input should be greater than or equal to 1" in str(error)


def test_strict_types_refuse_quoted_numbers_and_a_missing_field_is_named() -> None:
    doc = document()
    doc["factories"][0]["partitions"][0]["nodes"] = "3456"
    del doc["factories"][1]["mapping"]
    assert problems(doc) == [
        "factory it4lia: partitions[0].nodes: Input should be a valid integer (got '3456')",
        "factory lumi: mapping: required field is missing",
    ]


def test_an_entry_without_a_usable_id_is_named_by_its_position() -> None:
    doc = document()
    doc["factories"][1]["id"] = "LUMI"
    assert problems(doc) == ["factory LUMI: id: String should match pattern '^[a-z0-9][a-z0-9_-]*$' (got 'LUMI')"]
    del doc["factories"][1]["id"]
    assert problems(doc) == ["factory #2: id: required field is missing"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda a: a.update(url="ftp://host"), "adapter.url: must be an http:// or https:// URL, not 'ftp://host'"),
        (lambda a: a.update(jwt_key_file="key"), "adapter.jwt_key_file: must be an absolute path, not 'key'"),
        (lambda a: a.update(token_lifetime_s=3600), "adapter.token_lifetime_s: must be 1..60 s"),
        (lambda a: a.update(retries=3), "adapter.retries: unknown field"),
        (lambda a: a.update(timeout_s="8"), "adapter.timeout_s: Input should be a valid number (got '8')"),
        (lambda a: a.pop("url"), "adapter.url: required field is missing"),
        (lambda a: a.update(kind="ssh"), "adapter: Input tag 'ssh' found using 'kind' does not match"),
    ],
)
def test_adapter_errors_point_into_the_adapter(change: Any, expected: str) -> None:
    doc = document()
    change(doc["factories"][0]["adapter"])
    found = problems(doc)
    assert len(found) == 1
    assert found[0].startswith(f"factory it4lia: {expected}")


def test_cross_field_rules_report_the_field_they_concern() -> None:
    doc = document()
    partitions = doc["factories"][0]["partitions"]
    partitions[0]["default_time_min"] = 2000
    assert problems(doc) == [
        "factory it4lia: partitions[0].default_time_min: 2000 min is above the partition's max_time_min (1440 min)"
    ]
    partitions[0]["default_time_min"] = 60
    partitions[1]["default"] = True
    assert problems(doc) == [
        "factory it4lia: partitions: only one partition may be the default, not boost_usr_prod, lrd_all_serial"
    ]
    partitions[1].update(default=False, name="boost_usr_prod")
    assert problems(doc) == ["factory it4lia: partitions: partition 'boost_usr_prod' is declared 2 times"]


@pytest.mark.parametrize(
    ("user", "slurm_user", "refusal"),
    [
        ("root", "slurm", "refusing to submit as privileged user 'root'"),
        ("slurm", "slurm", "refusing to submit as privileged user 'slurm'"),
        ("Alice", "slurm", "'Alice' is not a site user name"),
    ],
)
def test_jobs_are_never_mapped_to_a_privileged_user(user: str, slurm_user: str, refusal: str) -> None:
    doc = document()
    doc["factories"][0]["mapping"]["default_user"] = user
    doc["factories"][0]["adapter"]["slurm_user"] = slurm_user
    found = problems(doc)
    assert len(found) == 1
    assert found[0].startswith("factory it4lia: mapping")
    assert refusal in found[0]


def test_duplicate_factory_ids_name_both_entries() -> None:
    doc = document()
    doc["factories"][1]["id"] = "it4lia"
    assert problems(doc) == ["factory it4lia: id: declared again: entries #1 and #2 share it"]
    with pytest.raises(ValueError, match="declared twice"):
        FactoryRegistry([*load_registry(), load_registry()["it4lia"]])


def load_registry() -> FactoryRegistry:
    return parse_factories(document())


def test_the_document_must_be_a_non_empty_factories_list() -> None:
    assert problems({"factories": []}) == ["factories: List should have at least 1 item after validation, not 0"]
    assert problems([]) == ["(top level): Input should be an object"]
    assert problems({"factory": []}) == ["factories: required field is missing", "factory: unknown field"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("f.yaml", "factories:\n  - id: a\n    id: b\n", "line 3, column 5: duplicate key 'id'"),
        ("f.yaml", "factories: [\n", "line 2, column 1:"),
        ("f.json", '{"factories": [], "factories": []}', "duplicate key 'factories'"),
        ("f.json", '{"factories": [}', "line 1, column 16: Expecting value"),
    ],
)
def test_syntax_errors_give_the_line(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigFileError) as caught:
        load_factories(path)
    assert str(caught.value).startswith(f"{path}: {expected}")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"missing\.yaml: cannot read the file"):
        load_factories(tmp_path / "missing.yaml")


# -------------------------------------------------------------------------------------------------------
# The file the lab writes for the broker
# -------------------------------------------------------------------------------------------------------


def lab_document() -> dict[str, Any]:
    """lab.json as the lab itself describes its topology (no running lab needed)."""
    sites = [layout(cluster, "bookworm") for cluster in CLUSTERS]
    return {"clusters": {s.cluster.name: cluster_entry(s, "22.05.8", inside_view=False) for s in sites}}


def assert_matches_lab(registry: FactoryRegistry, lab: dict[str, Any]) -> None:
    """Every lab cluster is a Factory whose facts are lab.json's, partition by partition and node by node."""
    assert registry.ids == tuple(lab["clusters"])
    for factory in registry:
        raw = lab["clusters"][factory.id]
        assert factory.country == raw["country"]
        assert factory.enforce_part_limits == raw["enforce_part_limits"]
        assert factory.adapter == RestConfig(
            cluster=raw["name"],
            url=raw["rest"]["url"],
            jwt_key_file=raw["jwt_key_file"],
            operator_user=raw["operator_user"],
            slurm_user=raw["slurm_user"],
            fs_root=raw["fs_root"],
            user_lookup="passwd",
            allowed_users=allowed_users(lab),
        )
        assert factory.mapping.default_user == "alice"
        assert factory.job_root == raw["scratch_dir"]
        assert factory.allowed_roots == (raw["scratch_dir"], "/home/{user}")
        assert (factory.accounting, factory.min_job_age_s) == (raw["accounting"], raw["min_job_age_s"])
        assert factory.message_timeout_s == raw["message_timeout_s"]  # the settle window rests on it
        assert factory.mapping.default_account == (raw["accounts"][0] if raw["accounts"] else None)
        nodes = {node["name"]: node for node in raw["nodes"]}
        assert [p.name for p in factory.partitions] == [p["name"] for p in raw["partitions"]]
        for partition, expected in zip(factory.partitions, raw["partitions"], strict=True):
            members = [nodes[name] for name in expected["nodes"]]
            assert partition.default == expected["default"]
            assert partition.max_time_min == expected["max_time_min"]
            assert partition.default_time_min == expected["default_time_min"]
            assert partition.nodes == len(members)
            for node in members:  # what the config promises, every node has
                assert node["cpus"] >= partition.cpus_per_node
                assert node["memory_mb"] >= partition.memory_mb_per_node
                for gpu_type, count in partition.gpus_per_node.items():
                    assert node["gpus"].get(gpu_type, 0) >= count
            assert sum(partition.gpus_per_node.values()) * len(members) == sum(expected["gpus"].values())


def test_the_lab_writes_a_factory_file_that_loads_and_matches_lab_json(tmp_path: Path) -> None:
    lab = lab_document()
    path = write_factories(lab, tmp_path / "factories.yaml")
    assert json.loads(path.read_text())  # JSON, hence YAML: read below through the YAML path
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["factories.yaml"]  # no partial file left behind
    registry = load_factories(path)
    assert_matches_lab(registry, lab)
    assert registry["alpha"].mapping.default_account == "ehpc-aif-test"  # the accounting cluster enforces it
    assert registry["alpha"].partition("gpu").gpus_per_node == {"a100": 4}


def test_only_the_expendable_cluster_has_a_shorter_message_timeout_and_its_factory_says_so(tmp_path: Path) -> None:
    """echo's slurm.conf sets MessageTimeout (its fault tests settle sooner) and its Factory entry the same value;
    every other cluster keeps Slurm's default and a slurm.conf without the line (so a warm lab keeps them up)."""
    registry = load_factories(write_factories(lab_document(), tmp_path / "factories.yaml"))
    for cluster in CLUSTERS:
        conf = slurm_conf(layout(cluster, "bookworm"), "22.05.8").splitlines()
        set_lines = [line for line in conf if line.startswith("MessageTimeout=")]
        if cluster.expendable:
            assert set_lines == ["MessageTimeout=5"], cluster.name
            assert registry[cluster.name].message_timeout_s == 5
        else:
            assert set_lines == [], cluster.name
            assert registry[cluster.name].message_timeout_s == 10  # Slurm's default


def test_per_node_facts_are_what_every_node_of_a_mixed_partition_has(tmp_path: Path) -> None:
    lab = lab_document()
    alpha = lab["clusters"]["alpha"]
    gn2 = next(node for node in alpha["nodes"] if node["name"] == "gn2")
    gn2.update(cpus=4, memory_mb=12000, gpus={"a100": 2, "h100": 1})
    registry = load_factories(write_factories(lab, tmp_path / "factories.yaml"))
    gpu = registry["alpha"].partition("gpu")
    assert (gpu.cpus_per_node, gpu.memory_mb_per_node, gpu.gpus_per_node) == (4, 12000, {"a100": 2})


def test_factory_models_are_immutable() -> None:
    factory: Factory = load_registry()["it4lia"]
    with pytest.raises(ValueError, match="frozen"):
        factory.country = "FR"  # type: ignore[misc]
