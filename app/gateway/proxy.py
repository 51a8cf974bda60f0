"""What the gateway forwards to the broker, and how: the user routes only, signed, with the caller's identity
headers stripped, and the broker's answer relayed with its own URLs turned into the gateway's.

The route table is an allowlist on the raw (still percent-encoded) path: an id segment is a plain id
(``[A-Za-z0-9._~-]``, never ``..``), so no encoding trick or dot segment can turn an allowed path into an admin
one on the way (httpx itself removes dot segments). The assertion binds the target exactly as httpx sends it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
from starlette.requests import Request
from starlette.responses import Response

from app.gateway.settings import SigningKey
from app.problems import problem_response
from broker.antennas.assertion import SCHEME, BoundRequest, sign
from conveyor.problems import ProblemType

log = logging.getLogger("conveyor.gateway")

BAD_GATEWAY = ProblemType("bad_gateway", "The broker could not be reached", 502)
GATEWAY_TIMEOUT = ProblemType("gateway_timeout", "The broker did not answer in time", 504)

ID = "{id}"
_ID_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")
# (method, path segments): the routes a national user may call. Admin, token, site-account writes, undrain,
# metrics and everything else are refused by their absence.
USER_ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GET", ("v1", "me")),
    ("GET", ("v1", "me", "accounts")),
    ("GET", ("v1", "jobs")),
    ("POST", ("v1", "jobs")),
    ("GET", ("v1", "jobs", ID)),
    ("POST", ("v1", "jobs", ID, "cancel")),
    ("GET", ("v1", "jobs", ID, "events")),
    ("GET", ("v1", "jobs", ID, "output")),
    ("GET", ("v1", "factories")),
    ("GET", ("v1", "factories", ID)),
    ("GET", ("v1", "projects")),
    ("GET", ("v1", "projects", ID, "usage")),
    ("GET", ("v1", "projects", ID, "members")),
)

# An allowlist: Authorization, Cookie, Proxy-Authorization, Forwarded, X-Forwarded-*, X-Real-IP, Conveyor-* and
# X-Conveyor-* (identity claims the caller could forge) and hop-by-hop headers are never forwarded.
FORWARDED_REQUEST_HEADERS = frozenset({"content-type", "accept", "accept-language", "idempotency-key", "user-agent"})
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer", "transfer-encoding",
     "upgrade"}
)  # fmt: skip
# Set again by the gateway's own server (length, date, server) or no longer true (httpx decoded the body).
_NOT_RELAYED = _HOP_BY_HOP | {"content-length", "content-encoding", "date", "server", "set-cookie"}
_LINK_TARGET = re.compile(r"<([^>]*)>")
_QUERY_SAFE = "".join(map(chr, range(0x21, 0x7F)))  # printable ASCII, escapes included, passes as it is


def is_user_route(method: str, raw_path: str) -> bool:
    """Whether ``method`` on ``raw_path`` (percent-encoded, without query) is a user route of /v1."""
    if not raw_path.startswith("/"):
        return False
    segments = raw_path[1:].split("/")
    return any(
        method == allowed and len(pattern) == len(segments) and all(map(_matches, pattern, segments))
        for allowed, pattern in USER_ROUTES
    )


def _matches(pattern: str, segment: str) -> bool:
    if pattern == ID:
        return _ID_SEGMENT.fullmatch(segment) is not None and ".." not in segment
    return pattern == segment


def incoming_target(request: Request) -> tuple[str, str]:
    """(raw path, query string) as the client sent them. The query is forwarded unchanged; a byte outside
    printable ASCII (which uvicorn's h11 refuses anyway) is percent-encoded rather than re-read as text."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else request.url.path
    return path, quote_from_bytes(request.scope.get("query_string", b""), safe=_QUERY_SAFE)


def request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's headers the broker may see."""
    return [(name, value) for name, value in headers if name.lower() in FORWARDED_REQUEST_HEADERS]


class BodyTooLarge(Exception):
    """The request body exceeds the gateway's limit (413)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


@dataclass(frozen=True, slots=True)
class Rewriter:
    """Turns URLs under the broker's base URL into the same URLs under the gateway's."""

    broker_url: str
    gateway_url: str

    def url(self, value: str) -> str:
        base = self.broker_url
        if value == base or value.startswith((base + "/", base + "?")):
            return self.gateway_url + value[len(base) :]
        return value

    def link(self, value: str) -> str:
        return _LINK_TARGET.sub(lambda match: f"<{self.url(match[1])}>", value)

    def json_body(self, content: bytes) -> bytes:
        """The body with absolute broker URLs rewritten; byte for byte the same when there are none."""
        if self.broker_url.encode() not in content:
            return content
        try:
            document = json.loads(content)
        except ValueError:
            return content
        rewritten = _map_strings(document, self.url)
        if rewritten == document:
            return content
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    if isinstance(value, dict):
        return {key: _map_strings(item, change) for key, item in value.items()}
    return value


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class Proxy:
    """Forwards one authenticated request to the broker with one shared HTTP client (owned by the lifespan)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        broker_url: str,
        key: SigningKey,
        antenna: str,
        audience: str,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._broker_url = broker_url
        self._key = key
        self._antenna = antenna
        self._audience = audience
        self._timeout_s = timeout_s

    async def forward(self, request: Request, subject: str, body: bytes, gateway_url: str) -> Response:
        """The broker's answer to ``request`` made on behalf of ``subject``; 502/504 problems when it fails."""
        raw_path, query = incoming_target(request)
        instance = request.url.path
        url = httpx.URL(self._broker_url + raw_path + (f"?{query}" if query else ""))
        target = url.raw_path.decode("ascii")  # path and query exactly as they go on the wire
        assertion = sign(
            self._key.key, kid=self._key.kid, alg=self._key.alg, antenna=self._antenna, subject=subject,
            audience=self._audience, request=BoundRequest(request.method, target, body),
        )  # fmt: skip
        headers = [*request_headers(request.headers.items()), ("Authorization", f"{SCHEME} {assertion}")]
        outgoing = self._client.build_request(request.method, url, headers=headers, content=body)
        try:
            answer = await self._client.send(outgoing)
        except httpx.TimeoutException as exc:
            log.warning("broker timed out on %s %s: %r", request.method, target, exc)
            detail = (
                f"the broker did not answer within {self._timeout_s:g} s; the request may have been carried out "
                "(retry a submission with the same Idempotency-Key)"
            )
            return problem_response(GATEWAY_TIMEOUT.problem(detail, instance=instance))
        except httpx.HTTPError as exc:
            log.warning("broker unreachable on %s %s: %r", request.method, target, exc)
            detail = f"the broker could not be reached ({type(exc).__name__}); retry later"
            return problem_response(BAD_GATEWAY.problem(detail, instance=instance))
        return relay(answer, Rewriter(self._broker_url, gateway_url))


def relay(answer: httpx.Response, rewriter: Rewriter) -> Response:
    """The broker's answer for the caller: status and body as sent, headers without hop-by-hop ones."""
    content = answer.content
    if _is_json(answer.headers.get("content-type")):
        content = rewriter.json_body(content)
    response = Response(content=content, status_code=answer.status_code)
    named = {token.strip().lower() for token in answer.headers.get("connection", "").split(",")}
    for name, value in answer.headers.multi_items():
        lower = name.lower()
        if lower in _NOT_RELAYED or lower in named:
            continue
        if lower == "location":
            value = rewriter.url(value)  # noqa: PLW2901 - the relayed value
        elif lower == "link":
            value = rewriter.link(value)  # noqa: PLW2901
        response.headers.append(name, value)
    return response
