"""Listing jobs: the filters, and opaque cursors over (created_at, id), newest first.

Keyset pagination rather than OFFSET: a page costs the same at the millionth job, and jobs created while a
client pages through never shift or repeat entries.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from broker.db.models import Job
from broker.db.repositories.errors import InvalidCursor
from conveyor.spec import JobState

_CURSOR_VERSION = 1
MAX_PAGE = 500


@dataclass(frozen=True)
class Visibility:
    """Which jobs a caller may see at all: its own jobs in the projects it is a member of (``member_of``
    None: in any project, for dev-mode principals), and every job of the projects it leads as PI."""

    owner: str
    member_of: frozenset[str] | None
    leads: frozenset[str] = frozenset()


@dataclass(frozen=True)
class JobFilter:
    """Which jobs to list; every given field must match. Empty ``states`` and ``labels`` match anything.

    ``projects`` is a visibility scope rather than a search: None means every project (an admin's view),
    a set means only those (an empty set sees nothing). ``visible_to`` applies a caller's tenancy.
    """

    states: frozenset[JobState] = frozenset()
    factory: str | None = None
    project: str | None = None
    owner: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    projects: frozenset[str] | None = None
    visible_to: Visibility | None = None


@dataclass(frozen=True)
class JobPage:
    """One page of jobs and the cursor of the next page (None on the last)."""

    items: Sequence[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class Position:
    """Where a page ends: the sort key of its last job."""

    created_at: datetime
    job_id: str


def encode_cursor(position: Position) -> str:
    raw = json.dumps([_CURSOR_VERSION, position.created_at.isoformat(), position.job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; :class:`InvalidCursor` for anything this module did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, created_at, job_id = json.loads(raw)
        when = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursor("malformed page cursor") from exc
    if version != _CURSOR_VERSION or not isinstance(job_id, str) or when.tzinfo is None:
        raise InvalidCursor("malformed page cursor")
    return Position(created_at=when, job_id=job_id)
