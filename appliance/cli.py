"""The ``appliance`` command: run a leg, inspect the pipeline, benchmark.

    appliance run miner|transformer|enricher|shipper   (box legs, box settings)
    appliance run control                               (the guardian, issue 5)
    appliance run sink                                  (hub leg, hub settings)
    appliance status [--json]                           counters, legs, outbox
    appliance dead-letters list [--json] [--limit N]
    appliance skip-entry --receiver LIB/NAME (--sequence N | --null-after N)
    appliance check-config [--hub] [--values-only]      values, then the files
    appliance bench ...                                 see appliance.bench
    appliance soak --changes N                          see appliance.soak

Settings come from --config, else $APPLIANCE_CONFIG, else /etc/appliance/.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance import commands, config, daemon, logs, outbox, store
from appliance.errors import ApplianceError, ConfigError, SchemaError

logger = logging.getLogger(__name__)

BOX_LEGS = {
    "miner": "appliance.miner",
    "transformer": "appliance.transformer",
    "enricher": "appliance.enricher",
    "shipper": "appliance.shipper",
    "control": "appliance.guardian.leg",
}
HUB_LEGS = {"sink": "appliance.hub.sink"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", help="settings file (TOML)")
    # --config is also accepted after the verb: `appliance status --config F`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run one leg until SIGTERM")
    run.add_argument("leg", choices=sorted([*BOX_LEGS, *HUB_LEGS]))

    status = sub.add_parser(
        "status", parents=[common], help="counters, legs and outbox of the box"
    )
    status.add_argument("--json", action="store_true")

    dead = sub.add_parser(
        "dead-letters", parents=[common], help="records parked by a leg"
    )
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", parents=[common], help="list parked records")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--limit", type=_positive, default=50)

    skip = sub.add_parser(
        "skip-entry",
        parents=[common],
        help="let the miner pass over the journal entry its unusable-entry alarm"
        " names (parked as a dead letter, table checked by the guardian)",
    )
    skip.add_argument(
        "--receiver",
        required=True,
        help="the alarm's receiver, LIBRARY/NAME (as `appliance status` shows it)",
    )
    which = skip.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--sequence", type=_positive, help="the entry's sequence, as the alarm shows"
    )
    which.add_argument(
        "--null-after",
        type=_whole,
        help="the alarm's entry has no sequence: its last_stored sequence",
    )
    skip.add_argument(
        "--user",
        default=None,
        help="who asks, for the audit log (default: the login name)",
    )
    skip.add_argument(
        "--wait-s",
        type=_whole,
        default=15,
        help="seconds to wait for the miner's answer (0: only queue it)",
    )

    down = sub.add_parser(
        "pipeline-downgrade",
        parents=[common],
        help="legs stopped: make the pipeline database readable by an older release",
    )
    down.add_argument(
        "--to",
        type=int,
        required=True,
        choices=range(1, store.SCHEMA_VERSION + 1),
        help="schema of the release rolled back to (its appliance.store.SCHEMA_VERSION,"
        " 1 when it has none)",
    )

    check = sub.add_parser(
        "check-config", parents=[common], help="validate the settings and exit"
    )
    check.add_argument("--hub", action="store_true", help="hub settings")
    check.add_argument(
        "--values-only",
        action="store_true",
        help="check the values, not the files they name (settings not installed yet)",
    )

    bench = sub.add_parser(
        "bench", parents=[common], help="end-to-end and raw rates on this machine"
    )
    bench.add_argument(
        "--changes", type=_positive, default=100_000, help="catch-up backlog"
    )
    bench.add_argument(
        "--sustained-s", type=_positive_s, default=30.0, help="writers flat out"
    )
    bench.add_argument(
        "--paced-rate", type=_positive_s, default=1000.0, help="changes/s, latency"
    )
    bench.add_argument("--paced-seconds", type=_positive_s, default=30.0)
    bench.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the bench's directory (logs, pipeline databases) for a look",
    )
    bench.add_argument(
        "--writers", type=_positive, default=2, help="store writer processes"
    )
    bench.add_argument(
        "--miner-entries",
        type=_positive,
        default=50_000,
        help="journal of the IBM i cost scenario",
    )
    bench.add_argument(
        "--raw-rows", type=_positive, default=50_000, help="rows of each raw limit"
    )
    bench.add_argument("--json", action="store_true")
    bench.add_argument(
        "scenario",
        nargs="?",
        choices=("relay", "guardian"),
        default="relay",
        help="relay rates (default) or the guardian on one large table",
    )
    bench.add_argument("--rows", type=int, default=1_000_000, help="guardian table")
    bench.add_argument("--differences", type=int, default=100, help="guardian drift")

    soak = sub.add_parser(
        "soak", parents=[common], help="long workload with journal events, end to end"
    )
    soak.add_argument("--changes", type=int, default=100_000)
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--name", default="soak", help="names its databases, topics")
    soak.add_argument("--workdir", help="settings, logs (default: a temp dir)")

    faults = sub.add_parser(
        "faults",
        parents=[common],
        help="the relay under injected faults, then the checker",
    )
    faults.add_argument("--seconds", type=float, default=90.0, help="workload time")
    faults.add_argument("--rate", type=float, default=35.0, help="changes per second")
    faults.add_argument("--seed", type=int, default=1)
    faults.add_argument("--writers", type=int, default=1, help="store writer processes")
    faults.add_argument(
        "--changes", type=int, default=0, help="write at least this many changes"
    )
    faults.add_argument(
        "--drain-timeout-s", type=float, default=240.0, help="bound on the drain"
    )
    faults.add_argument("--kills", type=int, default=12, help="leg kills per round")
    faults.add_argument("--rounds", type=int, default=1, help="rounds of every fault")
    faults.add_argument("--down-s", type=float, default=5.0, help="outage length")
    faults.add_argument(
        "--kafka-down-s", type=float, default=0.0, help="broker stop (0: --down-s)"
    )
    faults.add_argument("--one-way-s", type=float, default=12.0)
    faults.add_argument("--disk-mb", type=int, default=96, help="pipeline tmpfs")
    faults.add_argument("--workdir", help="where the run keeps its files")
    faults.add_argument("--no-reflash", action="store_true")
    return parser


def _positive_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number > 0 (got {text})"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 (got {text})")
    return value


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0 (got {text})"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (got {text})")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 1 (got {text})"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 (got {text})")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``appliance`` command."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, SchemaError) as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG: systemd's RestartPreventExitStatus can name it
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `appliance status | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run_leg(args.leg, args.config)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "bench":
        bench = importlib.import_module("appliance.bench")
        return int(bench.main(args))
    if args.command == "soak":
        soak = importlib.import_module("appliance.soak")
        return int(soak.main(args))
    if args.command == "faults":
        return _faults(args)
    settings = config.load_box(
        config.config_path(args.config, config.DEFAULT_BOX_CONFIG)
    )
    if args.command == "pipeline-downgrade":
        return _downgrade(settings.pipeline.db_path, args.to)
    if args.command == "skip-entry":
        return _skip_entry(settings.pipeline.db_path, args)
    conn = store.connect_existing(settings.pipeline.db_path)
    try:
        if args.command == "status":
            stalled_after = settings.webui.stalled_after_s
            return _status(conn, as_json=args.json, stalled_after_s=stalled_after)

        return _dead_letters(conn, as_json=args.json, limit=args.limit)
    except sqlite3.DatabaseError as exc:
        # Not a pipeline database (another file, or one no leg has set up).
        raise ConfigError(
            f"pipeline.db_path: {settings.pipeline.db_path} is not a pipeline"
            f" database the legs made ({exc})"
        ) from exc


def _downgrade(path: Path, to: int) -> int:
    """Rewrite what a release of schema ``to`` cannot read (the legs stopped)."""
    store.connect_existing(path).close()  # exists, or a clear ConfigError
    conn = store.connect(path)
    try:
        rewritten = outbox.downgrade(conn, to)
    finally:
        conn.close()
    print(f"pipeline database at schema {to}: {rewritten} outbox rows back as text")
    return 0


SKIP_POLL_S = 0.2


def _skip_entry(path: Path, args: argparse.Namespace) -> int:
    """Queue a ``skip_entry`` for the miner (audited), then wait for its answer.

    The alarm is read first so a command for no alarm or another entry is
    refused at once; the miner checks again when it carries the command out
    (the alarm may have changed meanwhile). Exit 0 done, 1 refused or
    failed, 75 (EX_TEMPFAIL) still queued when ``--wait-s`` ran out.
    """
    wanted: dict[str, Any] = {"receiver": args.receiver}
    if args.sequence is not None:
        wanted["sequence"] = args.sequence
    else:
        wanted["null_after"] = args.null_after
    wanted = commands.skip_entry_args(wanted)
    store.connect_existing(path).close()  # exists, or a clear ConfigError
    conn = store.connect(path)
    try:
        _alarm_names(conn, wanted)
        user = args.user or _login()
        command_id, created = commands.request_once(
            conn, "miner", "skip_entry", wanted, user
        )
        print(
            f"skip_entry queued as command {command_id}"
            + ("" if created else " (the same one was already waiting)")
        )
        deadline = time.monotonic() + args.wait_s
        while True:
            row = conn.execute(
                "SELECT state, result FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
            if row["state"] in ("done", "failed"):
                _echo(f"{row['state']}: {row['result']}")
                return 0 if row["state"] == "done" else 1
            if time.monotonic() >= deadline:
                print(
                    f"command {command_id} is {row['state']}: the miner carries it"
                    " out between two steps (see the audit page)"
                )
                return 75
            time.sleep(SKIP_POLL_S)
    finally:
        conn.close()


def _alarm_names(conn: sqlite3.Connection, wanted: dict[str, Any]) -> None:
    """Refuse at once when no alarm is up or it names another entry."""
    commands.ensure_schema(conn)
    found = conn.execute(
        "SELECT value FROM meta WHERE key = 'miner.alarm.bad_entry'"
    ).fetchone()
    if found is None:
        raise commands.CommandError("no unusable-entry alarm is up: nothing to skip")
    alarm = json.loads(found[0])
    if alarm.get("sequence") is None:
        named = {
            "receiver": alarm.get("receiver"),
            "null_after": alarm.get("last_stored"),
        }
    else:
        named = {"receiver": alarm.get("receiver"), "sequence": alarm.get("sequence")}
    if named != wanted:
        shown = " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in sorted(named.items())
        )
        raise commands.CommandError(f"the alarm names {shown}: nothing skipped")


def _login() -> str:
    """The operator's name for the audit log: the sudo caller, else the login."""
    import getpass

    return os.environ.get("SUDO_USER") or getpass.getuser()


