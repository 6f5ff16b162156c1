"""Secrets of the web page: TLS certificate, session key, users, tokens, limiter.

Everything lives in ``webui.state_dir`` (mode 0700), each secret file 0600.

Invariants:

- No default password. Until a technician has set one, the page only offers
  the setup form, which asks for a one-time setup code printed to stderr (the
  console and the journal) at start; only its scrypt hash is on disk, and it
  is deleted once used.
- Passwords are hashed with scrypt (werkzeug, memory-hard); API and metrics
  tokens are 32 random bytes, stored as SHA-256 (a hash of a random value
  that long cannot be guessed back) and compared in constant time.
- No secret value is ever logged, rendered in an error, or stored in clear
  (the session key is the exception: it must be usable, so it is 0600).
- A session cookie is good only while it carries its account's current
  session nonce (kept here, server side): logout and a password change draw
  a new one, so a copied cookie dies with them.
- Failed logins are counted per client address: each failure waits a little
  longer; after ``limit`` failures within ``LOCK_S`` the login answers 429.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from appliance.config import read_secret
from appliance.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_S = 300.0
MIN_PASSWORD = 12
MIN_KEY = 32  # characters of the session key
_USERS = "users.json"
_SETUP = "setup-code.hash"


def _private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def prepare_dir(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)


def ensure_certificate(state_dir: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` (IPs or DNS names), made once."""
    cert, key = state_dir / "tls.crt", state_dir / "tls.key"
    if cert.exists() and key.exists():
        _owner_only(key)
        return cert, key
    alt = ",".join(
        ("IP:" if n.replace(".", "").isdigit() or ":" in n else "DNS:") + n
        for n in names
    )
    tmp_key = state_dir / "tls.key.tmp"
    old = os.umask(0o077)
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(tmp_key),
                "-out",
                str(cert),
                "-days",
                "825",
                "-subj",
                f"/CN={names[0]}",
                "-addext",
                f"subjectAltName={alt}",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    finally:
        os.umask(old)
    tmp_key.chmod(0o600)
    tmp_key.replace(key)
    logger.info("tls certificate made path=%s", cert)
    return cert, key


def _owner_only(path: Path) -> None:
    """Take group and other bits off an existing secret file."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            logger.warning("secret file made private path=%s", path)


def _credential(name: str) -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    found = Path(directory) / name if directory else None
    return found if found is not None and found.exists() else None


def session_key(state_dir: Path) -> bytes:
    """The Flask secret key: credential 'webui-secret', else a 0600 file.

    Breaker run 2: a key file left readable by others stayed so, an empty or
    short one was used as is (an empty key broke every login, a short one can
    be guessed), and an unreadable credential fell back to the file silently.
    The file is now made 0600 and replaced when shorter than ``MIN_KEY``; a
    short or unreadable credential stops the start (ConfigError).
    """
    path = state_dir / "secret-key"
    _owner_only(path)
    credential = _credential("webui-secret")
    try:
        key = read_secret("webui-secret", path)
    except ConfigError:
        if credential is not None or path.exists():
            raise
        key = ""
    if len(key) >= MIN_KEY:
        return key.encode()
    if credential is not None:
        raise ConfigError(f"secret 'webui-secret' shorter than {MIN_KEY} characters")
    if key:
        logger.warning("session key too short, a new one is made path=%s", path)
    _private_file(path, secrets.token_hex(32).encode())
    return path.read_text().strip().encode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Users:
    """The technician accounts and the API tokens (hashes only), one JSON file."""

    state_dir: Path
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> Path:
        return self.state_dir / _USERS

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data: dict[str, dict[str, str]] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"users": {}, "tokens": {}, "sessions": {}}
        data.setdefault("sessions", {})
        return data

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        _private_file(self.path, json.dumps(data).encode())

    def configured(self) -> bool:
        return bool(self._load()["users"])

    def check(self, user: str, password: str) -> bool:
        """True when the password is right (always hashes: no timing oracle).

        The password is compared in NFKC (:func:`normal_password`); one hashed before
        that rule, in another form, is still tried as typed.
        """
        stored = self._load()["users"].get(user)
        normal = normal_password(password)
        if stored is None:
            check_password_hash(_DUMMY_HASH, normal)
            return False
        if check_password_hash(stored, normal):
            return True
        return normal != password and check_password_hash(stored, password)

    def token_role(self, token: str) -> str | None:
        """'api' or 'metrics' for a valid bearer token, else None."""
        digest = token_hash(token)
        for role, stored in self._load()["tokens"].items():
            if hmac.compare_digest(stored, digest):
                return role
        return None

    def session_nonce(self, user: str) -> str:
        """The nonce a new session of ``user`` carries (drawn if none yet)."""
        with self._lock:
            data = self._load()
            nonce = data["sessions"].get(user)
            if not nonce:
                nonce = data["sessions"][user] = secrets.token_urlsafe(16)
                self._save(data)
        return nonce

    def session_valid(self, user: str, nonce: str) -> bool:
        """True while ``nonce`` is the account's current one."""
        stored = self._load()["sessions"].get(user, "")
        return bool(stored and nonce) and hmac.compare_digest(stored, nonce)

    def end_sessions(self, user: str) -> str:
        """Every session of ``user`` ends; returns the nonce of the next one."""
        with self._lock:
            data = self._load()
            nonce = data["sessions"][user] = secrets.token_urlsafe(16)
            self._save(data)
        logger.info("sessions ended user=%s", user)
        return nonce

    def set_password(self, user: str, password: str) -> str:
        """A new password, and every session of ``user`` ends (returns the
        nonce of the session that asked, so it alone can go on)."""
        with self._lock:
            data = self._load()
            data["users"][user] = generate_password_hash(normal_password(password))
            nonce = data["sessions"][user] = secrets.token_urlsafe(16)
            self._save(data)
        logger.info("password changed user=%s", user)
        return nonce

    def create(self, user: str, password: str) -> dict[str, str] | None:
        """The first account; returns the new API and metrics tokens (shown once).

        None, and nothing written, when an account exists already: two setup
        forms sent at once with the right code make one account, not two.
        """
        tokens = {role: secrets.token_urlsafe(32) for role in ("api", "metrics")}
        with self._lock:
            data = self._load()
            if data["users"]:
                return None
            data["users"][user] = generate_password_hash(normal_password(password))
            data["tokens"] = {r: token_hash(t) for r, t in tokens.items()}
            self._save(data)
        return tokens


