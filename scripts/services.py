#!/usr/bin/env python3
"""Run the two real services the relay needs (Kafka and PostgreSQL) on loopback.

A developer and CI tool, standard library only. ``up`` fetches the Kafka jars
from Maven Central once (cached outside the work tree), then starts a
single-node KRaft Kafka 4.1.1 broker and a throwaway PostgreSQL 15 cluster on
free 127.0.0.1 ports, and records where they are in ``<state>/services.json``.
``down`` stops them; ``env`` prints shell exports for the relay's tests.

Importable from tests::

    sys.path.insert(0, "scripts")
    import services
    state = services.ensure_up()

See docs/services.md.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devservices.common import (  # noqa: F401 (the scripts' public API)
    ServiceError,
    _is_ours,
    _locked,
    _make_state_dir,
    _resolve,
    _state_file,
    default_state_dir,
    free_port,
    kafka_cache_dir,
    load_state,
)
from devservices.kafka import (  # noqa: F401 (the scripts' public API)
    _client_conf,
    _kafka_begin,
    _kafka_finish,
    _kafka_needles,
    _kafka_paths,
    _kafka_ready,
    enable_kafka_sasl_ssl,
    ensure_kafka_jars,
    make_ca,
    set_kafka_proxy,
    start_kafka,
    stop_kafka,
)
from devservices.postgres import (
    _pg_needles,
    _pg_ready,
    _pg_start_locked,
    start_postgres,
    stop_postgres,
)

# --------------------------------------------------------------------------
# both
# --------------------------------------------------------------------------


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if not key.startswith("_")}


def ensure_up(state_dir: Path | None = None) -> dict[str, Any]:
    """Make sure both services run and answer; return the state file's content.

    Idempotent and safe to call from several processes at once. The broker is
    spawned first and PostgreSQL is brought up while the JVM boots.
    """
    return _ensure_up(_resolve(state_dir))[0]


def _ensure_up(state_dir: Path) -> tuple[dict[str, Any], list[str]]:
    _make_state_dir(state_dir)
    notes: list[str] = []
    _, fetched = ensure_kafka_jars()
    if fetched is not None:
        notes.append(f"kafka jars: fetched from Maven Central in {fetched:.1f}s")
    with _locked(state_dir / ".lock"):
        pending = _kafka_begin(state_dir)
        pg = _pg_start_locked(state_dir)
        kafka = _kafka_finish(state_dir, pending)
    notes.append(_summary("postgres", pg))
    notes.append(_summary("kafka", kafka))
    return {"kafka": _public(kafka), "postgres": _public(pg)}, notes


def _summary(name: str, entry: dict[str, Any]) -> str:
    took = entry.get("_started_in")
    how = "already running" if took is None else f"started in {took:.1f}s"
    if entry.get("_created"):
        how = f"created and {how}"
    where = entry.get("bootstrap") or f"{entry.get('host')}:{entry.get('port')}"
    return f"{name}: up at {where}, pid {entry['pid']}, {how}, log {entry['log']}"


def stop_all(state_dir: Path | None = None, *, wipe: bool = False) -> list[str]:
    """Stop both services (Kafka first); ``wipe`` also removes their data."""
    resolved = _resolve(state_dir)
    notes = [
        f"kafka: {stop_kafka(resolved, wipe=wipe)}",
        f"postgres: {stop_postgres(resolved, wipe=wipe)}",
    ]
    if wipe and resolved.exists():
        _state_file(resolved).unlink(missing_ok=True)
        (resolved / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            resolved.rmdir()
    return notes


def status(state_dir: Path | None = None) -> tuple[bool, list[str]]:
    """(both up, one line per service). Checks state, pid and port."""
    resolved = _resolve(state_dir)
    state = load_state(resolved)
    lines: list[str] = []
    healthy = True

    kafka = state.get("kafka")
    if not kafka:
        healthy = False
        lines.append("kafka: down (not in state file)")
    else:
        port = int(str(kafka["bootstrap"]).rpartition(":")[2])
        paths = _kafka_paths(resolved)
        ok = _is_ours(int(kafka["pid"]), *_kafka_needles(paths)) and _kafka_ready(
            port, conf=_client_conf(paths)
        )
        healthy &= ok
        word = "up" if ok else "DOWN (pid gone or broker silent)"
        lines.append(f"kafka: {word} at {kafka['bootstrap']}, pid {kafka['pid']}")

    pg = state.get("postgres")
    if not pg:
        healthy = False
        lines.append("postgres: down (not in state file)")
    else:
        alive = _is_ours(int(pg["pid"]), *_pg_needles(resolved))
        ok = alive and _pg_ready(int(pg["port"]))
        healthy &= ok
        word = "up" if ok else "DOWN (pid gone or not accepting connections)"
        lines.append(f"postgres: {word} at {pg['host']}:{pg['port']}, pid {pg['pid']}")
    return healthy, lines


def env_lines(state_dir: Path | None = None) -> list[str]:
    """``export NAME=value`` lines for the relay's configuration and tests."""
    state = load_state(state_dir)
    kafka, pg = state.get("kafka"), state.get("postgres")
    if not kafka or not pg:
        raise ServiceError("services are not up; run: python scripts/services.py up")
    values = {
        "APPLIANCE_KAFKA_BOOTSTRAP": kafka["bootstrap"],
        "APPLIANCE_PG_HOST": pg["host"],
        "APPLIANCE_PG_PORT": pg["port"],
        "APPLIANCE_PG_USER": pg["user"],
        "APPLIANCE_PG_PASSWORD_FILE": pg["password_file"],
    }
    return [
        f"export {name}={shlex.quote(str(value))}" for name, value in values.items()
    ]


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="services.py",
        description="Run Kafka and PostgreSQL on loopback for development and CI.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: $APPLIANCE_SERVICES_DIR or <repo>/.cache/services",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="fetch jars if needed, start both, wait until ready")
    down = sub.add_parser("down", help="stop both (data kept unless --wipe)")
    down.add_argument("--wipe", action="store_true", help="also delete their data")
    sub.add_parser("status", help="exit 0 when both are up")
    sub.add_parser("env", help="print export lines for the running services")
    for name in ("kafka", "postgres"):
        one = sub.add_parser(name, help=f"start or stop {name} alone")
        one.add_argument("action", choices=("start", "stop"))
        one.add_argument("--wipe", action="store_true", help="with stop: delete data")
        if name == "kafka":
            one.add_argument(
                "--sasl-ssl",
                action="store_true",
                help="with start: SASL_SSL (PLAIN) listener, own --state-dir only",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir = _resolve(args.state_dir)
    try:
        if args.command == "up":
            _, notes = _ensure_up(state_dir)
            print("\n".join(notes))
        elif args.command == "down":
            print("\n".join(stop_all(state_dir, wipe=args.wipe)))
        elif args.command == "status":
            healthy, lines = status(state_dir)
            print("\n".join(lines))
            return 0 if healthy else 1
        elif args.command == "env":
            print("\n".join(env_lines(state_dir)))
        elif args.command == "kafka":
            if args.action == "start":
                _, fetched = ensure_kafka_jars()
                if fetched is not None:
                    print(f"kafka jars: fetched from Maven Central in {fetched:.1f}s")
                entry = start_kafka(state_dir, sasl_ssl=args.sasl_ssl)
                print(_summary("kafka", entry))
            else:
                print(f"kafka: {stop_kafka(state_dir, wipe=args.wipe)}")
        elif args.action == "start":
            print(_summary("postgres", start_postgres(state_dir)))
        else:
            print(f"postgres: {stop_postgres(state_dir, wipe=args.wipe)}")
    except ServiceError as exc:
        print(f"services.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