def _check_config(args: argparse.Namespace) -> int:
    """Values first (ConfigError, exit 78), then the files they name."""
    from appliance import configcheck

    found: list[configcheck.Finding] = []
    if args.hub:
        hub = config.load_hub(
            config.config_path(args.config, config.DEFAULT_HUB_CONFIG)
        )
        if not args.values_only:
            found = configcheck.check_hub(hub)
    else:
        box = config.load_box(
            config.config_path(args.config, config.DEFAULT_BOX_CONFIG)
        )
        if not args.values_only:
            found = configcheck.check_box(box)
    for finding in found:
        print(finding.line(), file=sys.stderr)
    if any(f.level == configcheck.ERROR for f in found):
        print("settings refused", file=sys.stderr)
        return 78
    print("settings ok")
    return 0


def _faults(args: argparse.Namespace) -> int:
    from appliance.faults import harness

    logs.setup("INFO", "faults")
    plan = harness.Plan(
        seconds=args.seconds,
        rate=args.rate,
        writers=args.writers,
        changes=args.changes,
        drain_timeout_s=args.drain_timeout_s,
        seed=args.seed,
        leg_kills=args.kills,
        rounds=args.rounds,
        down_s=args.down_s,
        kafka_down_s=args.kafka_down_s,
        one_way_s=args.one_way_s,
        disk_mb=args.disk_mb,
        reflash=not args.no_reflash,
    )
    return harness.main(plan, Path(args.workdir) if args.workdir else None)