_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


def normal_password(password: str) -> str:
    """The password in Unicode NFKC: "é" typed as one character or as "e" and
    a combining accent (as some systems send it) is the same password.
    Breaker run 2: a password set in one form was refused in the other."""
    return unicodedata.normalize("NFKC", password)


class SetupCode:
    """The one-time code that lets the first technician choose a password."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / _SETUP

    def issue(self) -> None:
        """Make a new code, keep its hash, print it on stderr (never logged)."""
        code = "-".join(secrets.token_hex(3).upper() for _ in range(3))
        _private_file(self.path, generate_password_hash(code).encode())
        print(
            f"appliance-webui: first access, setup code: {code}",
            file=sys.stderr,
            flush=True,
        )
        logger.warning("no technician yet: setup code printed on the console")

    def check(self, code: str) -> bool:
        try:
            stored = self.path.read_text().strip()
        except FileNotFoundError:
            return False
        return check_password_hash(stored, code.strip().upper())

    def used(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


ANY_CLIENT = "*"  # the account's bucket: tries from every address together
ACCOUNT_FACTOR = 4  # the account allows this many times one client's limit


class LoginLimiter:
    """Failed logins per client: a growing delay, then 429 (module doc)."""

    def __init__(self, limit: int, delay_s: float) -> None:
        self.limit = limit
        self.delay_s = delay_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(client, []) if now - t < LOCK_S]
        self._failures[client] = kept
        return kept

    def attempt(self, client: str) -> float | None:
        """Reserve one try BEFORE the slow password check.

        None when the client (or the account, from all clients together) is
        over its limit; else the delay to wait if the try then fails. Counting
        first means a burst of parallel requests cannot all pass the gate
        before the first failure is recorded (found by a breaker run).
        """
        with self._lock:
            now = time.time()
            buckets = ((client, self.limit), (ANY_CLIENT, self.limit * ACCOUNT_FACTOR))
            if any(len(self._recent(key, now)) >= cap for key, cap in buckets):
                return None
            for key, _cap in buckets:
                self._recent(key, now).append(now)
            return self.delay_s * len(self._failures[client])

    def succeeded(self, client: str) -> None:
        """A right password: the client's tries are forgiven, and its reserved
        try no longer counts against the account."""
        with self._lock:
            self._failures.pop(client, None)
            shared = self._failures.get(ANY_CLIENT)
            if shared:
                shared.pop()
