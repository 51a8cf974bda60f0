"""The broker's secrets key: what encrypts a job's ``secret_environment`` at rest, and keys its fingerprints.

The key file (``CONVEYOR_SECRETS_KEY_FILE``) holds one Fernet key per line: the first encrypts, every one of them
decrypts (a rotation puts the new key first and keeps the old one below until no stored value needs it). Every
broker replica must read the same file. In dev mode without a configured file, the broker makes one on first
start next to its other dev state (``<data dir>/secrets-key``, mode 0600, like the dev token); without either,
the broker keeps no secrets and refuses a job that has some (:class:`~broker.errors.SecretsUnavailable`).

Values are sealed as one Fernet token (AES-128-CBC and HMAC-SHA256, with its time) of a JSON object, so a stored
row shows neither the values nor their lengths beyond the token's. Fingerprints of requests that hold secrets
are HMAC-SHA256 under a key derived from the first key (HKDF), never a plain hash a guess could be checked against;
a fingerprint made under an older key of the file still matches its request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from broker.settings import Settings

log = logging.getLogger(__name__)

DEV_KEY_FILE_NAME = "secrets-key"
_FINGERPRINT_INFO = b"conveyor request fingerprint v1"


class SecretKeyError(ValueError):
    """The key file cannot be used (missing, unreadable, or not Fernet keys); the message says which."""


class SealedUnreadable(ValueError):
    """A sealed value that none of the broker's keys opens (a key left out of the file, or a damaged token)."""


class SecretBox:
    """Seals and opens mappings of secret values, and fingerprints requests that hold some. Never logs a value."""

    def __init__(self, keys: Sequence[bytes], source: str = "(in memory)") -> None:
        if not keys:
            raise SecretKeyError(f"{source}: no key")
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except ValueError:
            raise SecretKeyError(
                f"{source}: each line must be a Fernet key (32 url-safe base64-encoded bytes); make one with "
                "`python -m broker secrets-key FILE`"
            ) from None
        # Each key's 32 bytes (its signing and encryption halves) are an HKDF's input; the first key's fingerprints.
        self._fingerprint_keys = [
            HKDF(hashes.SHA256(), length=32, salt=None, info=_FINGERPRINT_INFO).derive(base64.urlsafe_b64decode(key))
            for key in keys
        ]
        self.source = source

    @classmethod
    def generate(cls) -> SecretBox:
        """A box with a new random key (tests)."""
        return cls([Fernet.generate_key()])

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """The box of the keys in ``path``, one per line (blank lines and ``#`` comments are skipped)."""
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretKeyError(f"cannot read the secrets key file {path}: {exc}") from None
        keys = [line.strip().encode() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return cls(keys, source=f"secrets key file {path}")

    def seal(self, values: Mapping[str, str]) -> str:
        """``values`` as one token (ASCII) only a box with the same key opens."""
        document = json.dumps(dict(values), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return self._fernet.encrypt(document.encode("utf-8")).decode("ascii")

    def open(self, token: str) -> dict[str, str]:
        """The mapping :meth:`seal` made; :class:`SealedUnreadable` when no key of this box opens it."""
        try:
            document = json.loads(self._fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, UnicodeError, ValueError):
            raise SealedUnreadable(f"no key of the {self.source} opens this sealed value") from None
        if not isinstance(document, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in document.items()
        ):
            raise SealedUnreadable("a sealed value is not a mapping of names to strings")
        return document

    def fingerprint(self, data: bytes) -> str:
        """HMAC-SHA256 (hex) of ``data`` under the fingerprint key of this box's first key."""
        return hmac.new(self._fingerprint_keys[0], data, hashlib.sha256).hexdigest()

    def older_fingerprints(self, data: bytes) -> tuple[str, ...]:
        """:meth:`fingerprint` as each older key of a rotation made it (a request fingerprinted before the
        rotation is still the same request)."""
        return tuple(hmac.new(key, data, hashlib.sha256).hexdigest() for key in self._fingerprint_keys[1:])


def write_key_file(path: Path) -> None:
    """A new key file at ``path`` only its owner can read (mode 0600); an existing file is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(Fernet.generate_key() + b"\n")


def key_file_of(settings: Settings) -> Path | None:
    """Where the settings' key is: the configured file, else in dev mode the data dir's, else nowhere."""
    if settings.secrets_key_file is not None:
        return settings.secrets_key_file
    return settings.data_dir / DEV_KEY_FILE_NAME if settings.dev_mode else None


def secret_box_from_settings(settings: Settings) -> SecretBox | None:
    """The broker's box, or None when it keeps no secrets. In dev mode without a configured file, the data
    dir's key file is made on first use. Raises :class:`SecretKeyError` for a configured file it cannot use."""
    path = key_file_of(settings)
    if path is None:
        return None
    if settings.secrets_key_file is None and not path.exists():
        try:
            write_key_file(path)
            log.info("dev mode: made the secrets key file %s (mode 0600)", path)
        except FileExistsError:
            pass  # another process of this data dir made it meanwhile
        except OSError as exc:
            raise SecretKeyError(f"dev mode: cannot make the secrets key file {path}: {exc}") from None
    return SecretBox.from_file(path)


__all__ = [
    "DEV_KEY_FILE_NAME",
    "SealedUnreadable",
    "SecretBox",
    "SecretKeyError",
    "key_file_of",
    "secret_box_from_settings",
    "write_key_file",
]
