"""The fault harness: the whole relay under a workload, broken at random moments.

One run:

1. starts its OWN Kafka (with a PROXIED listener advertised on the fault
   proxy's port) and its OWN PostgreSQL for the ODH (``scripts/services.py``
   with a state dir of its own), so it can stop and kill them; the emulator
   stays on the shared PostgreSQL, which is never touched;
2. mounts a small tmpfs of its own for the pipeline database (disk full);
3. prepares a :class:`~appliance.devstack.Stack`, creates the ODH tables as
   the sink role and puts the history and failure triggers on them;
4. starts the five legs under a :class:`~appliance.faults.legs.Supervisor`,
   runs the store workload in writer processes
   (:mod:`appliance.faults.writer`), and injects the planned faults at
   seeded random moments, one after the other;
5. waits for the relay to drain, runs :func:`appliance.faults.checker.check`
   and, if asked, the reflash scenario (:mod:`appliance.faults.reflash`);
6. stops and removes everything it started (by pid), whatever happened.

Every wait is bounded; every fault is undone by the fault itself.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from psycopg import sql

from appliance import store
from appliance.devstack import BOX_LEGS, STORE_TABLES, Services, Stack
from appliance.faults import checker, kinds, legs
from appliance.faults.checker import Report
from appliance.faults.proxy import FaultProxy

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ALL_LEGS = (*BOX_LEGS, "sink")
_WORKLOAD_CHUNK_S = 5.0
_WORKLOAD_EXTRA_S = 600.0
OTHER_KINDS = (
    "kafka_stop",
    "kafka_kill",
    "net_cut",
    "net_one_way",
    "pg_restart",
    "sink_statement",
    "pg_disk_full",
    "disk_full",
    "power_cut",
)


@dataclass
class Plan:
    """What to run and break; the defaults are the CI-sized run."""

    seconds: float = 90.0
    rate: float = 35.0
    # Store writers in processes of their own, and the changes they write
    # together at least (the run lasts longer if they need it).
    writers: int = 1
    changes: int = 0
    seed: int = 1
    leg_kills: int = 12
    rounds: int = 1
    down_s: float = 5.0
    kafka_down_s: float = 0.0  # kafka_stop's outage; 0: down_s
    one_way_s: float = 12.0
    confirm_timeout_s: float = 8.0
    articles: int = 200
    drain_timeout_s: float = 240.0
    disk_mb: int = 96
    reflash: bool = True
    name: str = "faults"


@dataclass
class Outcome:
    """What happened and what the checker found."""

    injected: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    report: Report = field(default_factory=Report)
    written: dict[str, float] = field(default_factory=dict)
    drain_s: float = -1.0
    restarts: Counter[str] = field(default_factory=Counter)
    own_exits: Counter[str] = field(default_factory=Counter)
    reflash: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.report.ok and self.reflash.get("ok", True) is True

    def lines(self) -> list[str]:
        kinds_line = ", ".join(f"{k}={v}" for k, v in sorted(self.injected.items()))
        return [
            f"faults injected: {sum(self.injected.values())} ({kinds_line})",
            f"changes written by the store: {int(self.written.get('changes', 0))}",
            *self.report.lines(),
            f"time to drain after the last fault: {self.drain_s:.1f}s",
            "box counters: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())),
            f"leg restarts: {dict(self.restarts)}; exits not caused by the"
            f" harness: {dict(self.own_exits)}",
            *(f"reflash: {k} = {v}" for k, v in self.reflash.items()),
            f"run took {self.elapsed_s:.0f}s; verdict: {'OK' if self.ok else 'FAILED'}",
        ]


def _services() -> ModuleType:
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module("services")


def schedule(plan: Plan) -> list[str]:
    """The faults of the run, in a seeded random order.

    Leg kills go round the five legs; the first box-leg kills are aimed
    inside a write transaction, one inside a checkpoint.
    """
    rng = random.Random(plan.seed)  # noqa: S311  (fault timing, not secrets)
    items: list[str] = []
    for _ in range(plan.rounds):
        order = list(ALL_LEGS)
        rng.shuffle(order)
        kills = [f"kill:{order[i % len(order)]}" for i in range(plan.leg_kills)]
        box = [i for i, k in enumerate(kills) if k.split(":")[1] in BOX_LEGS]
        for n, i in enumerate(box[:3]):
            kills[i] = kills[i].replace("kill:", "kill_in_tx:" if n < 2 else "ckpt:")
        items += kills + list(OTHER_KINDS)
    rng.shuffle(items)
    return items


class Harness:
    """One fault run in ``workdir`` (see the module docstring)."""

    def __init__(self, workdir: Path, plan: Plan) -> None:
        self.workdir = workdir.resolve()
        self.plan = plan
        self.outcome = Outcome()
        self.services = _services()
        # sun_path is short: PostgreSQL's socket dir must be a short path.
        self.state_dir = Path(tempfile.mkdtemp(prefix="flt-", dir="/tmp"))
        self.disk: Path | None = None
        self.proxy: FaultProxy | None = None
        self.stack: Stack | None = None
        self.supervisor: legs.Supervisor | None = None
        self._written: dict[str, float] = {}

    # -- the run -------------------------------------------------------------

    def run(self) -> Outcome:
        started = time.monotonic()
        try:
            stack = self._setup()
            self._inject(stack)
            self._check(stack)
            if self.plan.reflash:
                from appliance.faults import reflash

                self.outcome.reflash = reflash.scenario(self, stack)
        finally:
            self._teardown()
            self.outcome.elapsed_s = time.monotonic() - started
        return self.outcome

    def _setup(self) -> Stack:
        svc = self.services
        shared = Services.from_state(svc.ensure_up())
        proxy_port = svc.free_port()
        backend = svc.set_kafka_proxy(self.state_dir, proxy_port)
        kafka = svc.start_kafka(self.state_dir)
        own = Services.from_state(
            {"kafka": kafka, "postgres": svc.start_postgres(self.state_dir)}
        )
        self.proxy = FaultProxy(proxy_port, backend)
        self.proxy.start()
        self.disk = self._mount_disk()
        stack = Stack(
            Services(
                kafka["bootstrap"],
                shared.pg_host,
                shared.pg_port,
                shared.pg_user,
                shared.pg_password_file,
            ),
            self.workdir / "stack",
            name=f"{self.plan.name}_{secrets.token_hex(3)}",
            store_id="MQ09",
            hub_services=own,
            box_bootstrap=f"127.0.0.1:{proxy_port}",
            pipeline_dir=self.disk,
            confirm_timeout_s=self.plan.confirm_timeout_s,
        )
        self.stack = stack
        stack.prepare()
        self._odh_tables(stack)
        from appliance.emulator import workload

        workload.seed_store(stack.emulator(), self.plan.articles, seed=self.plan.seed)
        stack.start_legs()
        self.supervisor = legs.Supervisor(stack)
        self.supervisor.start()
        return stack

    def _mount_disk(self) -> Path | None:
        """A tmpfs of ``disk_mb`` for the pipeline database (None when not root)."""
        mount = self.workdir / "pipefs"
        mount.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.plan.disk_mb}m,mode=0700",
                "tmpfs",
                str(mount),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            logger.warning("no tmpfs, disk full skipped error=%s", done.stderr.strip())
            return None
        return mount

    def _odh_tables(self, stack: Stack) -> None:
        """Create the ODH tables as the sink role, then the triggers as superuser."""
        from appliance.hub import odh

        password = (stack.secrets / "odh-password").read_text().strip()
        hub = stack.hub
        with (
            psycopg.connect(
                host=hub.pg_host,
                port=hub.pg_port,
                user=f"odh_sink_{stack.name}",
                password=password,
                dbname=stack.odh_db,
                autocommit=True,
            ) as sink,
            sink.transaction(),
        ):
            odh.ensure_base(sink, "odh")
            for table in STORE_TABLES:
                odh.ensure_table(sink, "odh", table)
        with psycopg.connect(hub.conninfo(stack.odh_db), autocommit=True) as admin:
            checker.install_history(admin, list(STORE_TABLES))

    # -- faults --------------------------------------------------------------

    def kit(self) -> kinds.Kit:
        assert self.stack and self.supervisor and self.proxy
        return kinds.Kit(
            services=self.services,
            state_dir=self.state_dir,
            supervisor=self.supervisor,
            proxy=self.proxy,
            admin_conninfo=self.stack.hub.conninfo(self.stack.odh_db),
            disk=self.disk,
            down_s=self.plan.down_s,
            kafka_down_s=self.plan.kafka_down_s,
        )

    def _inject(self, stack: Stack) -> None:
        plan = self.plan
        items = schedule(plan)
        rng = random.Random(plan.seed + 1)  # noqa: S311  (fault timing)
        span = max(plan.seconds - 6.0, 1.0)
        moments = sorted(3.0 + rng.random() * span for _ in items)
        writers = self._start_writers(stack)
        started = time.monotonic()
        last_fault_end = started
        try:
            for moment, item in zip(moments, items, strict=True):
                wait = started + moment - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self._one(item)
                last_fault_end = time.monotonic()
        except BaseException:
            self._stop_writers(writers)
            raise
        self._join_writers(writers)
        self.outcome.written = self._written
        self.outcome.drain_s = self._drain(stack, last_fault_end)

    def _one(self, item: str) -> None:
        kind, _, leg = item.partition(":")
        assert self.supervisor is not None
        began = time.monotonic()
        note = self._do(kind, leg)
        took = time.monotonic() - began
        label = kind if not leg else f"{kind}:{leg}"
        if kind == "ckpt":
            label = "kill_checkpoint"
        self.outcome.injected[label] += 1
        self.outcome.notes.append(f"{label}: {note} ({took:.1f}s)")
        logger.info("fault injected stage=%s elapsed_s=%.1f", label, took)

    def _do(self, kind: str, leg: str) -> str:
        assert self.supervisor is not None
        sup = self.supervisor
        if kind == "kill":
            return f"pid {sup.kill(leg)} killed"
        if kind == "kill_in_tx":
            caught, waited = legs.aimed_kill(sup, [leg], legs.WRITE_LOCK_BYTE, 5.0)
            where = "inside its write transaction" if caught else "not caught in one"
            return f"{where} after {waited:.2f}s"
        if kind == "ckpt":
            return self._checkpoint_kill()
        kit = self.kit()
        simple: dict[str, Callable[[kinds.Kit], str]] = {
            "kafka_stop": kinds.kafka_stop,
            "kafka_kill": kinds.kafka_kill,
            "net_cut": kinds.net_cut,
            "pg_restart": kinds.pg_restart,
            "sink_statement": kinds.sink_statement,
            "pg_disk_full": kinds.pg_disk_full,
            "disk_full": kinds.disk_full,
        }
        if kind in simple:
            return simple[kind](kit)
        if kind == "net_one_way":
            return kinds.net_one_way(kit, self.plan.one_way_s)
        if kind == "power_cut":
            return kinds.power_cut(kit, self.workdir)
        raise ValueError(f"fault kind: unknown {kind!r}")

    def _checkpoint_kill(self) -> str:
        assert self.supervisor is not None
        caught, waited = legs.aimed_kill(
            self.supervisor, list(BOX_LEGS), legs.CHECKPOINT_LOCK_BYTE, 15.0
        )
        if not caught:
            return f"no checkpoint seen in {waited:.0f}s, killed anyway"
        return f"{caught} killed inside a checkpoint after {waited:.2f}s"

    def _start_writers(self, stack: Stack) -> list[subprocess.Popen[str]]:
        """``writers`` store writers (:mod:`appliance.faults.writer`), one shard each.

        They write for at least ``seconds`` and ``changes``, until the faults
        end (the stop file), never longer than ``seconds`` +
        ``_WORKLOAD_EXTRA_S``; faults are thus always injected under load.
        """
        plan = self.plan
        stop_file = self.workdir / "writers.stop"
        stop_file.unlink(missing_ok=True)
        procs = []
        for own in range(plan.writers):
            orders = {
                "conninfo": stack.services.conninfo(stack.ibmi_db),
                "rate": plan.rate / plan.writers,
                "seconds": plan.seconds,
                "changes": -(-plan.changes // plan.writers),
                "max_s": plan.seconds + _WORKLOAD_EXTRA_S,
                "seed": plan.seed * 100 + own,
                "shard": [own, plan.writers],
                "stop_file": str(stop_file),
            }
            proc = subprocess.Popen(
                [sys.executable, "-m", "appliance.faults.writer"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(orders))
            proc.stdin.close()
            proc.stdin = None  # communicate() must not flush it again
            procs.append(proc)
        return procs

    def _join_writers(self, procs: list[subprocess.Popen[str]]) -> None:
        """Tell the writers the faults are over; add up what they wrote."""
        (self.workdir / "writers.stop").touch()
        total: Counter[str] = Counter()
        failed = []
        for proc in procs:
            wait = self.plan.seconds + _WORKLOAD_EXTRA_S + 60
            try:
                out, err = proc.communicate(timeout=wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            if proc.returncode != 0:
                failed.append(err.strip()[-2000:] or f"exit {proc.returncode}")
                continue
            total.update(json.loads(out))
        if failed:
            raise RuntimeError("store workload failed: " + "; ".join(failed))
        self._written = {k: float(v) for k, v in total.items()}

    def _stop_writers(self, procs: list[subprocess.Popen[str]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()

    def _drain(self, stack: Stack, since: float) -> float:
        """Wait until nothing is on its way; seconds from ``since`` (the last fault)."""
        deadline = time.monotonic() + self.plan.drain_timeout_s
        calm = 0
        while time.monotonic() < deadline:
            try:
                idle = all(v == 0 for v in stack.backlog().values())
            except Exception:
                idle = False
            calm = calm + 1 if idle else 0
            if calm >= 2:
                return time.monotonic() - since - 1.0
            time.sleep(1.0)
        raise TimeoutError(
            f"relay not drained {self.plan.drain_timeout_s:.0f}s after the last"
            f" fault: {stack.backlog()}"
        )

    # -- check and teardown --------------------------------------------------

    def _check(self, stack: Stack) -> None:
        assert self.supervisor is not None
        self.outcome.restarts = Counter(self.supervisor.restarts)
        self.outcome.own_exits = Counter(self.supervisor.own_exits)
        report = self.check_now(stack)
        self.outcome.report = report
        with stack.pipeline() as pipe:
            self.outcome.counters = {
                k: v
                for k, v in store.counters(pipe).items()
                if k.startswith(("shipper.", "miner.budget"))
            }

    def check_now(self, stack: Stack) -> Report:
        compare = stack.compare()
        with (
            stack.pipeline() as pipe,
            psycopg.connect(stack.services.conninfo(stack.ibmi_db)) as emu,
            psycopg.connect(stack.hub.conninfo(stack.odh_db)) as hub,
        ):
            return checker.check(
                pipe,
                emu,
                hub,
                store_id=stack.store_id,
                tables=list(STORE_TABLES),
                compare=compare,
            )

    def _teardown(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.stack is not None:
            self.stack.close()
            self._keep_pipeline(self.stack)
            if self.outcome.ok:
                self._drop(self.stack)
        if self.proxy is not None:
            self.proxy.stop()
        for stop in (self.services.stop_kafka, self.services.stop_postgres):
            try:
                stop(self.state_dir, wipe=True)
            except Exception:
                logger.exception("service stop failed")
        if self.disk is not None:
            subprocess.run(["umount", str(self.disk)], check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _keep_pipeline(self, stack: Stack) -> None:
        """Copy the pipeline database out of the tmpfs before it is unmounted."""
        if not stack.pipeline_db.exists():
            return
        try:
            live = sqlite3.connect(stack.pipeline_db)
            kept = sqlite3.connect(self.workdir / "pipeline-final.db")
            live.backup(kept)
            kept.close()
            live.close()
        except sqlite3.Error:
            logger.exception("pipeline database not kept")

    def _drop(self, stack: Stack) -> None:
        """Drop the run's emulator database from the shared PostgreSQL."""
        try:
            with psycopg.connect(
                stack.services.conninfo("postgres"), autocommit=True
            ) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(stack.ibmi_db)
                    )
                )
        except psycopg.Error:
            logger.exception("drop database failed")


def main(plan: Plan, workdir: Path | None) -> int:
    """Run, print the figures, return 0 only when the checker found nothing."""
    where = workdir or Path(tempfile.mkdtemp(prefix="faults-"))
    outcome = Harness(where, plan).run()
    for line in outcome.lines():
        print(line)
    if os.environ.get("APPLIANCE_FAULTS_NOTES"):
        for note in outcome.notes:
            print(f"  {note}")
    return 0 if outcome.ok else 1
