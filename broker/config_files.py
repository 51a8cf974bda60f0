"""Reading reviewable config files (YAML or JSON) without YAML's surprises, and saying precisely what is wrong.

YAML 1.1, which PyYAML implements, reads ``NO`` (Norway) as false, ``2026-01-01`` as a date and ``1:30`` as 90;
a config that lists countries cannot live with that. Scalars here follow YAML 1.2's core schema instead
(booleans are only true/false, no timestamps, no base-60 or octal integers), and a key given twice is an
error rather than a silent overwrite. JSON is read as JSON, with the same duplicate-key rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

Location = tuple[str | int, ...]


class ConfigFileError(ValueError):
    """A config file that cannot be used, with every problem found in it, each located as precisely as known."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"{self.source}: {len(self.problems)} problems:\n{listed}"


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in {_BOOL, _INT, _FLOAT, _TIMESTAMP}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictYamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictYamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_StrictYamlLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
_StrictYamlLoader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node)))  # type: ignore[arg-type]


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_text(text: str, source: str, *, as_json: bool) -> Any:
    """The document in ``text``; syntax errors become :class:`ConfigFileError` with their line and column."""
    if as_json:
        try:
            return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(source, [f"line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None
        except ValueError as exc:
            raise ConfigFileError(source, [str(exc)]) from None
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigFileError(source, [f"{where}{exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(source, [f"not valid YAML: {exc}"]) from None


def read_document(path: Path) -> Any:
    """A config file's document: JSON for ``*.json``, YAML (a superset of JSON) for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(str(path), [f"cannot read the file: {exc}"]) from None
    return parse_text(text, str(path), as_json=path.suffix.lower() == ".json")


def _got(value: Any) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return f" (got {text[:60]}{'...' if len(text) > 60 else ''})"
    return ""


def explain(error: ErrorDetails) -> tuple[Location, str]:
    """One pydantic error as (where, what), in words a config author can act on.

    A ``ValueError`` raised with a ``field`` attribute (e.g. ``AdapterConfigError``) extends the location.
    """
    location: Location = tuple(error["loc"])
    kind = error["type"]
    if kind == "missing":
        return location, "required field is missing"
    if kind in {"extra_forbidden", "unexpected_keyword_argument"}:
        return location, "unknown field"
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        field_name = getattr(cause, "field", None)
        if isinstance(field_name, str):
            return (*location, field_name), str(getattr(cause, "message", cause))
        return location, error["msg"].removeprefix("Value error, ")
    return location, f"{error['msg']}{_got(error.get('input'))}"


def explain_all(error: ValidationError) -> list[tuple[Location, str]]:
    return [explain(item) for item in error.errors(include_url=False)]


def dotted(location: Location) -> str:
    """``("partitions", 1, "max_time_min")`` -> ``partitions[1].max_time_min``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            text += " (the key)"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"
