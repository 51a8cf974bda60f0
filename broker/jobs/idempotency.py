"""The fingerprint of a submission, compared when an Idempotency-Key is reused.

Taken over the validated request, in a canonical JSON form, not over the raw bytes: a client that retries with
its keys in another order or other whitespace is sending the same request and must get the same job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

MAX_KEY_LENGTH = 255  # idempotency_keys.key


def request_hash(request: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``request`` as canonical JSON (sorted keys, no whitespace, UTF-8)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
