"""OIDC verification against a real JWKS endpoint over HTTPS on 127.0.0.1.

The server is ``http.server`` with TLS in a thread of this process, on an ephemeral port, with a CA and a
server certificate made here; it counts the requests for each path, so the refetch rate limit is observed
where it matters, at the issuer. The verifier's clock is fake: rate limits are crossed by advancing it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from broker.identity.oidc import InvalidToken, IssuerConfig, IssuerUnavailable, OidcVerifier, Reason
from tests.clocks import ManualClock
from tests.unit.test_oidc import (
    AUDIENCE,
    SigningKey,
    claims_for,
    ec_key,
    forge_hs256,
    rsa_key,
    unsigned_token,
    with_claims_swapped,
)

# --- a CA, a server certificate for 127.0.0.1, and the JWKS server ---------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_pki(directory: Path) -> Pki:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (with the extensions strict X.509 wants)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Conveyor OIDC test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pki(
        ca=_write_pem(directory / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        server_cert=_write_pem(directory / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM)),
        server_key=_write_pem(
            directory / "server-key.pem",
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
    )


class JwksServer:
    """JWK Sets over HTTPS on 127.0.0.1 (an ephemeral port), served from a thread; counts requests per path."""

    def __init__(self, pki: Pki) -> None:
        self._documents: dict[str, bytes] = {}
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer._counts[self.path] += 1
                    body = outer._documents.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = False  # so that server_close joins every handler thread it started
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port: int = self._httpd.socket.getsockname()[1]
        # The socket already listens: a connection made before serve_forever runs waits in the backlog.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="jwks-https", daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def publish(self, path: str, keys: list[dict[str, Any]]) -> None:
        with self._lock:
            self._documents[path] = json.dumps({"keys": keys}).encode()

    def requests(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("oidc-pki"))


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[JwksServer]:
    jwks = JwksServer(pki)
    yield jwks
    jwks.close()


@dataclass(frozen=True)
class Realm:
    """One issuer on the test server, with a path of its own so that its request count is its own."""

    issuer: str
    jwks_path: str
    jwks_uri: str

    def config(self, **changes: Any) -> IssuerConfig:
        values: dict[str, Any] = {
            "issuer": self.issuer,
            "audience": AUDIENCE,
            "jwks_uri": self.jwks_uri,
            "algorithms": ["RS256", "ES256"],
        }
        values.update(changes)
        return IssuerConfig(**values)


def new_realm(server: JwksServer) -> Realm:
    path = f"/realms/{uuid.uuid4().hex[:12]}"
    return Realm(issuer=server.url(path), jwks_path=f"{path}/certs", jwks_uri=server.url(f"{path}/certs"))


RSA = rsa_key("https-rsa-1")
EC = ec_key("https-ec-1")


@pytest.fixture
def realm(server: JwksServer) -> Realm:
    chosen = new_realm(server)
    server.publish(chosen.jwks_path, [RSA.jwk(), EC.jwk()])
    return chosen


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(10_000.0)  # any start: only differences count


@pytest.fixture
async def verifier(realm: Realm, pki: Pki, clock: ManualClock) -> AsyncIterator[OidcVerifier]:
    async with OidcVerifier([realm.config()], verify=pki.ca, clock=clock) as made:
        yield made


async def refused(verifier: OidcVerifier, token: str) -> Reason:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return caught.value.reason


# --- accepting -------------------------------------------------------------------------------------------------


async def test_rs256_and_es256_tokens_verify_to_issuer_and_subject(
    server: JwksServer, realm: Realm, verifier: OidcVerifier
) -> None:
    rs = await verifier.verify(RSA.sign(claims_for(realm.issuer, sub="alice")))
    es = await verifier.verify(EC.sign(claims_for(realm.issuer, sub="bob")))
    assert (rs.key, es.key) == ((realm.issuer, "alice"), (realm.issuer, "bob"))
    assert rs.claims["aud"] == AUDIENCE
    assert server.requests(realm.jwks_path) == 1  # fetched once, then cached


async def test_one_subject_at_two_issuers_is_two_identities(server: JwksServer, pki: Pki, clock: ManualClock) -> None:
    first, second = new_realm(server), new_realm(server)
    other = rsa_key("https-rsa-other")
    server.publish(first.jwks_path, [RSA.jwk()])
    server.publish(second.jwks_path, [other.jwk()])
    context = ssl.create_default_context(cafile=str(pki.ca))  # an SSLContext works as well as a CA path
    async with OidcVerifier([first.config(), second.config()], verify=context, clock=clock) as verifier:
        one = await verifier.verify(RSA.sign(claims_for(first.issuer, sub="carol")))
        two = await verifier.verify(other.sign(claims_for(second.issuer, sub="carol")))
        assert one.key == (first.issuer, "carol")
        assert two.key == (second.issuer, "carol")
        # A key of one issuer never vouches for the other.
        assert await refused(verifier, RSA.sign(claims_for(second.issuer))) == Reason.UNKNOWN_KEY


# --- refusing --------------------------------------------------------------------------------------------------


def _cases(issuer: str) -> dict[str, tuple[str, Reason]]:
    now = int(claims_for()["iat"])
    impostor = SigningKey(RSA.kid, "RS256", rsa_key("https-impostor").private)
    good = RSA.sign(claims_for(issuer))
    return {
        "unknown issuer": (RSA.sign(claims_for("https://127.0.0.1:1/realms/evil")), Reason.UNKNOWN_ISSUER),
        "wrong audience": (RSA.sign(claims_for(issuer, aud="another-service")), Reason.BAD_AUDIENCE),
        "alg none": (unsigned_token(claims_for(issuer), kid=RSA.kid), Reason.BAD_ALGORITHM),
        "HS256 with the public key": (
            forge_hs256(claims_for(issuer), RSA.public_pem(), RSA.kid),
            Reason.BAD_ALGORITHM,
        ),
        "expired": (RSA.sign(claims_for(issuer, iat=now - 900, exp=now - 600)), Reason.EXPIRED),
        "not yet valid": (RSA.sign(claims_for(issuer, nbf=now + 600, exp=now + 900)), Reason.NOT_YET_VALID),
        "bad signature (claims changed)": (
            with_claims_swapped(good, claims_for(issuer, sub="root")),
            Reason.BAD_SIGNATURE,
        ),
        "bad signature (another key, our kid)": (impostor.sign(claims_for(issuer)), Reason.BAD_SIGNATURE),
        "missing sub": (RSA.sign(claims_for(issuer, sub=None)), Reason.MISSING_CLAIM),
    }


@pytest.mark.parametrize("case", list(_cases("https://x.example")))
async def test_each_negative_case_is_refused_with_its_reason(
    server: JwksServer, realm: Realm, verifier: OidcVerifier, case: str
) -> None:
    await verifier.verify(RSA.sign(claims_for(realm.issuer)))  # keys are cached: no case is a fetch failure
    token, reason = _cases(realm.issuer)[case]
    assert await refused(verifier, token) == reason
    assert server.requests(realm.jwks_path) == 1  # none of these is a reason to ask the issuer again


async def test_an_unknown_kid_is_refused_after_one_rate_limited_refetch(
    server: JwksServer, realm: Realm, verifier: OidcVerifier, clock: ManualClock
) -> None:
    await verifier.verify(RSA.sign(claims_for(realm.issuer)))
    clock.advance(60)
    stranger = rsa_key("https-never-published")
    assert await refused(verifier, stranger.sign(claims_for(realm.issuer))) == Reason.UNKNOWN_KEY
    assert server.requests(realm.jwks_path) == 2  # it asked once whether the key was new
    assert await refused(verifier, stranger.sign(claims_for(realm.issuer))) == Reason.UNKNOWN_KEY
    assert server.requests(realm.jwks_path) == 2  # and not again within the interval


# --- rotation and the refetch rate limit -----------------------------------------------------------------------


async def test_key_rotation_refetches_once_and_verifies(
    server: JwksServer, realm: Realm, verifier: OidcVerifier, clock: ManualClock
) -> None:
    await verifier.verify(RSA.sign(claims_for(realm.issuer)))
    clock.advance(61)
    rotated = rsa_key("https-rsa-2")
    server.publish(realm.jwks_path, [RSA.jwk(), rotated.jwk(), EC.jwk()])  # the overlap an issuer keeps
    identity = await verifier.verify(rotated.sign(claims_for(realm.issuer, sub="dave")))
    assert identity.key == (realm.issuer, "dave")
    assert server.requests(realm.jwks_path) == 2
    for _ in range(3):  # the new key is cached now, and the old one still verifies
        await verifier.verify(rotated.sign(claims_for(realm.issuer)))
        await verifier.verify(RSA.sign(claims_for(realm.issuer)))
    assert server.requests(realm.jwks_path) == 2


async def test_an_unknown_kid_flood_refetches_at_most_once_per_interval(
    server: JwksServer, realm: Realm, verifier: OidcVerifier, clock: ManualClock
) -> None:
    await verifier.verify(RSA.sign(claims_for(realm.issuer)))
    clock.advance(61)
    forger = rsa_key("https-forger")
    tokens = [forger.sign(claims_for(realm.issuer), kid=f"made-up-{n}") for n in range(100)]
    results = await asyncio.gather(*(verifier.verify(token) for token in tokens), return_exceptions=True)
    assert all(isinstance(result, InvalidToken) and result.reason == Reason.UNKNOWN_KEY for result in results)
    assert server.requests(realm.jwks_path) == 2  # the first fetch, and one refetch for the whole flood
    for token in tokens[:20]:
        assert await refused(verifier, token) == Reason.UNKNOWN_KEY
    assert server.requests(realm.jwks_path) == 2
    clock.advance(60)  # the next interval allows the next refetch, one again
    await asyncio.gather(*(verifier.verify(token) for token in tokens), return_exceptions=True)
    assert server.requests(realm.jwks_path) == 3


# --- where keys may come from ----------------------------------------------------------------------------------


def test_a_jwks_served_over_plain_http_is_refused_by_config_validation(server: JwksServer, realm: Realm) -> None:
    with pytest.raises(ValidationError, match="https"):
        realm.config(jwks_uri=f"http://127.0.0.1:{server.port}{realm.jwks_path}")


async def test_a_server_outside_the_configured_trust_is_refused(
    server: JwksServer, realm: Realm, clock: ManualClock
) -> None:
    async with OidcVerifier([realm.config()], clock=clock) as system_trust:  # the test CA is not a system CA
        with pytest.raises(IssuerUnavailable, match="ConnectError") as caught:
            await system_trust.verify(RSA.sign(claims_for(realm.issuer)))
    assert caught.value.issuer == realm.issuer
    assert server.requests(realm.jwks_path) == 0  # the TLS handshake failed: no request was ever sent


async def test_a_missing_jwks_is_issuer_unavailable(server: JwksServer, pki: Pki, clock: ManualClock) -> None:
    nowhere = new_realm(server)  # nothing published at its path: 404
    async with OidcVerifier([nowhere.config()], verify=pki.ca, clock=clock) as verifier:
        with pytest.raises(IssuerUnavailable, match="HTTP 404"):
            await verifier.verify(RSA.sign(claims_for(nowhere.issuer)))
    assert server.requests(nowhere.jwks_path) == 1
