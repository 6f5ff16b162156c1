"""Google OAUTHBEARER minted from a service account key, against a local endpoint.

The token endpoint runs in the test on 127.0.0.1 behind TLS (a throwaway CA
made here with ``cryptography``). It checks each assertion the way Google
would (RS256 signature with the key's public half, iss, aud, scope, a
one-hour lifetime) and answers with an access token or an error.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_gcp_token import Clock, _decode

from appliance.config import KafkaSection, load_box
from appliance.errors import ConfigError, TransportError
from appliance.gcp_token import (
    GRANT_TYPE,
    HEADER,
    SCOPE,
    GoogleTokenSource,
)
from appliance.kafka import common_config

EMAIL = "relay-mq01@odh-test.iam.gserviceaccount.com"
KEY_ID = "0123456789abcdef"
ACCESS = "ya29.c.first-access-secret_part-AAA"
ACCESS2 = "ya29.c.second-access-secret_part-BBB"
LIFETIME = 3599
MARGIN = 300.0
REFRESH = 900.0


# --- a throwaway CA and a 127.0.0.1 server certificate ---------------------


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    other_ca_file: Path
    cert_file: Path
    key_file: Path


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """CA, other CA and a server certificate for IP 127.0.0.1, as PEM files."""
    base = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = _ca("store-relay test CA")
    _, other_cert = _ca("store-relay other CA")
    server_key, server_cert = _server_cert(ca_key, ca_cert)
    paths = Tls(base / "ca.pem", base / "other.pem", base / "srv.pem", base / "srv.key")
    paths.ca_file.write_bytes(_pem_cert(ca_cert))
    paths.other_ca_file.write_bytes(_pem_cert(other_cert))
    paths.cert_file.write_bytes(_pem_cert(server_cert))
    paths.key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def sa_key() -> rsa.RSAPrivateKey:
    """The service account's RSA key (one per module: generation costs CPU)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


# --- the token endpoint ----------------------------------------------------


