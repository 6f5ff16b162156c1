"""Shared by the Kafka and PostgreSQL parts: constants, state file, processes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KAFKA_VERSION = "4.1.1"
KAFKA_POM = REPO / "scripts" / "kafka" / "pom.xml"
PG_BINDIR = Path(os.environ.get("APPLIANCE_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PG_SERVER_USER = "postgres"
PG_SUPERUSER = "postgres"
PG_DATABASES = ("ibmi", "odh")
LOOPBACK = "127.0.0.1"

KAFKA_HEAP = "-Xmx512m"
KAFKA_START_TIMEOUT = 120.0
PG_START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
KAFKA_SASL_USER = "relay"
TLS_DAYS = 30
MARKER = ".complete"
# sockaddr_un.sun_path is 108 bytes on Linux, including the trailing NUL.
MAX_SOCKET_PATH = 107


class ServiceError(RuntimeError):
    """A service could not be installed, started, probed or stopped."""


# --------------------------------------------------------------------------
# paths and state
# --------------------------------------------------------------------------


def default_state_dir() -> Path:
    """``$APPLIANCE_SERVICES_DIR`` or ``<repo>/.cache/services``."""
    env = os.environ.get("APPLIANCE_SERVICES_DIR")
    return Path(env).resolve() if env else REPO / ".cache" / "services"


def kafka_cache_dir() -> Path:
    """Where the Kafka jars live: ``$APPLIANCE_KAFKA_CACHE`` or under ~/.cache."""
    env = os.environ.get("APPLIANCE_KAFKA_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = Path.home() / ".cache" / "store-relay" / f"kafka-{KAFKA_VERSION}"
    return base / "libs"


def _resolve(state_dir: Path | str | None) -> Path:
    return Path(state_dir).resolve() if state_dir is not None else default_state_dir()


def _state_file(state_dir: Path) -> Path:
    return state_dir / "services.json"


def load_state(state_dir: Path | None = None) -> dict[str, Any]:
    """Return the recorded services (``{}`` when nothing was started)."""
    path = _state_file(_resolve(state_dir))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ServiceError(f"{path}: expected a JSON object")
    return data


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = _state_file(state_dir)
    if not state:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _update_state(state_dir: Path, name: str, entry: dict[str, Any] | None) -> None:
    state = load_state(state_dir)
    if entry is None:
        state.pop(name, None)
    else:
        state[name] = entry
    _save_state(state_dir, state)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise concurrent runs (two test sessions calling ``ensure_up``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _make_state_dir(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    # Secrets in here are 0600; the directory itself only needs search (x)
    # permission for the postgres server user, never read permission.
    os.chmod(state_dir, 0o711)


# --------------------------------------------------------------------------
# processes and ports
# --------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (reaping it if it is ours)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _is_ours(pid: int, *needles: str) -> bool:
    """True when ``pid`` is alive and its command line has all ``needles``."""
    if not _alive(pid):
        return False
    args = _cmdline(pid)
    return all(any(needle in arg for arg in args) for needle in needles)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers bind with SO_REUSEADDR, so connections of the previous
        # run lingering in TIME_WAIT do not make the port unusable to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _tcp_answers(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _terminate(pid: int, first: signal.Signals, needles: tuple[str, ...]) -> str:
    """Send ``first``, wait up to STOP_TIMEOUT, then SIGKILL. Only our processes."""
    if not _is_ours(pid, *needles):
        return "not running"
    os.kill(pid, first)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            return f"stopped ({first.name})"
        time.sleep(0.2)
    if _is_ours(pid, *needles):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return f"killed (no exit {STOP_TIMEOUT:.0f}s after {first.name})"
    return f"stopped ({first.name})"


def _run(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    proc = subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise ServiceError(f"{shlex.join(cmd)} failed ({proc.returncode}): {detail}")
    return proc.stdout


def _rotate(log: Path) -> None:
    """Keep one previous generation of a log file."""
    if log.exists() and log.stat().st_size > 0:
        os.replace(log, log.with_name(log.name + ".1"))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)
