"""The directories a Factory lets jobs work in: its ``working_roots``, matched segment by segment.

A root is an absolute, normalized path; a segment ``{user}`` stands for the site user the job runs as (so
``/home/{user}`` is that user's home). A working directory is allowed when it is a root or lies below one.
Paths are compared as normalized text (the wire spec normalizes and refuses ``..``); nothing here touches a
filesystem, so a site's symlinks are the site's business.
"""

from __future__ import annotations

from collections.abc import Iterable

from slurm_adapters.safety import is_user_name

USER = "{user}"


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


def check_root(root: str) -> str:
    """``root`` if it is usable as a working root: absolute, normalized, not "/", ``{user}`` only as a segment."""
    segments = _segments(root)
    if not root.startswith("/") or not segments:
        raise ValueError(f"{root!r} must be an absolute directory other than /")
    if root != "/" + "/".join(segments) or any(segment in {".", ".."} for segment in segments):
        raise ValueError(f"{root!r} must be normalized (no '.', '..', '//' or trailing '/')")
    if any(USER in segment and segment != USER for segment in segments):
        raise ValueError(f"{root!r}: {USER} must be a whole path segment")
    return root


def within(path: str, root: str, user: str | None) -> bool:
    """``path`` is ``root`` or below it; ``{user}`` matches ``user`` (None: any valid user name)."""
    have, want = _segments(path), _segments(root)
    if len(have) < len(want):
        return False
    for segment, wanted in zip(have, want, strict=False):
        if wanted == USER:
            if not (segment == user if user is not None else is_user_name(segment)):
                return False
        elif segment != wanted:
            return False
    return True


def allows(roots: Iterable[str], path: str, user: str | None) -> bool:
    """Whether ``path`` lies within one of ``roots`` for ``user`` (None: for some user)."""
    return any(within(path, root, user) for root in roots)


def needs_user(roots: Iterable[str], path: str) -> bool:
    """Whether only a ``{user}`` root can allow ``path``: the site user must be known to decide."""
    return not any(USER not in _segments(root) and within(path, root, None) for root in roots)


def listing(roots: Iterable[str]) -> str:
    """The roots as a message names them."""
    shown = list(roots)
    if not shown:
        return "none (the Factory allows no working directory)"
    text = ", ".join(shown)
    return text + (f" ({USER}: the site user the job runs as)" if any(USER in root for root in shown) else "")


__all__ = ["USER", "allows", "check_root", "listing", "needs_user", "within"]
