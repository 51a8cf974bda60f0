"""The secrets key and what the broker makes of a job's secret environment: sealed values only the key opens
(rotation: the first key seals, every key opens), keyed fingerprints, redaction, scrubbing, and the key file's
life (made once in dev mode, mode 0600, never replaced; a configured file must be usable)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from broker.errors import SecretsUnavailable
from broker.jobs import secrets
from broker.jobs.idempotency import request_hash
from broker.secret_box import (
    DEV_KEY_FILE_NAME,
    SealedUnreadable,
    SecretBox,
    SecretKeyError,
    secret_box_from_settings,
    write_key_file,
)
from broker.settings import Settings
from conveyor.spec import JobSpec

VALUE = "hf_unit-secret-value"


def spec(**secret: str) -> JobSpec:
    return JobSpec.model_validate(
        {"name": "a", "project": "P1", "command": ["printenv"], "environment": {"PLAIN": "1"},
         "secret_environment": secret}
    )  # fmt: skip


def test_a_sealed_mapping_opens_only_with_the_key_and_shows_no_value() -> None:
    box = SecretBox.generate()
    sealed = box.seal({"HF_TOKEN": VALUE, "WANDB_API_KEY": "w"})
    assert VALUE not in sealed
    assert "HF_TOKEN" not in sealed  # the names are in the redacted spec, not readable here
    assert box.open(sealed) == {"HF_TOKEN": VALUE, "WANDB_API_KEY": "w"}
    with pytest.raises(SealedUnreadable):
        SecretBox.generate().open(sealed)
    with pytest.raises(SealedUnreadable):
        box.open(sealed[:-4] + "AAAA")


def test_a_rotated_key_file_seals_with_its_first_key_and_opens_with_every_one(tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    sealed_before = SecretBox([old]).seal({"X": VALUE})
    path = tmp_path / "keys"
    path.write_bytes(b"# new first, old until nothing needs it\n" + new + b"\n\n" + old + b"\n")
    rotated = SecretBox.from_file(path)
    assert rotated.open(sealed_before) == {"X": VALUE}
    assert SecretBox([new]).open(rotated.seal({"X": VALUE})) == {"X": VALUE}


def test_fingerprints_are_keyed_and_tell_secrets_apart() -> None:
    box, other = SecretBox.generate(), SecretBox.generate()
    one = secrets.stored(spec(HF_TOKEN=VALUE), box)
    assert one.fingerprint() == secrets.stored(spec(HF_TOKEN=VALUE), box).fingerprint()
    assert one.fingerprint() != secrets.stored(spec(HF_TOKEN=VALUE + "x"), box).fingerprint()
    assert one.fingerprint() != secrets.stored(spec(HF_TOKEN=VALUE), other).fingerprint()
    full = spec(HF_TOKEN=VALUE).model_dump(mode="json")
    assert one.fingerprint() != request_hash(full)  # never the plain hash a guess could be checked against
    assert len(one.fingerprint()) == 64  # fits idempotency_keys.request_hash


def test_the_stored_spec_keeps_the_names_and_no_value() -> None:
    box = SecretBox.generate()
    stored = secrets.stored(spec(HF_TOKEN=VALUE), box)
    assert stored.spec["secret_environment"] == {"HF_TOKEN": secrets.REDACTED}
    assert stored.spec["environment"] == {"PLAIN": "1"}
    assert VALUE not in str(stored.spec)
    assert stored.sealed is not None
    assert box.open(stored.sealed) == {"HF_TOKEN": VALUE}
    JobSpec.model_validate(stored.spec)  # the redacted spec is still a valid spec (the API shows it)


def test_a_spec_without_secrets_is_stored_as_before_with_or_without_a_key() -> None:
    plain = spec()
    for box in (None, SecretBox.generate()):
        stored = secrets.stored(plain, box)
        assert (stored.sealed, stored.spec) == (None, plain.model_dump(mode="json"))
        assert stored.fingerprint() == request_hash(plain.model_dump(mode="json"))  # old keys still replay


def test_without_a_key_secrets_are_refused_naming_them_not_their_values() -> None:
    with pytest.raises(SecretsUnavailable, match="HF_TOKEN") as refused:
        secrets.stored(spec(HF_TOKEN=VALUE), None)
    assert VALUE not in refused.value.message


def test_scrub_replaces_every_value_longest_first() -> None:
    text = f"sbatch: error: bad value {VALUE} (prefix {VALUE[:7]})"
    assert secrets.scrub(text, [VALUE[:7], VALUE, ""]) == "sbatch: error: bad value <redacted> (prefix <redacted>)"


def test_dev_mode_makes_a_key_file_once_only_its_owner_reads(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dev_mode=True)
    first = secret_box_from_settings(settings)
    path = tmp_path / DEV_KEY_FILE_NAME
    assert first is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = secret_box_from_settings(settings)
    assert again is not None
    assert again.open(first.seal({"X": VALUE})) == {"X": VALUE}  # the same key: made once, kept
    with pytest.raises(FileExistsError):
        write_key_file(path)  # never replaced


def test_outside_dev_mode_only_a_configured_file_gives_a_key(tmp_path: Path) -> None:
    assert secret_box_from_settings(Settings(data_dir=tmp_path)) is None
    assert not (tmp_path / DEV_KEY_FILE_NAME).exists()
    with pytest.raises(SecretKeyError, match="cannot read"):
        secret_box_from_settings(Settings(data_dir=tmp_path, secrets_key_file=tmp_path / "missing"))
    garbage = tmp_path / "garbage"
    garbage.write_text("not-a-fernet-key\n")
    with pytest.raises(SecretKeyError, match="Fernet key"):
        secret_box_from_settings(Settings(data_dir=tmp_path, secrets_key_file=garbage))
    good = tmp_path / "good"
    write_key_file(good)
    assert secret_box_from_settings(Settings(data_dir=tmp_path, secrets_key_file=good)) is not None
