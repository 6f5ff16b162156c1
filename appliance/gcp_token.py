"""OAUTHBEARER tokens for Google Cloud Managed Service for Apache Kafka.

Google's brokers do not take a bare OAuth 2.0 access token. They take a
JWT-shaped wrapper around it, three base64url parts (no ``=`` padding)
joined by dots:

1. the header ``{"typ": "JWT", "alg": "GOOG_OAUTH2_TOKEN"}``;
2. the claims ``{"exp", "iat", "iss": "Google", "scope": "kafka", "sub"}``,
   ``sub`` being the service account's email and ``exp`` the access token's
   own expiry (seconds since the epoch);
3. the access token itself, encoded like the other two parts.

Nothing is signed: the broker checks the access token with Google.

Where the access token comes from, one of two origins:

* ``kafka.oauth_credentials_file`` (store boxes): a service account JSON
  key. :class:`ServiceAccountMinter` signs an RS256 assertion with the key
  (``iss`` the key's ``client_email``, ``aud`` its ``token_uri``, scope
  ``cloud-platform``, one hour) and trades it at ``token_uri`` for an
  access token (RFC 7523 JWT bearer grant), over verified TLS, with no
  proxy and no redirect, each network step bounded by a timeout.
* ``kafka.oauth_token_file`` (hosts with an agent of their own): a file
  that the agent keeps fresh, holding the token endpoint's JSON reply
  (``access_token``, ``expires_in`` counted from the file's modification
  time) or the bare token, then taken to live one hour from that time.

Invariants:

* the access token, the private key and the signed assertion appear in no
  log line and no error message; errors name the setting, the file or the
  token endpoint's host and the HTTP status;
* a token handed to librdkafka has more than ``margin_s`` of life left when
  it is handed over, or the call fails with :class:`TransportError`, so
  the client never connects with a token about to lapse;
* a minted token is replaced once it has ``refresh_s`` (more than
  ``margin_s``) or less left; when that fails the current token is kept,
  with a WARNING, for as long as it has more than ``margin_s`` left. A
  token file is read again only inside the margin, as before: its agent
  decides when tokens change.

Worked example (Google's tokens live 3599 s, margin 300 s, refresh 900 s):
minted at t=0, expiry 3599. librdkafka asks again at about 80 % of the
lifetime it was given, t~2879 (720 s left, inside 900): a new token is
minted. Should the endpoint fail then, the old token (720 s > 300 s) is
handed over again; librdkafka asks at about t~3455 (144 s left): minting
must succeed now, or the call fails and librdkafka retries.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import logging
import re
import ssl
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from appliance.errors import ConfigError, TransportError

if TYPE_CHECKING:
    # Imported where a key is loaded or used: cryptography's modules cost
    # every leg that imports this one (the shipper, the sink) about 7 MB
    # resident, and most boxes never sign a token (issue 9's memory target).
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger(__name__)

HEADER = {"typ": "JWT", "alg": "GOOG_OAUTH2_TOKEN"}
DEFAULT_LIFETIME_S = 3600.0
DEFAULT_MARGIN_S = 300.0
DEFAULT_REFRESH_S = 900.0
DEFAULT_TIMEOUT_S = 10.0
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 3600
_MAX_REPLY_BYTES = 64 * 1024
_OAUTH_ERROR = re.compile(r"[a-z_]{1,40}")
_CREDENTIALS = "kafka.oauth_credentials_file"


class AccessToken(NamedTuple):
    """A Google access token and when it expires (seconds since the epoch)."""

    value: str
    expires_at: float


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _json_part(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def wrap(access: AccessToken, subject: str, issued_at: float) -> str:
    """The token Google's brokers expect, around one access token."""
    claims = {
        "exp": int(access.expires_at),
        "iat": int(issued_at),
        "iss": "Google",
        "scope": "kafka",
        "sub": subject,
    }
    parts = (_json_part(HEADER), _json_part(claims), _b64url(access.value.encode()))
    return ".".join(parts)