def _run_leg(name: str, config_file: str | None) -> int:
    if name in HUB_LEGS:
        hub = config.load_hub(
            config.config_path(config_file, config.DEFAULT_HUB_CONFIG)
        )
        logs.setup(hub.log_level, name)
        leg = importlib.import_module(HUB_LEGS[name]).build(hub)
        return daemon.run(leg, idle_s=0.2)
    box = config.load_box(config.config_path(config_file, config.DEFAULT_BOX_CONFIG))
    logs.setup(box.log_level, name)
    disk = daemon.DiskWait(Path(box.pipeline.db_path).parent)
    try:
        leg = importlib.import_module(BOX_LEGS[name]).build(box)
        beat_conn = store.connect(box.pipeline.db_path)
    except sqlite3.OperationalError as exc:
        if not daemon.is_disk_error(exc):
            raise
        # A full pipeline disk at start is waited out like one met in a step.
        stopper = daemon.Stopper()
        stopper.install()
        daemon.wait_for_disk(
            name,
            disk,
            stopper=stopper,
            ping_every=daemon.watchdog_interval_s(),
            heartbeat=None,
            error=exc,
        )
        return 0
    pid = os.getpid()

    def beat(state: str, status: str) -> None:
        if status.startswith("data gap"):
            state = "data_gap"  # the miner's stop: visible until an operator acts
        try:
            store.heartbeat(beat_conn, name, pid, state, status)
        except sqlite3.OperationalError as exc:
            # Best effort: the next beat comes within seconds. A busy or full
            # database is the step's business (daemon waits it out), never a
            # reason for the leg to die between two steps.
            logger.warning("heartbeat not written stage=%s error=%s", name, exc)

    idle = box.ibmi.poll_interval_s if name == "miner" else 0.2
    runner = commands.Runner(beat_conn, leg, name)
    return daemon.run(leg, idle_s=idle, heartbeat=beat, commands=runner, disk=disk)