@dataclass
class Endpoint:
    """What the endpoint answers, and what it saw."""

    public_key: rsa.RSAPublicKey
    token_uri: str = ""
    status: int = 200
    reply: dict[str, Any] = field(
        default_factory=lambda: {
            "access_token": ACCESS,
            "expires_in": LIFETIME,
            "token_type": "Bearer",
        }
    )
    hits: int = 0
    assertions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    stall: bool = False

    def check(self, form: dict[str, list[str]], content_type: str) -> str:
        """'' when the request is what Google expects, else what is wrong."""
        if content_type != "application/x-www-form-urlencoded":
            return f"content type {content_type!r}"
        if form.get("grant_type") != [GRANT_TYPE]:
            return f"grant_type {form.get('grant_type')!r}"
        assertion = form.get("assertion", [""])[0]
        self.assertions.append(assertion)
        parts = assertion.split(".")
        if len(parts) != 3:
            return "assertion is not three parts"
        try:
            self.public_key.verify(
                _decode(parts[2]),
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return "bad signature"
        header = json.loads(_decode(parts[0]))
        claims = json.loads(_decode(parts[1]))
        if header != {"alg": "RS256", "typ": "JWT", "kid": KEY_ID}:
            return f"header {header}"
        wanted = {"iss": EMAIL, "aud": self.token_uri, "scope": SCOPE}
        if {k: claims.get(k) for k in wanted} != wanted:
            return f"claims {claims}"
        if claims["exp"] - claims["iat"] != 3600:
            return f"lifetime {claims['exp'] - claims['iat']}"
        return ""


class _Handler(BaseHTTPRequestHandler):
    timeout = 5

    def do_POST(self) -> None:
        endpoint: Endpoint = self.server.endpoint  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        endpoint.hits += 1
        if endpoint.stall:
            endpoint.release.wait(5)
            return
        problem = endpoint.check(form, self.headers.get("Content-Type", ""))
        if problem:
            endpoint.problems.append(problem)
            status, body = 400, {"error": "invalid_grant"}
        elif endpoint.status != 200:
            status, body = endpoint.status, {"error": "internal_failure"}
        else:
            status, body = 200, endpoint.reply
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        """Quiet: the test reads the endpoint's record, not stderr."""


@pytest.fixture
def endpoint(tls: Tls, sa_key: rsa.RSAPrivateKey) -> Iterator[Endpoint]:
    """A TLS token endpoint on 127.0.0.1, stopped after the test."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state = Endpoint(sa_key.public_key())
    state.token_uri = f"https://127.0.0.1:{server.server_port}/token"
    server.endpoint = state  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _key_file(
    tmp_path: Path,
    key: rsa.RSAPrivateKey,
    token_uri: str,
    mode: int = 0o600,
    changes: dict[str, Any] | None = None,
) -> Path:
    info = {
        "type": "service_account",
        "project_id": "odh-test",
        "private_key_id": KEY_ID,
        "private_key": _pem_key(key),
        "client_email": EMAIL,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    info.update(changes or {})
    path = tmp_path / "relay-key.json"
    path.write_text(json.dumps(info))
    path.chmod(mode)
    return path


def _source(
    path: Path, tls: Tls, clock: Clock, *, ca_file: Path | None = None
) -> GoogleTokenSource:
    return GoogleTokenSource.from_credentials(
        path,
        ca_file=ca_file or tls.ca_file,
        timeout_s=5.0,
        margin_s=MARGIN,
        refresh_s=REFRESH,
        clock=clock,
    )


def _secrets(key: rsa.RSAPrivateKey, endpoint: Endpoint) -> list[str]:
    """Text that must never appear: tokens, key material, every assertion."""
    pem_lines = _pem_key(key).splitlines()[1:-1]
    found = [ACCESS, ACCESS2, "secret_part", *pem_lines]
    for assertion in endpoint.assertions:
        found += [assertion, *assertion.split(".")[1:]]
    return found


def _assert_secrets_absent(
    texts: list[str], key: rsa.RSAPrivateKey, endpoint: Endpoint
) -> None:
    for secret in _secrets(key, endpoint):
        for text in texts:
            assert secret not in text


def _error_texts(error: BaseException) -> list[str]:
    texts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:  # the message and every chained cause
        texts += [str(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return texts


def _log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [caplog.text, *(r.getMessage() for r in caplog.records)]


@pytest.fixture
def now() -> float:
    return float(int(time.time()))


# --- minting and refresh ---------------------------------------------------


def test_minted_token_is_googles_wrapper_around_the_access_token(
    tmp_path: Path,
    tls: Tls,
    sa_key: rsa.RSAPrivateKey,
    endpoint: Endpoint,
    now: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The signed assertion passes the endpoint; the wrapper holds its token."""
    caplog.set_level(logging.DEBUG)
    path = _key_file(tmp_path, sa_key, endpoint.token_uri)
    source = _source(path, tls, Clock(now + 0.4))

    token, expiry = source("")

    assert endpoint.problems == []
    assert endpoint.hits == 1
    assert expiry == now + 0.4 + LIFETIME
    header, claims, access = token.split(".")
    assert json.loads(_decode(header)) == HEADER
    assert json.loads(_decode(claims)) == {
        "exp": int(now) + LIFETIME,
        "iat": int(now),
        "iss": "Google",
        "scope": "kafka",
        "sub": EMAIL,
    }
    assert _decode(access).decode() == ACCESS
    assert source.service_account == EMAIL
    assert "oauth token minted" in caplog.text
    _assert_secrets_absent([*_log_texts(caplog), access], sa_key, endpoint)


def test_token_is_reused_until_the_refresh_window(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey, endpoint: Endpoint, now: float
) -> None:
    """Calls before the window cost no request; the token is the same."""
    clock = Clock(now)
    source = _source(_key_file(tmp_path, sa_key, endpoint.token_uri), tls, clock)
    first = source("")

    clock.now = now + 60
    assert source("")[0].split(".")[2] == first[0].split(".")[2]
    clock.now = now + LIFETIME - REFRESH - 1  # 901 s left
    assert source("")[1] == first[1]
    assert endpoint.hits == 1


def test_token_inside_the_margin_is_refreshed(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey, endpoint: Endpoint, now: float
) -> None:
    """With 299 s left the endpoint is asked again and its new token handed on."""
    clock = Clock(now)
    source = _source(_key_file(tmp_path, sa_key, endpoint.token_uri), tls, clock)
    source("")
    endpoint.reply = {"access_token": ACCESS2, "expires_in": LIFETIME}

    clock.now = now + LIFETIME - MARGIN + 1
    token, expiry = source("")

    assert endpoint.hits == 2
    assert endpoint.problems == []
    assert _decode(token.split(".")[2]).decode() == ACCESS2
    assert expiry == clock.now + LIFETIME


def test_failed_refresh_keeps_a_still_valid_token(
    tmp_path: Path,
    tls: Tls,
    sa_key: rsa.RSAPrivateKey,
    endpoint: Endpoint,
    now: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HTTP 500 with 720 s left: the old token goes out, a WARNING says why."""
    caplog.set_level(logging.DEBUG)
    clock = Clock(now)
    source = _source(_key_file(tmp_path, sa_key, endpoint.token_uri), tls, clock)
    first_token, first_expiry = source("")
    endpoint.status = 500

    clock.now = now + LIFETIME - 720
    token, expiry = source("")

    assert endpoint.hits == 2
    assert (_decode(token.split(".")[2]).decode(), expiry) == (ACCESS, first_expiry)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "refresh failed" in message
    assert f"127.0.0.1:{urllib.parse.urlsplit(endpoint.token_uri).port}" in message
    assert "HTTP 500" in message
    _assert_secrets_absent(
        [*_log_texts(caplog), first_token.split(".")[2]], sa_key, endpoint
    )


@pytest.mark.parametrize("held", [False, True], ids=["no-token", "inside-margin"])
def test_failed_refresh_without_a_valid_token_is_a_transport_error(
    tmp_path: Path,
    tls: Tls,
    sa_key: rsa.RSAPrivateKey,
    endpoint: Endpoint,
    now: float,
    caplog: pytest.LogCaptureFixture,
    held: bool,
) -> None:
    """HTTP 500 and nothing usable: the error names host and status, no secret."""
    caplog.set_level(logging.DEBUG)
    clock = Clock(now)
    source = _source(_key_file(tmp_path, sa_key, endpoint.token_uri), tls, clock)
    if held:
        source("")
        clock.now = now + LIFETIME - 200  # 200 s left: inside the margin
    endpoint.status = 500

    with pytest.raises(TransportError) as info:
        source("")

    text = str(info.value)
    assert "kafka.oauth_credentials_file" in text
    assert f"token endpoint {urllib.parse.urlsplit(endpoint.token_uri).netloc}" in text
    assert "HTTP 500 internal_failure" in text
    assert endpoint.hits == (2 if held else 1)
    assert len(endpoint.assertions) == endpoint.hits
    _assert_secrets_absent(
        [*_error_texts(info.value), *_log_texts(caplog)], sa_key, endpoint
    )


def test_reply_without_token_is_refused(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey, endpoint: Endpoint, now: float
) -> None:
    """HTTP 200 without access_token: an error that says what was expected."""
    endpoint.reply = {"token_type": "Bearer", "expires_in": LIFETIME}
    source = _source(_key_file(tmp_path, sa_key, endpoint.token_uri), tls, Clock(now))
    with pytest.raises(TransportError, match="without access_token and expires_in"):
        source("")


def test_stalled_endpoint_is_bounded_by_the_timeout(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey, endpoint: Endpoint, now: float
) -> None:
    """An endpoint that never answers costs oauth_timeout_s, not forever."""
    endpoint.stall = True
    path = _key_file(tmp_path, sa_key, endpoint.token_uri)
    source = GoogleTokenSource.from_credentials(
        path, ca_file=tls.ca_file, timeout_s=0.5, clock=Clock(now)
    )
    started = time.monotonic()
    with pytest.raises(TransportError, match="unreachable"):
        source("")
    assert time.monotonic() - started < 3


# --- refusals --------------------------------------------------------------


def test_untrusted_server_certificate_is_refused(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey, endpoint: Endpoint, now: float
) -> None:
    """A certificate from another CA fails TLS before any request is sent."""
    path = _key_file(tmp_path, sa_key, endpoint.token_uri)
    source = _source(path, tls, Clock(now), ca_file=tls.other_ca_file)
    with pytest.raises(TransportError, match="certificate verify failed"):
        source("")
    assert endpoint.hits == 0


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_open_to_others_is_refused(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey, mode: int
) -> None:
    """Group or world access: refused, naming the path and mode, not the key."""
    path = _key_file(tmp_path, sa_key, "https://127.0.0.1:9/token", mode=mode)
    with pytest.raises(ConfigError) as info:
        _source(path, tls, Clock(0))
    text = str(info.value)
    assert str(path) in text
    assert f"mode {mode:04o}" in text
    for line in _pem_key(sa_key).splitlines()[1:-1]:
        assert line not in text


def test_key_file_0400_is_accepted(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey
) -> None:
    """Read-only for the owner is fine (systemd credentials are 0400)."""
    path = _key_file(tmp_path, sa_key, "https://127.0.0.1:9/token", mode=0o400)
    assert _source(path, tls, Clock(0)).service_account == EMAIL


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-key\n"}, "private_key"),
        ({"client_email": ""}, "no client_email"),
        ({"token_uri": "http://127.0.0.1:9/token"}, "must be https"),
        ({"token_uri": "https://127.0.0.1:x9/token"}, "must be https"),
        ({"type": "authorized_user"}, "not a service account key"),
    ],
)
def test_malformed_key_file_is_refused_without_its_content(
    tmp_path: Path,
    tls: Tls,
    sa_key: rsa.RSAPrivateKey,
    changes: dict[str, Any],
    expected: str,
) -> None:
    """Each fault names the field expected; no key material in the chain."""
    path = _key_file(tmp_path, sa_key, "https://127.0.0.1:9/token", changes=changes)
    with pytest.raises(ConfigError, match=expected) as info:
        _source(path, tls, Clock(0))
    for text in _error_texts(info.value):
        assert "not-a-key" not in text
        for line in _pem_key(sa_key).splitlines()[1:-1]:
            assert line not in text


def test_key_file_that_is_not_json_is_refused(tmp_path: Path, tls: Tls) -> None:
    """A truncated file: no JSON error (which would carry the text) in the chain."""
    path = tmp_path / "key.json"
    path.write_text('{"private_key": "-----BEGIN PRIVATE KEY-----\\nsecret_part')
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is not JSON") as info:
        _source(path, tls, Clock(0))
    for text in _error_texts(info.value):
        assert "secret_part" not in text


def test_explicit_service_account_must_match_the_key(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey
) -> None:
    """oauth_service_account defaults to client_email; a different one is wrong."""
    path = _key_file(tmp_path, sa_key, "https://127.0.0.1:9/token")
    same = GoogleTokenSource.from_credentials(path, EMAIL, ca_file=tls.ca_file)
    assert same.service_account == EMAIL
    with pytest.raises(ConfigError, match=r"oauth_service_account.*client_email"):
        GoogleTokenSource.from_credentials(
            path, "other@odh-test.iam.gserviceaccount.com", ca_file=tls.ca_file
        )


# --- settings and wiring ---------------------------------------------------


def _box(tmp_path: Path, kafka: str) -> Path:
    path = tmp_path / "box.toml"
    path.write_text(
        '[store]\nid = "MQ01"\n[kafka]\nbootstrap = "kafka.example:9092"\n'
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "OAUTHBEARER"\n' + kafka
    )
    return path


def test_settings_take_exactly_one_token_origin(tmp_path: Path) -> None:
    """Both files set, or neither: refused at load, naming both settings."""
    both = _box(
        tmp_path,
        'oauth_credentials_file = "/etc/appliance/key.json"\n'
        'oauth_token_file = "/run/appliance/token.json"\n',
    )
    with pytest.raises(ConfigError, match="got oauth_credentials_file and oauth_"):
        load_box(both)
    with pytest.raises(ConfigError, match="got neither"):
        load_box(_box(tmp_path, ""))
    alone = load_box(_box(tmp_path, 'oauth_credentials_file = "/k.json"\n'))
    assert alone.kafka.oauth_credentials_file == Path("/k.json")


def test_oauthbearer_settings_mint_through_oauth_cb(
    tmp_path: Path, tls: Tls, sa_key: rsa.RSAPrivateKey, endpoint: Endpoint
) -> None:
    """common_config hands librdkafka a source that mints from the key."""
    kafka = KafkaSection(
        bootstrap="bootstrap.odh.managedkafka.europe-west9.cloud.goog:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        oauth_credentials_file=_key_file(tmp_path, sa_key, endpoint.token_uri),
        oauth_ca_file=tls.ca_file,
        oauth_timeout_s=5,
    )
    conf = common_config(kafka)

    source = conf["oauth_cb"]
    assert isinstance(source, GoogleTokenSource)
    assert source.service_account == EMAIL
    assert source.minter is not None and source.minter.timeout_s == 5
    assert conf["enable.ssl.certificate.verification"] is True
    token, _ = source("")
    assert _decode(token.split(".")[2]).decode() == ACCESS
    assert endpoint.problems == []


def test_oauthbearer_settings_refuse_an_open_key_at_start(
    tmp_path: Path, sa_key: rsa.RSAPrivateKey
) -> None:
    """A 0644 key fails the client's configuration, before any connection."""
    path = _key_file(tmp_path, sa_key, "https://127.0.0.1:9/token", mode=0o644)
    kafka = KafkaSection(
        bootstrap="kafka.example:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        oauth_credentials_file=path,
    )
    with pytest.raises(ConfigError, match="mode 0644"):
        common_config(kafka)
