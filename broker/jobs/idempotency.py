"""The fingerprint of a submission, compared when an Idempotency-Key is reused.

Taken over the validated request, in a canonical JSON form, not over the raw bytes: a client that retries with
its keys in another order or other whitespace is sending the same request and must get the same job. A request
that holds secret values is fingerprinted whole (the same key with another secret is another request) with an
HMAC under the broker's secrets key, so the stored fingerprint cannot confirm a guessed secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

MAX_KEY_LENGTH = 255  # idempotency_keys.key


def canonical(request: Mapping[str, Any]) -> bytes:
    """``request`` as canonical JSON (sorted keys, no whitespace, UTF-8)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def request_hash(request: Mapping[str, Any], keyed: Callable[[bytes], str] | None = None) -> str:
    """SHA-256 (hex) of ``request`` as :func:`canonical` JSON; with ``keyed`` (a keyed MAC, such as
    :meth:`broker.secret_box.SecretBox.fingerprint`), that instead: for a request holding secrets."""
    data = canonical(request)
    return keyed(data) if keyed is not None else hashlib.sha256(data).hexdigest()