def read_access_token(
    path: Path, lifetime_s: float = DEFAULT_LIFETIME_S
) -> AccessToken:
    """Read the access token the outside agent left in ``path``."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        written = path.stat().st_mtime
    except OSError as exc:
        raise TransportError(
            f"kafka.oauth_token_file: unreadable at {path} ({exc.strerror})"
        ) from exc
    if text.startswith("{"):
        return _from_json(path, text, written)
    if not text or any(ch.isspace() for ch in text):
        raise TransportError(
            f"kafka.oauth_token_file: {path} holds no token"
            " (expected one token or the metadata server's JSON reply)"
        )
    return AccessToken(text, written + lifetime_s)


def _from_json(path: Path, text: str, written: float) -> AccessToken:
    value: Any = None
    expires_in: float | None = None
    try:
        reply = json.loads(text)
        value = reply["access_token"]
        expires_in = float(reply["expires_in"])
    except (ValueError, KeyError, TypeError):
        # Raised below, outside this block: a JSONDecodeError keeps the whole
        # text, token included, and would ride along as __context__.
        pass
    if expires_in is None:
        raise TransportError(
            f"kafka.oauth_token_file: {path} is not a token reply"
            " (expected JSON with access_token and expires_in)"
        )
    if not isinstance(value, str) or not value:
        raise TransportError(
            f"kafka.oauth_token_file: {path} has no access_token (expected a string)"
        )
    return AccessToken(value, written + expires_in)


@dataclass(frozen=True)
class ServiceAccountKey:
    """The parts of a service account JSON key that minting needs."""

    path: Path
    client_email: str
    token_uri: str
    key_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @property
    def endpoint(self) -> str:
        """``host[:port]`` of ``token_uri``: what errors and logs may show."""
        parts = urllib.parse.urlsplit(self.token_uri)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host


def load_service_account(path: Path) -> ServiceAccountKey:
    """Read a service account key, refusing one that others may read."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{_CREDENTIALS}: {path} has mode {mode:04o} (expected no group"
                " or other access, such as 0600: it holds a private key)"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{_CREDENTIALS}: unreadable at {path} ({exc.strerror})"
        ) from exc
    info: Any = None
    # Raised below, outside the block: a JSONDecodeError keeps the whole text,
    # private key included, and would ride along as __context__.
    with contextlib.suppress(ValueError):
        info = json.loads(text)
    if not isinstance(info, dict):
        raise ConfigError(
            f"{_CREDENTIALS}: {path} is not JSON (expected a service account key)"
        )
    return _key_from(path, info)


def _key_from(path: Path, info: dict[str, Any]) -> ServiceAccountKey:
    def field_of(name: str) -> str:
        value = info.get(name)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{_CREDENTIALS}: {path} has no {name} (expected a string)"
            )
        return value

    if info.get("type") != "service_account":
        raise ConfigError(
            f"{_CREDENTIALS}: {path} is not a service account key"
            " (expected type 'service_account')"
        )
    email, token_uri = field_of("client_email"), field_of("token_uri")
    if "@" not in email:
        raise ConfigError(
            f"{_CREDENTIALS}: {path} client_email {email[:60]!r} is not an email"
        )
    parts = urllib.parse.urlsplit(token_uri)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme != "https" or not parts.hostname or parts.username or not port_ok:
        raise ConfigError(
            f"{_CREDENTIALS}: {path} token_uri must be https://host[:port]/..."
            f" without user info (got scheme {parts.scheme!r})"
        )
    private_key = _private_key(path, field_of("private_key"))
    key_id = info.get("private_key_id")
    return ServiceAccountKey(
        path, email, token_uri, key_id if isinstance(key_id, str) else "", private_key
    )


