"""A throwaway Debian PostgreSQL 15 cluster on loopback."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from devservices.common import (
    LOOPBACK,
    MAX_SOCKET_PATH,
    PG_BINDIR,
    PG_DATABASES,
    PG_SERVER_USER,
    PG_START_TIMEOUT,
    PG_SUPERUSER,
    REPO,
    ServiceError,
    _alive,
    _is_ours,
    _locked,
    _make_state_dir,
    _port_is_free,
    _resolve,
    _rotate,
    _run,
    _terminate,
    _update_state,
    _write_secret,
    free_port,
)

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _pg_paths(state_dir: Path) -> dict[str, Path]:
    return {
        "data": state_dir / "pg",
        "run": state_dir / "pg-run",
        "logdir": state_dir / "pg-log",
        "log": state_dir / "pg-log" / "postgresql.log",
        "password": state_dir / "pg-superuser.password",
        "conf": state_dir / "pg" / "appliance-services.conf",
    }


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: switch to the postgres system user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_SERVER_USER, "--", *cmd]
    return cmd


def _server_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(PG_SERVER_USER)
    except KeyError as exc:
        raise ServiceError(
            f"no '{PG_SERVER_USER}' system user (apt-get install postgresql)"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _server_dir(path: Path, mode: int) -> None:
    """A directory owned by the server user."""
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = _server_ids()
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def _ensure_traversable(state_dir: Path) -> None:
    """Let the server user reach the state dir: o+x inside <repo>/.cache only."""
    if os.geteuid() != 0:
        return
    cache = REPO / ".cache"
    if state_dir == cache or cache in state_dir.parents:
        walk = state_dir
        while True:
            mode = walk.stat().st_mode
            if not mode & 0o001:
                os.chmod(walk, (mode & 0o7777) | 0o001)
            if walk == cache:
                break
            walk = walk.parent
    probe = subprocess.run(
        _as_server_user(["test", "-x", str(state_dir)]),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        blocked = [
            str(parent)
            for parent in reversed(state_dir.parents)
            if not parent.stat().st_mode & 0o001
        ]
        raise ServiceError(
            f"user {PG_SERVER_USER} cannot reach {state_dir}; directories without "
            f"o+x: {', '.join(blocked) or '?'} (or set APPLIANCE_SERVICES_DIR)"
        )


def _pg(tool: str) -> str:
    path = PG_BINDIR / tool
    if not path.is_file():
        raise ServiceError(f"{path} missing (apt-get install postgresql-15)")
    return str(path)


def _initdb(state_dir: Path) -> bool:
    """Create the cluster unless it exists; True when it was created now."""
    paths = _pg_paths(state_dir)
    if (paths["data"] / "PG_VERSION").exists():
        return False
    if paths["data"].exists():
        shutil.rmtree(paths["data"])  # a half-made cluster from an earlier crash
    _server_dir(paths["data"], 0o700)
    password = secrets.token_urlsafe(24)
    _write_secret(paths["password"], password)
    # initdb runs as the server user, which cannot read the root-only copy.
    transient = paths["run"] / f"initdb-{os.getpid()}.pw"
    _write_secret(transient, password)
    uid, gid = _server_ids()
    try:
        if os.geteuid() == 0:
            os.chown(transient, uid, gid)
        cmd = [
            _pg("initdb"),
            "-D",
            str(paths["data"]),
            "-U",
            PG_SUPERUSER,
            "-A",
            "scram-sha-256",
            f"--pwfile={transient}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]
        _run(_as_server_user(cmd), cwd=state_dir)
    finally:
        transient.unlink(missing_ok=True)
    with (paths["data"] / "postgresql.conf").open("a", encoding="utf-8") as fh:
        fh.write("\n# Loopback, port and paths set by scripts/services.py\n")
        fh.write(f"include_if_exists = '{paths['conf'].name}'\n")
    return True


def _previous_pg_port(conf: Path) -> int | None:
    try:
        text = conf.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "port":
            with contextlib.suppress(ValueError):
                return int(value.strip())
    return None


def _write_pg_conf(state_dir: Path, port: int) -> None:
    paths = _pg_paths(state_dir)
    socket_dir = str(paths["run"])
    if len(f"{socket_dir}/.s.PGSQL.{port}.lock") > MAX_SOCKET_PATH:
        socket_dir = ""  # path too long for a unix socket: TCP only
    lines = [
        "# Generated by scripts/services.py; rewritten on every start.",
        f"listen_addresses = '{LOOPBACK}'",
        f"port = {port}",
        f"unix_socket_directories = '{socket_dir}'",
        # Honest durability: the relay's throughput numbers are measured here.
        "fsync = on",
        "synchronous_commit = on",
        "full_page_writes = on",
        "logging_collector = off",
        "log_line_prefix = '%m [%p] %q%u@%d '",
        "log_timezone = 'UTC'",
        "timezone = 'UTC'",
        "max_connections = 100",
    ]
    conf = paths["conf"]
    conf.write_text("\n".join(lines) + "\n")
    uid, gid = _server_ids()
    if os.geteuid() == 0:
        os.chown(conf, uid, gid)
    os.chmod(conf, 0o600)


def _postmaster_pid(data: Path) -> tuple[int, int] | None:
    """(pid, port) from postmaster.pid, when the file exists and is complete."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        return int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        return None


