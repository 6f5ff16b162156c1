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

Where the access token comes from: this module never talks to Google. An
outside agent keeps ``kafka.oauth_token_file`` fresh: a timer that asks the
metadata server (``.../instance/service-accounts/default/token``) and writes
its reply, a sidecar, or ``gcloud auth print-access-token`` in a systemd
timer. The file holds either that JSON reply (``access_token`` and
``expires_in``, counted from the file's modification time) or the bare
token, which is then taken to live one hour from the file's modification
time (the lifetime of Google's access tokens).

Invariants:

* the access token appears in no log line and no error message, only the
  file's path does;
* a token handed to librdkafka has at least ``margin_s`` of life left when
  it is handed over, or the call fails with :class:`TransportError`, so
  the client never connects with a token about to lapse; a token inside the
  margin is read again from the file on every call until the agent has
  replaced it.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from appliance.errors import ConfigError, TransportError

logger = logging.getLogger(__name__)

HEADER = {"typ": "JWT", "alg": "GOOG_OAUTH2_TOKEN"}
DEFAULT_LIFETIME_S = 3600.0
DEFAULT_MARGIN_S = 300.0


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


class GoogleTokenSource:
    """A confluent-kafka ``oauth_cb``: ``(token, expiry)`` for each call.

    The last token read is kept while it has more than ``margin_s`` left;
    librdkafka calls again before the expiry it was given, so a refreshed
    file is picked up in time.
    """

    def __init__(
        self,
        token_file: Path,
        service_account: str,
        *,
        margin_s: float = DEFAULT_MARGIN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not service_account or "@" not in service_account:
            raise ConfigError(
                "kafka.oauth_service_account: expected a service account email"
                f" (got {service_account[:60]!r})"
            )
        self.token_file = token_file
        self.service_account = service_account
        self.margin_s = margin_s
        self._clock = clock
        self._access: AccessToken | None = None

    def __call__(self, _config: str | None = None) -> tuple[str, float]:
        """Return the wrapped token and the time it expires (epoch seconds)."""
        now = self._clock()
        if self._access is None or self._access.expires_at - now <= self.margin_s:
            self._access = self._reload(now)
        return wrap(self._access, self.service_account, now), self._access.expires_at

    def _reload(self, now: float) -> AccessToken:
        access = read_access_token(self.token_file)
        left = access.expires_at - now
        if left <= self.margin_s:
            raise TransportError(
                f"kafka.oauth_token_file: token in {self.token_file} expires in"
                f" {left:.0f}s (expected more than {self.margin_s:.0f}s);"
                " is the agent that refreshes it running?"
            )
        logger.info("oauth token loaded expires_in_s=%.0f", left)
        return access