def _status(conn: Any, *, as_json: bool, stalled_after_s: float = 30.0) -> int:
    now = time.time()
    outbox = {
        row[0]: row[1]
        for row in conn.execute("SELECT state, count(*) FROM outbox GROUP BY state")
    }
    legs = [
        {
            "leg": r["leg"],
            "pid": r["pid"],
            # As the web page says it: a live state with an old heartbeat is
            # a leg that died or hangs (a SIGKILL writes no "stopped").
            "state": "stalled"
            if r["state"] in ("running", "paused")
            and now - r["updated_at"] > stalled_after_s
            else r["state"],
            "status": r["status"],
            "age_s": round(now - r["updated_at"], 1),
        }
        for r in conn.execute("SELECT * FROM heartbeats ORDER BY leg")
    ]
    parked = conn.execute(
        "SELECT count(*) FROM dead_letters WHERE state = 'parked'"
    ).fetchone()[0]
    journal = {
        r[0].removeprefix("miner."): json.loads(r[1])
        for r in conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('miner.lag',"
            " 'miner.preflight', 'miner.data_gap', 'miner.alarm.bad_entry')"
        )
    }
    report = {
        "journal": journal,
        "counters": store.counters(conn),
        "outbox": outbox,
        "legs": legs,
        "dead_letters": parked,
        "guardian": _guardian_runs(conn),
    }
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    for leg in legs:
        _echo(
            f"{leg['leg']:<12} {leg['state']:<8} pid={leg['pid']:<7} "
            f"age={leg['age_s']}s {leg['status']}"
        )
    _echo("outbox: " + ", ".join(f"{k}={v}" for k, v in sorted(outbox.items())))
    _echo(f"dead letters parked: {parked}")
    for name, value in sorted(journal.items()):
        _echo(f"journal {name}: {json.dumps(value, sort_keys=True)}")
    for run in report["guardian"]:
        _echo(
            f"guardian {run['run']} {run['table_name']} {run['kind']}/{run['mode']}"
            f" {run['state']} rows={run['rows_read']} changed={run['changed']}"
            f" loaded={run['loaded']} repaired={run['repaired']}"
            f" deleted={run['deleted']}"
            f" dropped={run['dropped']}"
            + (f" error={run['error']}" if run["error"] else "")
        )
    for name, value in sorted(report["counters"].items()):
        _echo(f"  {name} = {value}")
    return 0


def _echo(line: str) -> None:
    """Print one line of store data, control and bidi characters escaped.

    A raw ESC or U+202E from the store would otherwise drive the terminal or
    reorder the text shown to the technician (found by a breaker run).
    """
    print("".join(c if c.isprintable() else ascii(c)[1:-1] for c in line))


GUARDIAN_RUNS_SHOWN = 10


def _guardian_runs(conn: Any) -> list[dict[str, Any]]:
    """The guardian's last runs, newest first (none on a box without them)."""
    try:
        rows = conn.execute(
            "SELECT * FROM guardian_runs ORDER BY id DESC LIMIT ?",
            (GUARDIAN_RUNS_SHOWN,),
        ).fetchall()
    except sqlite3.OperationalError:  # a database from before the guardian
        return []
    # `loaded` came later: a database the control leg has not upgraded yet
    # shows 0. Internal columns stay out of the report.
    shown = [
        "run",
        "table_name",
        "kind",
        "mode",
        "reason",
        "state",
        "started_at",
        "finished_at",
        "rows_read",
        "changed",
        "parts",
        "narrowed",
        "loaded",
        "repaired",
        "deleted",
        "dropped",
        "error",
    ]
    return [{k: {"loaded": 0, **dict(row)}[k] for k in shown} for row in rows]


def _dead_letters(conn: Any, *, as_json: bool, limit: int) -> int:
    rows = [
        dict(r)
        for r in conn.execute(
            "SELECT id, created_at, stage, table_name, position, field, byte_offset,"
            " bytes_hex, expected, reason, raw_id, state FROM dead_letters"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        )
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no dead letters")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        _echo(
            f"#{r['id']} {when} [{r['state']}] stage={r['stage']} "
            f"table={r['table_name']} position={r['position']} field={r['field']}"
            + ("" if r["byte_offset"] is None else f" offset={r['byte_offset']}")
        )
        _echo(f"    reason: {r['reason']}")
        if r["expected"]:
            _echo(f"    expected: {r['expected']}")
        if r["bytes_hex"]:
            _echo(f"    bytes: {r['bytes_hex'][:128]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