def _pg_needles(state_dir: Path) -> tuple[str, ...]:
    return ("postgres", str(_pg_paths(state_dir)["data"]))


def _pg_ready(port: int) -> bool:
    probe = subprocess.run(
        [_pg("pg_isready"), "-q", "-h", LOOPBACK, "-p", str(port), "-t", "3"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _running_pg(state_dir: Path) -> tuple[int, int] | None:
    found = _postmaster_pid(_pg_paths(state_dir)["data"])
    if found and _is_ours(found[0], *_pg_needles(state_dir)):
        return found
    return None


def _create_databases(state_dir: Path, port: int) -> None:
    password = _pg_paths(state_dir)["password"].read_text().strip()
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    base = [_pg("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"]
    base += ["-h", LOOPBACK, "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres"]
    existing = set(
        _run([*base, "-c", "SELECT datname FROM pg_database"], env=env).split()
    )
    for name in PG_DATABASES:
        if name not in existing:
            _run([*base, "-c", f'CREATE DATABASE "{name}"'], env=env)


def _pg_entry(state_dir: Path, pid: int, port: int) -> dict[str, Any]:
    paths = _pg_paths(state_dir)
    return {
        "host": LOOPBACK,
        "port": port,
        "user": PG_SUPERUSER,
        "password_file": str(paths["password"]),
        "pid": pid,
        "log": str(paths["log"]),
    }


def _pg_start_locked(state_dir: Path) -> dict[str, Any]:
    paths = _pg_paths(state_dir)
    running = _running_pg(state_dir)
    if running is not None:
        pid, port = running
        deadline = time.monotonic() + PG_START_TIMEOUT
        while not _pg_ready(port):
            if time.monotonic() > deadline or not _alive(pid):
                raise ServiceError(f"PostgreSQL pid {pid} does not answer on {port}")
            time.sleep(0.5)
        _create_databases(state_dir, port)
        entry = _pg_entry(state_dir, pid, port)
        _update_state(state_dir, "postgres", entry)
        return {**entry, "_started_in": None}

    _ensure_traversable(state_dir)
    _server_dir(paths["run"], 0o755)
    _server_dir(paths["logdir"], 0o755)
    started = time.monotonic()
    created = _initdb(state_dir)
    previous = _previous_pg_port(paths["conf"])
    port = previous if previous and _port_is_free(previous) else free_port()
    _write_pg_conf(state_dir, port)
    _rotate(paths["log"])
    cmd = [
        _pg("pg_ctl"),
        "-D",
        str(paths["data"]),
        "-l",
        str(paths["log"]),
        "-w",
        "-t",
        f"{PG_START_TIMEOUT:.0f}",
        "start",
    ]
    try:
        _run(_as_server_user(cmd), cwd=state_dir)
    except ServiceError as exc:
        raise ServiceError(f"{exc}; see {paths['log']}") from exc
    found = _postmaster_pid(paths["data"])
    if found is None:
        raise ServiceError(
            f"PostgreSQL started but wrote no postmaster.pid; see {paths['log']}"
        )
    pid = found[0]
    deadline = time.monotonic() + PG_START_TIMEOUT
    while not _pg_ready(port):
        if time.monotonic() > deadline or not _alive(pid):
            raise ServiceError(f"PostgreSQL not ready; see {paths['log']}")
        time.sleep(0.2)
    _create_databases(state_dir, port)
    entry = _pg_entry(state_dir, pid, port)
    _update_state(state_dir, "postgres", entry)
    took = round(time.monotonic() - started, 1)
    return {**entry, "_started_in": took, "_created": created}


def start_postgres(state_dir: Path | None = None) -> dict[str, Any]:
    """Start the cluster unless it already runs and answers; return its entry."""
    state_dir = _resolve(state_dir)
    _make_state_dir(state_dir)
    with _locked(state_dir / ".lock"):
        return _pg_start_locked(state_dir)


def stop_postgres(state_dir: Path | None = None, *, wipe: bool = False) -> str:
    """Fast-shutdown the cluster by pid (SIGINT), SIGKILL after STOP_TIMEOUT.

    SIGINT rather than SIGTERM: PostgreSQL reads SIGTERM as a *smart*
    shutdown, which waits for every client to disconnect, so a connection
    left open by a test would make ``down`` hang until the SIGKILL.
    """
    state_dir = _resolve(state_dir)
    if not state_dir.exists():
        return "not running"
    with _locked(state_dir / ".lock"):
        paths = _pg_paths(state_dir)
        running = _running_pg(state_dir)
        outcome = "not running"
        if running is not None:
            outcome = _terminate(running[0], signal.SIGINT, _pg_needles(state_dir))
        _update_state(state_dir, "postgres", None)
        if wipe:
            for key in ("data", "run", "logdir"):
                shutil.rmtree(paths[key], ignore_errors=True)
            paths["password"].unlink(missing_ok=True)
            outcome += ", data wiped"
        return outcome
