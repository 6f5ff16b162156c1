"""The whole relay on one machine, against the emulator: demo, bench, e2e test.

A :class:`Stack` owns one run: a fresh emulator database, a fresh ODH
database, its own Kafka topics, generated passwords (files mode 0600), the
settings files, and the five leg processes (``appliance run LEG``). It drives
store activity, waits until the relay has drained, counts every leg and
compares the ODH tables with the emulator's tables value for value.

The real services (Kafka, PostgreSQL) are not started here: the caller
passes where they run (``scripts/services.py`` starts them on loopback).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from appliance import store

logger = logging.getLogger(__name__)

BOX_LEGS = ("miner", "transformer", "enricher", "shipper")
# The guardian (issue 5) runs beside the data flow; the fault harness kills
# and times the data legs above, so it is kept apart from them.
GUARDIAN_LEG = "control"
STORE_TABLES = ("ARTICLE", "PRIX", "STOCK")
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "config" / "scripts"
# What every leg's systemd unit sets (Environment= in systemd/, a test holds
# the two together), so the demo and the bench measure the box's legs.
# MALLOC_ARENA_MAX: glibc gives a thread that finds the malloc arenas busy an
# arena of its own, up to 8 per core; the legs with threads (the enricher's
# pool and JVM, librdkafka's threads in the shipper and the sink) then keep
# freed memory in many arenas. Two bound that on a box of any core count
# (issue 9; docs/benchmarks.md has what it measured).
LEG_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}


@dataclass(frozen=True)
class Services:
    """Where the real services listen (from ``scripts/services.py env``)."""

    kafka_bootstrap: str
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password_file: Path

    @classmethod
    def from_env(cls) -> Services:
        """Read APPLIANCE_KAFKA_BOOTSTRAP and APPLIANCE_PG_* variables."""
        env = os.environ
        try:
            return cls(
                kafka_bootstrap=env["APPLIANCE_KAFKA_BOOTSTRAP"],
                pg_host=env["APPLIANCE_PG_HOST"],
                pg_port=int(env["APPLIANCE_PG_PORT"]),
                pg_user=env["APPLIANCE_PG_USER"],
                pg_password_file=Path(env["APPLIANCE_PG_PASSWORD_FILE"]),
            )
        except KeyError as exc:
            raise SystemExit(
                f"missing {exc.args[0]}: run "
                "'eval \"$(.venv/bin/python scripts/services.py env)\"' first"
            ) from exc

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Services:
        """Build from the dict that ``services.ensure_up()`` returns."""
        pg = state["postgres"]
        return cls(
            kafka_bootstrap=state["kafka"]["bootstrap"],
            pg_host=pg["host"],
            pg_port=int(pg["port"]),
            pg_user=pg["user"],
            pg_password_file=Path(pg["password_file"]),
        )

    def conninfo(self, dbname: str) -> str:
        password = self.pg_password_file.read_text().strip()
        return psycopg.conninfo.make_conninfo(
            host=self.pg_host,
            port=self.pg_port,
            user=self.pg_user,
            password=password,
            dbname=dbname,
        )


@dataclass
class LegProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    """One throwaway relay: emulator, hub, topics, settings, legs."""

    services: Services
    workdir: Path
    name: str = "demo"
    store_id: str = "MQ01"
    window: int | None = None  # None: the product's default (ibmi.window)
    legs: list[LegProcess] = field(default_factory=list)
    # The fault harness (appliance/faults/) runs the ODH on its own PostgreSQL,
    # the box's Kafka traffic through a proxy, and the pipeline database on a
    # small filesystem of its own; by default all of it is as above.
    hub_services: Services | None = None
    box_bootstrap: str | None = None
    pipeline_dir: Path | None = None
    confirm_timeout_s: float = 30.0
    pipeline_extra: str = ""
    # The guardian (control leg): no scheduled check and no initial load
    # unless a test asks, so other tests see only the changes they made.
    guardian_interval_s: float = 0.0
    guardian_initial_load: bool = False

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.ibmi_db = f"ibmi_{self.name}"
        self.odh_db = f"odh_{self.name}"
        self.secrets = self.workdir / "secrets"
        self.box_config = self.workdir / "box.toml"
        self.hub_config = self.workdir / "hub.toml"
        self.pipeline_db = (self.pipeline_dir or self.workdir) / "pipeline.db"
        self.hub = self.hub_services or self.services
        self.changes_topic = f"odh.changes.{self.name}"
        self.confirm_topic = f"odh.confirm.{self.name}"
        self._emulator: Any = None
        self._spawned: list[int] = []

    # -- set-up -----------------------------------------------------------

    def prepare(self) -> None:
        """Fresh databases, roles, topics, settings; nothing of a past run."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover_legs()
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        for stale in self.pipeline_db.parent.glob("pipeline.db*"):
            stale.unlink()
        self._recreate_database(self.ibmi_db)
        self._recreate_database(self.odh_db, self.hub)
        reader = f"relay_{self.name}"
        reader_password = self._secret("ibmi-password")
        emulator = self.emulator()
        emulator.install()
        emulator.create_store_tables()
        # data: the guardian reads the store tables through the same login.
        emulator.grant_reader(reader, reader_password, data=True)
        sink_role = f"odh_sink_{self.name}"
        self._create_sink_role(sink_role, self._secret("odh-password"))
        from appliance import kafka as kafka_boundary
        from appliance.config import KafkaSection

        kafka_boundary.ensure_topics(self._kafka_section(KafkaSection), partitions=3)
        self._write_settings(reader, sink_role)

    def emulator(self) -> Any:
        """The emulator's Python API on this stack's database."""
        if self._emulator is None:
            from appliance.emulator import Emulator

            self._emulator = Emulator(self.services.conninfo(self.ibmi_db))
        return self._emulator

    def _recreate_database(self, dbname: str, where: Services | None = None) -> None:
        where = where or self.services
        with psycopg.connect(where.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(dbname)
                )
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    def _create_sink_role(self, role: str, password: str) -> None:
        """A login role that owns only the ODH schema of its database."""
        with psycopg.connect(self.hub.conninfo(self.odh_db), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(self.odh_db), sql.Identifier(role)
                )
            )

    def _secret(self, name: str) -> str:
        value = secrets.token_urlsafe(24)
        path = self.secrets / name
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(value + "\n")
        return value

    def _kafka_section(self, cls: Any) -> Any:
        return cls(
            bootstrap=self.services.kafka_bootstrap,
            changes_topic=self.changes_topic,
            confirm_topic=self.confirm_topic,
        )

    def _write_settings(self, reader: str, sink_role: str) -> None:
        topics = (
            f'changes_topic = "{self.changes_topic}"\n'
            f'confirm_topic = "{self.confirm_topic}"\n'
        )
        kafka = f'[kafka]\nbootstrap = "{self.services.kafka_bootstrap}"\n{topics}'
        box_kafka = (
            f'[kafka]\nbootstrap = "{self.box_bootstrap}"\n{topics}'
            if self.box_bootstrap
            else kafka
        )
        scripts = "".join(
            "[[enricher.scripts]]\n"
            f'name = "{name}"\nlanguage = "{lang}"\npath = "{SCRIPTS_DIR / file}"\n'
            for name, lang, file in (
                ("business_key", "beanshell", "business_key.bsh"),
                ("region", "javascript", "region.js"),
                ("message_interest", "python", "interest.py"),
            )
        )
        self.box_config.write_text(
            f'[store]\nid = "{self.store_id}"\ntimezone = "America/Martinique"\n\n'
            "[ibmi]\n"
            'dialect = "emulator"\ndriver = "PostgreSQL Unicode"\n'
            f'host = "{self.services.pg_host}"\nport = {self.services.pg_port}\n'
            f'database = "{self.ibmi_db}"\nuser = "{reader}"\n'
            f'password_file = "{self.secrets / "ibmi-password"}"\n'
            + ("" if self.window is None else f"window = {self.window}\n")
            + "poll_interval_s = 0.2\n\n"
            f'[pipeline]\ndb_path = "{self.pipeline_db}"\n{self.pipeline_extra}\n'
            f"[enricher]\ntimeout_ms = 2000\n{scripts}\n"
            f"{box_kafka}\n[shipper]\nconfirm_timeout_s = {self.confirm_timeout_s}\n\n"
            f"[guardian]\ninterval_s = {self.guardian_interval_s}\n"
            f"initial_load = {str(self.guardian_initial_load).lower()}\n"
            "read_chunk_rows = 500\nmax_rows_per_s = 20000\nwait_pipeline_s = 300\n"
        )
        self.hub_config.write_text(
            f"{kafka}\n[postgres]\n"
            f'host = "{self.hub.pg_host}"\nport = {self.hub.pg_port}\n'
            f'database = "{self.odh_db}"\nuser = "{sink_role}"\n'
            f'password_file = "{self.secrets / "odh-password"}"\n'
            'sslmode = "disable"\n\n'
            f'[sink]\ngroup_id = "odh-sink-{self.name}"\n'
        )

    # -- legs -------------------------------------------------------------

    def start_legs(self) -> None:
        """Start the box legs, the guardian and the hub sink as their own processes."""
        for leg in (*BOX_LEGS, GUARDIAN_LEG, "sink"):
            self.legs.append(self.spawn_leg(leg))

    def _stop_leftover_legs(self, timeout_s: float = 30.0) -> None:
        """Stop legs a past run of this stack left running (killed harness).

        Their pids are in ``legs.pids``; a pid counts only while its command
        line still names this stack's settings file, so a recycled pid is
        never signalled. Without this a second run would delete the pipeline
        and the databases under legs that still write to them.
        """
        record = self.workdir / "legs.pids"
        if not record.exists():
            return
        ours = []
        for word in record.read_text().split():
            pid = int(word)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            configs = (str(self.box_config).encode(), str(self.hub_config).encode())
            if any(c in cmdline for c in configs):
                os.kill(pid, signal.SIGTERM)
                ours.append(pid)
        deadline = time.monotonic() + timeout_s
        for pid in ours:
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        record.unlink()

    def spawn_leg(self, leg: str) -> LegProcess:
        """Start one leg as its own process (log appended to logs/<leg>.log)."""
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        exe = Path(sys.executable).parent / "appliance"
        cfg = self.hub_config if leg == "sink" else self.box_config
        log = logs / f"{leg}.log"
        # A value exported by the caller wins: an engineer may try another.
        env = LEG_ENVIRONMENT | {
            k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"
        }
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(exe), "--config", str(cfg), "run", leg],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._spawned = [p for p in self._spawned if Path(f"/proc/{p}").exists()]
        self._spawned.append(proc.pid)
        (self.workdir / "legs.pids").write_text(" ".join(map(str, self._spawned)))
        return LegProcess(leg, proc, log)

    def close(self) -> None:
        """Stop the legs (if any) and close the emulator's connection."""
        if self.legs:
            self.stop_legs()
        if self._emulator is not None:
            self._emulator.close()
            self._emulator = None

    def check_legs_alive(self) -> None:
        """Raise when a leg died: the relay must never stop by itself."""
        for leg in self.legs:
            code = leg.process.poll()
            if code is not None:
                tail = leg.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"leg {leg.name} exited with {code}:\n{tail}")

    def stop_legs(self, timeout_s: float = 30.0) -> dict[str, tuple[int | None, float]]:
        """SIGTERM every leg; return exit code and seconds to stop, per leg."""
        started = time.monotonic()
        for leg in self.legs:
            if leg.process.poll() is None:
                leg.process.send_signal(signal.SIGTERM)
        result: dict[str, tuple[int | None, float]] = {}
        for leg in self.legs:
            try:
                code: int | None = leg.process.wait(
                    max(0.1, timeout_s - (time.monotonic() - started))
                )
            except subprocess.TimeoutExpired:
                leg.process.kill()
                leg.process.wait()
                code = None
            result[leg.name] = (code, round(time.monotonic() - started, 2))
        self.legs.clear()
        return result

    # -- the guardian -----------------------------------------------------

    def guardian_command(self, kind: str, args: dict[str, Any]) -> int:
        """Queue a ``check`` or ``load`` for the control leg; return its id."""
        from appliance import commands

        with self.pipeline() as conn:
            commands.ensure_schema(conn)
            return commands.request(conn, "control", kind, args, "devstack")

    def wait_guardian(
        self,
        command_id: int,
        states: tuple[str, ...] = ("loaded", "done"),
        timeout_s: float = 300.0,
    ) -> list[dict[str, Any]]:
        """Wait until every run row of the command's run is in ``states``.

        Returns the run rows (``guardian_runs``); raises TimeoutError with the
        last rows and events when they do not get there in time.
        """
        started = time.monotonic()
        rows: list[dict[str, Any]] = []
        while time.monotonic() - started < timeout_s:
            self.check_legs_alive()
            with self.pipeline() as conn:
                command = conn.execute(
                    "SELECT state, result FROM commands WHERE id = ?", (command_id,)
                ).fetchone()
                if command is not None and command["state"] == "failed":
                    raise RuntimeError(f"command {command_id}: {command['result']}")
                run = ""
                if command is not None and "run=" in command["result"]:
                    run = command["result"].split("run=")[1].split()[0]
                rows = [
                    dict(r)
                    for r in conn.execute(
                        "SELECT * FROM guardian_runs WHERE run = ?", (run,)
                    )
                ]
            if rows and all(r["state"] in states for r in rows):
                return rows
            time.sleep(1.0)
        with self.pipeline() as conn:
            events = [dict(r) for r in conn.execute("SELECT * FROM guardian_events")]
        raise TimeoutError(
            f"guardian runs not {states} after {timeout_s}s: {rows} {events[-5:]}"
        )

    # -- observing --------------------------------------------------------

    @contextmanager
    def pipeline(self) -> Iterator[sqlite3.Connection]:
        conn = store.connect(self.pipeline_db)
        try:
            yield conn
        finally:
            conn.close()

    def backlog(self) -> dict[str, int]:
        """What is still on its way, leg by leg."""
        with self.pipeline() as conn:

            def one(query: str) -> int:
                return int(conn.execute(query).fetchone()[0])

            mark = conn.execute(
                "SELECT receiver_name, sequence FROM bookmark"
            ).fetchone()
            # The journal's real end, not the miner's last view of it (a miner
            # slow to look again would make a busy relay look drained).
            end = self.emulator().head()
            unread = -1
            if mark is not None and mark[0] == end.receiver_name:
                unread = (end.sequence or 0) - int(mark[1])
            return {
                "journal_unread": unread,
                "raw_new": one("SELECT count(*) FROM raw_entries WHERE state = 0"),
                "held": one("SELECT count(*) FROM held_changes"),
                "changes_new": one("SELECT count(*) FROM changes WHERE state = 0"),
                "unconfirmed": one(
                    "SELECT count(*) FROM outbox WHERE state != 'confirmed'"
                ),
            }

    def wait_drained(self, timeout_s: float = 300.0, settle_s: float = 1.0) -> float:
        """Wait until every leg is idle twice in a row; return seconds waited."""
        started = time.monotonic()
        calm = 0
        while time.monotonic() - started < timeout_s:
            self.check_legs_alive()
            if all(v == 0 for v in self.backlog().values()):
                calm += 1
                if calm >= 2:
                    return time.monotonic() - started
            else:
                calm = 0
            time.sleep(settle_s)
        raise TimeoutError(f"relay not drained after {timeout_s}s: {self.backlog()}")

    def counts(self) -> dict[str, int]:
        """Counts at each leg, the hub's included."""
        with self.pipeline() as conn:
            counters = store.counters(conn)
            outbox_confirmed = conn.execute(
                "SELECT count(*) FROM outbox WHERE state = 'confirmed'"
            ).fetchone()[0]
            parked = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        with psycopg.connect(self.hub.conninfo(self.odh_db)) as pg:
            applied, distinct = pg.execute(
                "SELECT count(*), count(DISTINCT (store_id, epoch, lane, lane_seq))"
                " FROM odh.applied"
            ).fetchone() or (0, 0)
        return {
            "miner.entries": counters.get("miner.entries", 0),
            "transformer.changes": counters.get("transformer.changes", 0),
            "enricher.messages": counters.get("enricher.messages", 0),
            "shipper.sent": counters.get("shipper.sent", 0),
            "outbox.confirmed": int(outbox_confirmed),
            "hub.applied": int(applied),
            "hub.applied_distinct": int(distinct),
            "dead_letters": int(parked),
        }

    def compare(
        self, tables: tuple[str, ...] = STORE_TABLES
    ) -> dict[str, dict[str, Any]]:
        """Per table: source rows, ODH rows, equal or not, a few differences.

        A column added by ALTER that an ODH row never saw (no change since)
        counts as NULL there, as it reads on the IBM i; a column ODH has and
        the source does not is still a difference.
        """
        from appliance.hub import odh

        emulator = self.emulator()
        emulator.forget_tables()  # an ALTER may have changed the columns
        report: dict[str, dict[str, Any]] = {}
        with psycopg.connect(self.hub.conninfo(self.odh_db)) as pg:
            for table in tables:
                source = _canonical(emulator.rows(table))
                unseen = dict.fromkeys(c.name for c in emulator.table(table).columns)
                rows: Iterable[dict[str, Any]]
                try:
                    rows = odh.fetch_rows(pg, table, self.store_id).values()
                except psycopg.errors.UndefinedTable:
                    pg.rollback()
                    rows = []
                target = _canonical({**unseen, **row} for row in rows)
                report[table] = {
                    "source": len(source),
                    "odh": len(target),
                    "equal": source == target,
                    "only_source": sorted(set(source) - set(target))[:3],
                    "only_odh": sorted(set(target) - set(source))[:3],
                }
        return report


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _canonical(rows: Any) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows)
