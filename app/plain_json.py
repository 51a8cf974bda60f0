"""Request bodies are plain JSON: UTF-8, sent as they are, one value per key. The checks the edge
(app.limits) runs on a request's head and on its body once read, before any route parses it.

Python's JSON parser would otherwise guess: it reads UTF-16 and UTF-32 (with a BOM or without) and skips a
UTF-8 BOM, and of two values for one key it keeps the last; a declared charset or Content-Encoding is ignored.
So, refused:

- a Content-Encoding other than identity, a charset other than utf-8: 415 ``unsupported_media_type``;
- a JSON body (``application/json`` or ``*/*+json``) that starts with a byte order mark, is not UTF-8, has a
  duplicate key at any depth or nests deeper than the parser goes: 400 ``malformed_request``.

A body that passes reaches the route unchanged; a syntax error is left to the route's own 422 (json_invalid).
"""

from __future__ import annotations

import codecs
import json
from email.message import Message
from typing import Any

from starlette.datastructures import Headers

from conveyor.problems import MALFORMED_REQUEST, UNSUPPORTED_MEDIA_TYPE, Problem

_IDENTITY = "identity"
_UTF8 = "utf-8"


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def encoding_problem(headers: Headers, instance: str) -> Problem | None:
    """415 for a Content-Encoding other than identity or a charset other than utf-8, else None."""
    for value in headers.getlist("content-encoding"):
        for coding in (token.strip().lower() for token in value.split(",")):
            if coding and coding != _IDENTITY:
                detail = f"Content-Encoding {coding[:32]!r} is not supported: send the body as it is (identity)"
                code = f"{UNSUPPORTED_MEDIA_TYPE.code}.content_encoding"
                return UNSUPPORTED_MEDIA_TYPE.problem(detail, code=code, instance=instance)
    charset = _media_type(headers).get_content_charset()
    if charset is not None and charset != _UTF8:
        detail = f"charset {charset[:32]!r} is not supported: send UTF-8 (charset=utf-8, or no charset)"
        code = f"{UNSUPPORTED_MEDIA_TYPE.code}.charset"
        return UNSUPPORTED_MEDIA_TYPE.problem(detail, code=code, instance=instance)
    return None


def body_problem(headers: Headers, body: bytes, instance: str) -> Problem | None:
    """400 for a JSON body that is not plain UTF-8 JSON with one value per key, else None."""
    if not body or not _is_json(_media_type(headers)):
        return None
    reason = _malformed(body)
    if reason is None:
        return None
    sub_code, detail = reason
    return MALFORMED_REQUEST.problem(detail, code=f"{MALFORMED_REQUEST.code}.{sub_code}", instance=instance)


def _malformed(body: bytes) -> tuple[str, str] | None:
    """(sub-code, detail) of what makes ``body`` more than plain UTF-8 JSON, or None."""
    return _not_utf8(body) or _not_one_value_per_key(body.decode(_UTF8))


def _not_utf8(body: bytes) -> tuple[str, str] | None:
    if body.startswith(codecs.BOM_UTF8):
        return "byte_order_mark", "the JSON body starts with a byte order mark: send UTF-8 without one"
    guessed = json.detect_encoding(body)
    if guessed != _UTF8:
        return "not_utf8", f"the JSON body is not UTF-8 (it looks like {guessed.upper()}): send UTF-8"
    try:
        body.decode(_UTF8)
    except UnicodeDecodeError as exc:
        return "not_utf8", f"the JSON body is not UTF-8 (byte {exc.start}): send UTF-8"
    return None


def _not_one_value_per_key(text: str) -> tuple[str, str] | None:
    try:
        json.loads(text, object_pairs_hook=_one_value_per_key)
    except _DuplicateKey as exc:
        return "duplicate_key", f"the key {exc.key[:64]!r} appears twice in one object of the JSON body"
    except RecursionError:
        return "nesting", "the JSON body nests arrays or objects too deeply to be read"
    except ValueError:
        return None  # a syntax error: the route answers it (422 json_invalid, with its position)
    return None


def _one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return members


def _media_type(headers: Headers) -> Message:
    """The Content-Type, parsed as the routes parse it (parameters, quoting, case)."""
    message = Message()
    message["content-type"] = headers.get("content-type", "")
    return message


def _is_json(media: Message) -> bool:
    subtype = media.get_content_subtype()
    return media.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))
