"""A job's ``secret_environment``: written once, kept sealed, delivered to the job only, shown redacted.

Where the values live, and nowhere else:

- at rest, sealed with the broker's key (:mod:`broker.secret_box`): the job's ``secrets`` column, and a submit
  order's ``secrets`` column while the order waits for its agent (:mod:`broker.agents.orders`);
- in memory, from the dispatcher's unsealing to the adapter's submit (the job's environment at Slurm, never
  its batch script: :mod:`broker.jobs.launch`), and on the agent link when the order is handed to the agent.

Everything the broker stores or shows of the spec has each value replaced by :data:`REDACTED` (the names are
kept): the job's ``spec`` column and every answer built from it, dry runs, events and problems. The text the
dispatcher writes about a submit (Slurm's and the adapter's errors), and an agent's report of a failed submit,
have any value in them replaced too (:func:`scrub`), in case a site echoes the environment.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from broker.errors import SecretsUnavailable
from broker.jobs.idempotency import canonical, request_hash
from broker.secret_box import SecretBox
from conveyor.spec import JobSpec

REDACTED = "<redacted>"
"""What a secret's value is replaced by wherever the broker stores or shows it."""
FIELD = "secret_environment"


def redacted_values(names: Iterable[str]) -> dict[str, str]:
    """``{name: REDACTED}`` for each name: what a dry run renders in place of the values."""
    return dict.fromkeys(names, REDACTED)


def redact(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON job spec with each value of its ``secret_environment`` replaced by :data:`REDACTED`."""
    document = dict(spec)
    secrets = document.get(FIELD)
    if secrets:
        document[FIELD] = redacted_values(secrets)
    return document


def secret_names(spec: Mapping[str, Any]) -> frozenset[str]:
    """The names of a JSON job spec's secret environment (the stored, redacted spec has them all)."""
    return frozenset(spec.get(FIELD) or ())


class Stored:
    """A spec as the broker stores it: ``spec`` redacted, ``sealed`` its secret values (None without any), and
    :meth:`fingerprint` the whole request's, secrets included (:mod:`broker.jobs.idempotency`)."""

    __slots__ = ("_box", "_full", "sealed", "spec")

    def __init__(self, spec: dict[str, Any], sealed: str | None, full: dict[str, Any], box: SecretBox | None) -> None:
        self.spec = spec
        self.sealed = sealed
        self._full = full
        self._box = box

    def fingerprint(self) -> str:
        """The request's fingerprint (made only for a submit with an Idempotency-Key): keyed by the secrets key
        when it holds secrets, else the plain hash every key stored before secrets existed was made with."""
        keyed = self._box.fingerprint if self.sealed is not None and self._box is not None else None
        return request_hash(self._full, keyed)

    def older_fingerprints(self) -> tuple[str, ...]:
        """The fingerprints the older keys of a rotated key file made of this request (none without secrets)."""
        if self.sealed is None or self._box is None:
            return ()
        return self._box.older_fingerprints(canonical(self._full))


def refuse_without_box(spec: JobSpec, box: SecretBox | None) -> None:
    """:class:`SecretsUnavailable` when ``spec`` has secrets and the broker has no key to keep them with."""
    if spec.secret_environment and box is None:
        raise SecretsUnavailable(
            "this broker has no secrets key, so it cannot keep secret_environment "
            f"({', '.join(sorted(spec.secret_environment))}) encrypted, and refuses the job rather than store the "
            "values in the clear; its operators configure one with CONVEYOR_SECRETS_KEY_FILE"
        )


def stored(spec: JobSpec, box: SecretBox | None) -> Stored:
    """The stored form of ``spec`` (see :class:`Stored`); :class:`SecretsUnavailable` for secrets without a box."""
    full = spec.model_dump(mode="json")
    if not spec.secret_environment:
        return Stored(full, None, full, None)
    refuse_without_box(spec, box)
    assert box is not None
    return Stored(redact(full), box.seal(spec.secret_environment), full, box)


def scrub(text: str, values: Collection[str]) -> str:
    """``text`` with every occurrence of each value replaced by :data:`REDACTED` (longest first, so a value
    inside another is not left half-shown)."""
    for value in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def scrub_document(value: Any, values: Collection[str]) -> Any:
    """A JSON document (dicts, lists, strings...) with :func:`scrub` applied to every string in it, keys included."""
    if isinstance(value, str):
        return scrub(value, values)
    if isinstance(value, dict):
        return {scrub(str(key), values): scrub_document(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_document(item, values) for item in value]
    return value


__all__ = [
    "FIELD",
    "REDACTED",
    "Stored",
    "redact",
    "redacted_values",
    "refuse_without_box",
    "scrub",
    "scrub_document",
    "secret_names",
    "stored",
]