def _private_key(path: Path, pem: str) -> rsa.RSAPrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    loaded: Any = None
    with contextlib.suppress(ValueError, TypeError):  # raised below, unchained
        loaded = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ConfigError(
            f"{_CREDENTIALS}: {path} private_key is not an unencrypted RSA key in"
            " PEM (expected the key file as Google issued it)"
        )
    return loaded


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A token endpoint that redirects is answered as an error, never followed."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def _opener(ca_file: Path | None) -> urllib.request.OpenerDirector:
    try:
        context = ssl.create_default_context(
            cafile=str(ca_file) if ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"kafka.oauth_ca_file: unusable CA bundle at {ca_file} ({exc})"
        ) from exc
    # No proxy: the box reaches Google directly, as it reaches the brokers.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=context),
        _NoRedirect(),
    )


class ServiceAccountMinter:
    """Trades a signed assertion for an access token at the key's token_uri."""

    def __init__(
        self,
        key: ServiceAccountKey,
        *,
        ca_file: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.key = key
        self.timeout_s = timeout_s
        self._opener = _opener(ca_file)

    def assertion(self, now: float) -> str:
        """The RS256-signed JWT that proves the key is ours (one hour)."""
        header = {"alg": "RS256", "typ": "JWT"}
        if self.key.key_id:
            header["kid"] = self.key.key_id
        issued = int(now)
        claims = {
            "iss": self.key.client_email,
            "scope": SCOPE,
            "aud": self.key.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_S,
        }
        signing_input = f"{_json_part(header)}.{_json_part(claims)}".encode()
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        signature = self.key.private_key.sign(
            signing_input, padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input.decode()}.{_b64url(signature)}"

    def __call__(self, now: float) -> AccessToken:
        """A new access token; TransportError naming host and status on failure."""
        body = urllib.parse.urlencode(
            {"grant_type": GRANT_TYPE, "assertion": self.assertion(now)}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - https checked at load
            self.key.token_uri,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )
        status, raw, failure = self._post(request)
        if failure:
            raise TransportError(
                f"{_CREDENTIALS}: token endpoint {self.key.endpoint} unreachable"
                f" ({failure})"
            )
        reply = _json_object(raw)
        if status != 200:
            error = reply.get("error")
            code = f" {error}" if isinstance(error, str) else ""
            if not _OAUTH_ERROR.fullmatch(code.strip()):
                code = ""
            raise TransportError(
                f"{_CREDENTIALS}: token endpoint {self.key.endpoint} answered"
                f" HTTP {status}{code} (expected 200 with an access token)"
            )
        return _access_from(reply, now, self.key.endpoint)

    def _post(self, request: urllib.request.Request) -> tuple[int, bytes, str]:
        """(status, body, '') or (0, b'', why the exchange failed)."""
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return response.status, response.read(_MAX_REPLY_BYTES), ""
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, exc.read(_MAX_REPLY_BYTES), ""
            except (OSError, http.client.HTTPException):
                return exc.code, b"", ""
            finally:
                exc.close()
        except urllib.error.URLError as exc:
            return 0, b"", str(exc.reason)[:200]
        except (OSError, http.client.HTTPException) as exc:
            return 0, b"", f"{type(exc).__name__}: {str(exc)[:200]}"


def _json_object(raw: bytes) -> dict[str, Any]:
    reply: Any = None
    with contextlib.suppress(ValueError):  # the body is never shown
        reply = json.loads(raw)
    return reply if isinstance(reply, dict) else {}


def _access_from(reply: dict[str, Any], now: float, endpoint: str) -> AccessToken:
    value = reply.get("access_token")
    expires_in = reply.get("expires_in")
    if (
        not isinstance(value, str)
        or not value
        or isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
    ):
        raise TransportError(
            f"{_CREDENTIALS}: token endpoint {endpoint} answered without"
            " access_token and expires_in (expected a token reply)"
        )
    return AccessToken(value, now + float(expires_in))


class GoogleTokenSource:
    """A confluent-kafka ``oauth_cb``: ``(token, expiry)`` for each call.

    Built from a token file (``GoogleTokenSource(path, email)``) or from a
    service account key (:meth:`from_credentials`). The current token is
    kept while it has more than ``refresh_s`` left (``margin_s`` for a
    file); see the module's invariants for what happens when a refresh
    fails.
    """

    def __init__(
        self,
        token_file: Path | None,
        service_account: str,
        *,
        minter: ServiceAccountMinter | None = None,
        margin_s: float = DEFAULT_MARGIN_S,
        refresh_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not service_account or "@" not in service_account:
            raise ConfigError(
                "kafka.oauth_service_account: expected a service account email"
                f" (got {service_account[:60]!r})"
            )
        fetch: Callable[[float], AccessToken]
        if minter is not None and token_file is None:
            fetch = functools.partial(self._mint, minter)
        elif token_file is not None and minter is None:
            fetch = functools.partial(self._reload, token_file)
        else:
            raise ConfigError(
                "kafka.oauth_token_file, kafka.oauth_credentials_file: expected"
                " exactly one token origin"
            )
        refresh = margin_s if refresh_s is None else refresh_s
        if refresh < margin_s:
            raise ValueError(f"refresh_s {refresh} must be >= margin_s {margin_s}")
        self.token_file = token_file
        self.minter = minter
        self.service_account = service_account
        self.margin_s = margin_s
        self.refresh_s = refresh
        self._clock = clock
        self._fetch = fetch
        self._lock = threading.Lock()
        self._access: AccessToken | None = None

    @classmethod
    def from_credentials(
        cls,
        credentials_file: Path,
        service_account: str = "",
        *,
        ca_file: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        margin_s: float = DEFAULT_MARGIN_S,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> GoogleTokenSource:
        """A source that mints its tokens from a service account key file."""
        key = load_service_account(credentials_file)
        if service_account and service_account != key.client_email:
            raise ConfigError(
                f"kafka.oauth_service_account: {service_account[:80]!r} is not the"
                f" key's client_email {key.client_email!r} in {credentials_file}"
                " (expected the same account, or leave it unset)"
            )
        minter = ServiceAccountMinter(key, ca_file=ca_file, timeout_s=timeout_s)
        return cls(
            None,
            key.client_email,
            minter=minter,
            margin_s=margin_s,
            refresh_s=refresh_s,
            clock=clock,
        )

    def __call__(self, _config: str | None = None) -> tuple[str, float]:
        """Return the wrapped token and the time it expires (epoch seconds)."""
        with self._lock:
            now = self._clock()
            access = self._access
            if access is None or access.expires_at - now <= self.refresh_s:
                access = self._renew(access, now)
                self._access = access
        return wrap(access, self.service_account, now), access.expires_at

    def _renew(self, held: AccessToken | None, now: float) -> AccessToken:
        try:
            return self._fetch(now)
        except TransportError as exc:
            if held is None or held.expires_at - now <= self.margin_s:
                raise
            logger.warning(
                "oauth token refresh failed, current token kept"
                " expires_in_s=%.0f error=%s",
                held.expires_at - now,
                exc,
            )
            return held

    def _mint(self, minter: ServiceAccountMinter, now: float) -> AccessToken:
        access = minter(now)
        left = access.expires_at - now
        endpoint = minter.key.endpoint
        if left <= self.margin_s:
            raise TransportError(
                f"{_CREDENTIALS}: token endpoint {endpoint} gave a token that"
                f" expires in {left:.0f}s (expected more than {self.margin_s:.0f}s)"
            )
        logger.info("oauth token minted endpoint=%s expires_in_s=%.0f", endpoint, left)
        return access

    def _reload(self, token_file: Path, now: float) -> AccessToken:
        access = read_access_token(token_file)
        left = access.expires_at - now
        if left <= self.margin_s:
            raise TransportError(
                f"kafka.oauth_token_file: token in {token_file} expires in"
                f" {left:.0f}s (expected more than {self.margin_s:.0f}s);"
                " is the agent that refreshes it running?"
            )
        logger.info("oauth token loaded expires_in_s=%.0f", left)
        return access
