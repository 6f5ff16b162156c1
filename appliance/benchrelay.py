"""``appliance bench`` (scenario ``relay``): issue 9's figures in one table.

Not a timed test: it prints figures (docs/benchmarks.md). Each scenario's
figure is printed beside its target and the raw limit of the same machine
measured in the same run, as ratios:

1. catch-up: a backlog of ``changes`` written with the legs stopped
   (:mod:`appliance.emulator.backlog`), then every leg started; changes/s
   from the start (start-up included) and from the first to the last
   confirmation; ODH is then compared with the source, value for value;
2. sustained: ``writers`` store writer processes
   (:mod:`appliance.faults.writer`) write as fast as they can for
   ``sustained_s``; the relay's confirmed rate beside the writers' rate;
   then the same with the fast backlog writer as the source (the relay's
   own sustained rate: the workload's writers stay under 1,000/s);
3. latency, polling read: ``paced_rate`` changes/s for ``paced_seconds``
   (the backlog writer paced: a batch every 20 ms, transactions of 1-5
   changes); hub commit time minus journal entry time, p50/p99/max;
4. latency, waiting read: the same with ``[ibmi] wait_s = 1`` (only when
   the settings know ``ibmi.wait_s``; else the row says "not available");
5. memory: the peak sum of VmRSS of every leg process (the enricher's JVM
   lives in its process) sampled every 0.2 s during the catch-up; outbox
   bytes on disk per pending message, shipper stopped, on a stack of its own;
6. cost on the IBM i: the miner alone on a journal of ``miner_entries``
   entries with 50 ms per call, on a stack of its own;
7. raw limits: SQLite, Kafka produce and consume, PostgreSQL
   (:func:`appliance.bench.raw_limits`, on a sample of the outbox stack's own
   messages), the decoder on the bench's own images, and the same journal
   windows read through ODBC without a miner; each with the CPU it spent per
   row, summed per change into the chain's limit
   (:func:`appliance.benchtable.chain_limit`).

Invariants: each stack has its own databases and topics (``name``,
``name_ob``, ``name_ibmi``) and is closed, legs stopped, before the next one
starts; the pipeline database is only read (read-only, retried), so the
bench is never one more writer; every raw limit is measured with every leg
stopped.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from appliance import bench, payloads
from appliance.benchprocs import CpuSampler, RssSampler
from appliance.benchtable import table
from appliance.devstack import Services, Stack

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

SEED_ARTICLES = 500
OUTBOX_CHANGES_MAX = 100_000
PAYLOAD_SAMPLE = 1000
IBMI_LATENCY_MS = 50


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does (the CLI's flags)."""

    changes: int = 100_000
    sustained_s: float = 30.0
    paced_rate: float = 1000.0
    paced_seconds: float = 30.0
    writers: int = 2
    miner_entries: int = 50_000
    raw_rows: int = bench.RAW_ROWS


def run(
    services: Services, workdir: Path, sizes: Sizes, *, name: str = "benchrelay"
) -> dict[str, Any]:
    """Every scenario, then the raw limits; the figures and the table rows."""
    load_start = os.getloadavg()
    found: dict[str, Any] = {"sizes": asdict(sizes)}
    stack = Stack(services, workdir / "relay", name=name, store_id="RE01")
    try:
        stack.prepare()
        _seed(stack)
        _step(found, "backlog", _backlog, stack, changes=sizes.changes)
        _step(found, "catch_up", _catch_up, stack)
        _step(found, "sustained", _sustained, stack, sizes)
        _step(found, "sustained_fast", _sustained_fast, stack, sizes)
        _step(found, "polling", _paced, stack, sizes)
        _step(found, "waiting", _waiting, stack, sizes)
        stack.stop_legs()
        _step(found, "decode", bench.raw_decode, stack.pipeline_db)
    finally:
        stack.close()
    sample: list[bytes] = []
    _step(found, "outbox", _outbox, services, workdir, sizes, name, sample)
    _step(found, "ibmi", _ibmi, services, workdir, sizes, name)
    _step(
        found,
        "raw",
        bench.raw_limits,
        services,
        workdir,
        stack.odh_db,
        rows=sizes.raw_rows,
        chain=bench.CHAIN_MESSAGES,
        payloads=sample or [bench.PAYLOAD.encode()],
    )
    found["load"] = {"start": load_start, "end": os.getloadavg()}
    found["rows"] = table(found)
    return found


def _step(found: dict[str, Any], key: str, fn: Any, *args: Any, **kw: Any) -> None:
    """Run one scenario into ``found[key]``; its figures go to stderr too.

    A long run (a million changes) shows each scenario as it ends.
    """
    started = time.monotonic()
    found[key] = fn(*args, **kw)
    took = time.monotonic() - started
    print(
        f"{key} ({took:.1f} s): {json.dumps(found[key])}", file=sys.stderr, flush=True
    )


# -- the stack's store ------------------------------------------------------


def _seed(stack: Stack) -> None:
    from appliance.emulator import workload

    workload.seed_store(stack.emulator(), articles=SEED_ARTICLES, seed=21)


def _backlog(
    stack: Stack, *, changes: int | None = None, entries: int | None = None
) -> dict[str, float]:
    from appliance.emulator import backlog

    return backlog.write(stack.emulator(), changes=changes, entries=entries, seed=22)


def _read(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """A read-only query of a pipeline database, retried past long writers."""
    return _reading(db, lambda conn: conn.execute(query, params).fetchall())


def _reading(db: Path, read: Callable[[sqlite3.Connection], _T]) -> _T:
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                return read(conn)
            finally:
                conn.close()
        except sqlite3.OperationalError:  # locked, or not created yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _one(db: Path, query: str, params: tuple[Any, ...] = ()) -> Any:
    return _read(db, query, params)[0][0]


def _messages(
    db: Path, where: str, params: tuple[Any, ...] = (), order: str = "id"
) -> list[tuple[int, bytes]]:
    """(id, JSON) of the outbox rows ``where`` selects (stored compressed)."""
    return _reading(db, lambda conn: payloads.messages(conn, where, params, order))


# -- 1. catch-up and 5. memory (RSS) ------------------------------------------


def _catch_up(stack: Stack) -> dict[str, Any]:
    started = time.monotonic()
    wall = time.time()
    stack.start_legs()
    pids = {leg.name: leg.process.pid for leg in stack.legs}
    with RssSampler(pids) as rss, CpuSampler(pids) as cpu:
        _wait_relayed(stack)
    seconds = time.monotonic() - started
    counts = stack.counts()
    first, last, confirmed = _read(
        stack.pipeline_db,
        "SELECT min(confirmed_at), max(confirmed_at), count(*) FROM outbox"
        " WHERE state = 'confirmed'",
    )[0]
    report = stack.compare()
    changes = counts["transformer.changes"]
    span = (last - first) if confirmed > 1 else 0.0
    return {
        "changes": changes,
        "journal_entries": counts["miner.entries"],
        "messages": counts["hub.applied"],
        "applied_distinct": counts["hub.applied_distinct"],
        "seconds": round(seconds, 1),
        "changes_per_s": round(changes / seconds, 1),
        "start_to_first_confirmation_s": round(first - wall, 1) if confirmed else 0,
        "first_to_last_s": round(span, 1),
        "confirmed_per_s": round((confirmed - 1) / span, 1) if span else 0.0,
        "rss_peak_mb": round(rss.peak_kb / 1024, 1),
        "pss_peak_mb": round(rss.peak_pss_kb / 1024, 1),
        "rss_peak_by_leg_mb": {
            k: round(v / 1024, 1) for k, v in rss.peak_by_leg.items()
        },
        "rss_samples": rss.samples,
        "cpu": cpu.report(changes),
        "odh_equals_source": all(t["equal"] for t in report.values()),
        "compare": {
            k: {"source": v["source"], "odh": v["odh"]} for k, v in report.items()
        },
    }


# -- 2. sustained, 3./4. latency ----------------------------------------------


def _writers(
    stack: Stack, *, rate: float, seconds: float, count: int, seed: int
) -> dict[str, float]:
    """``count`` writer processes, ``rate`` changes/s in all (0: flat out)."""
    stop_file = stack.workdir / "writers.stop"
    stop_file.touch()
    orders = {
        "conninfo": stack.services.conninfo(stack.ibmi_db),
        "rate": rate / count if rate > 0 else 0,
        "seconds": seconds,
        "changes": 0,
        "max_s": seconds + 30,
        "stop_file": str(stop_file),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        return _collect(stack, orders, procs, count=count, seed=seed, seconds=seconds)
    finally:
        for proc in procs:  # only after a failure: stop the others too
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)


def _collect(
    stack: Stack,
    orders: dict[str, Any],
    procs: list[subprocess.Popen[bytes]],
    *,
    count: int,
    seed: int,
    seconds: float,
) -> dict[str, float]:
    for k in range(count):
        log = (stack.workdir / "logs" / f"writer-{seed}-{k}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.faults.writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()
        assert proc.stdin is not None
        order = {**orders, "seed": seed + k, "shard": [k, count]}
        proc.stdin.write(json.dumps(order).encode())
        proc.stdin.close()  # the password went through the pipe, not argv
        procs.append(proc)
    changes = rolled_back = 0
    elapsed = 0.0
    for proc in procs:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        if proc.wait(timeout=seconds + 120) != 0:
            raise RuntimeError(f"store writer failed, see {stack.workdir / 'logs'}")
        counts = json.loads(out)
        changes += int(counts.get("changes", 0))
        rolled_back += int(counts.get("rolled_back", 0))
        elapsed = max(elapsed, float(counts.get("elapsed_s", 0)))
    return {
        "writers": count,
        "changes": changes,
        "committed": changes - rolled_back,
        "seconds": elapsed,
        "rate": round(changes / elapsed, 1) if elapsed else 0.0,
    }


def _sustained(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    db = stack.pipeline_db
    first = _one(db, "SELECT coalesce(max(id), 0) FROM outbox")
    started = time.time()
    writers = _writers(
        stack, rate=0, seconds=sizes.sustained_s, count=sizes.writers, seed=31
    )
    ended = time.time()
    left = stack.backlog()
    mark = _read(db, "SELECT sequence FROM bookmark")
    head = stack.emulator().head().sequence or 0
    left["journal_unread"] = head - (int(mark[0][0]) if mark else 0)
    _wait_relayed(stack)
    drained = time.time()
    # From the first journal entry the writers made (process start-up left
    # out) to the last confirmation.
    messages, started = _since(db, first, started)
    during = _one(
        db,
        "SELECT count(*) FROM outbox WHERE id > ? AND confirmed_at <= ?",
        (first, ended),
    )
    relay_rate = messages / (drained - started)
    behind = sum(max(0, v) for v in left.values())
    # The relay kept up when what was left at the writers' end is under
    # one second of their rate.
    limited = "source (writers)" if behind <= writers["rate"] else "relay"
    return {
        "writers": writers,
        "messages": messages,
        "relay_per_s": round(relay_rate, 1),
        "confirmed_during_writes": during,
        "confirmed_during_writes_per_s": round(during / (ended - started), 1),
        "left_at_writers_end": left,
        "drain_after_writers_s": round(drained - ended, 1),
        "limited_by": limited,
    }


def _since(db: Path, first: int, started: float) -> tuple[int, float]:
    """Messages after outbox id ``first``; the window's start: its first
    journal entry's time, or ``started`` when that is later."""
    stamps = [json.loads(m)["ts_ms"] for _, m in _messages(db, "id > ?", (first,))]
    first_ms = min(stamps, default=0)
    return len(stamps), max(started, float(first_ms) / 1000)


def _sustained_fast(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    """The relay's own sustained rate: a source faster than the workload's.

    The workload's writer processes make one change per transaction and
    stay under 1,000 changes/s here, so they, not the relay, bound the
    sustained row. Here the fast backlog writer (batches of 1,000, in
    transactions of 1-5 changes) writes flat out for ``sustained_s`` while
    the legs run; the relay's confirmed rate is read from the first journal
    entry of the window to the last confirmation.
    """
    from appliance.emulator import backlog

    db = stack.pipeline_db
    first = _one(db, "SELECT coalesce(max(id), 0) FROM outbox")
    started = time.time()
    wrote = backlog.write(
        stack.emulator(), changes=10**9, seed=33, max_s=sizes.sustained_s
    )
    ended = time.time()
    left = stack.backlog()
    _wait_relayed(stack)
    drained = time.time()
    messages, started = _since(db, first, started)
    return {
        "source_rate": wrote["rate"],
        "source_changes": int(wrote["changes"]),
        "source_seconds": wrote["elapsed_s"],
        "messages": messages,
        "relay_per_s": round(messages / (drained - started), 1),
        "left_at_source_end": left,
        "drain_after_source_s": round(drained - ended, 1),
    }


def _wait_relayed(stack: Stack, timeout_s: float = 7200) -> None:
    """Until the miner has read the emulator's head and every leg is idle.

    ``Stack.wait_drained`` alone compares with the head the miner last
    saw, which lags while the miner is starting or waiting in a call.
    """
    head = stack.emulator().head()
    deadline = time.monotonic() + timeout_s
    while True:
        stack.check_legs_alive()
        mark = _read(stack.pipeline_db, "SELECT receiver_name, sequence FROM bookmark")
        if mark and (mark[0][0], int(mark[0][1])) >= (
            head.receiver_name,
            head.sequence or 0,
        ):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"journal not read in {timeout_s} s: {mark}")
        time.sleep(0.1)
    stack.wait_drained(timeout_s=timeout_s, settle_s=0.25)


def _paced(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    # Warm-up: committed changes through every leg, start-up left out.
    _backlog(stack, changes=5)
    _wait_relayed(stack, 600)
    first = _one(stack.pipeline_db, "SELECT coalesce(max(id), 0) FROM outbox")
    # The paced backlog writer, not the workload's writer processes: those
    # make one change per transaction and reach ~400-700 changes/s here, not
    # the 1,000/s asked. Paced, it writes the changes each 20 ms tick is owed
    # in transactions of 1-5 changes.
    from appliance.emulator import backlog

    wrote = backlog.write(
        stack.emulator(),
        changes=max(1, round(sizes.paced_rate * sizes.paced_seconds)),
        seed=41,
        rate_per_s=sizes.paced_rate,
    )
    writers = {
        "writers": 1,
        "changes": int(wrote["changes"]),
        "seconds": wrote["elapsed_s"],
        "rate": wrote["rate"],
        "tick_s": backlog.PACE_TICK_S,
    }
    _wait_relayed(stack, 1800)
    entry_ms = {
        oid: json.loads(message)["ts_ms"]
        for oid, message in _messages(stack.pipeline_db, "id > ?", (first,))
    }
    with psycopg.connect(stack.hub.conninfo(stack.odh_db)) as pg:
        applied = pg.execute(
            "SELECT outbox_id, extract(epoch FROM applied_at) * 1000"
            " FROM odh.applied WHERE outbox_id > %s",
            (first,),
        ).fetchall()
    lat = sorted(float(at) - entry_ms[oid] for oid, at in applied if oid in entry_ms)
    result: dict[str, Any] = {"asked_rate": sizes.paced_rate, "writers": writers}
    if lat:
        result |= {
            "messages": len(lat),
            "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
            "max_ms": round(lat[-1], 1),
        }
    return result


def waiting_read_available() -> bool:
    """Whether the settings know ``ibmi.wait_s`` (the waiting read)."""
    from appliance.config import IbmiSection

    return "wait_s" in IbmiSection.model_fields


def _waiting(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    if not waiting_read_available():
        return {"available": False, "why": "ibmi.wait_s is not in the settings"}
    stack.stop_legs()
    text = stack.box_config.read_text()
    stack.box_config.write_text(text.replace("[ibmi]\n", "[ibmi]\nwait_s = 1\n", 1))
    stack.start_legs()
    return {"available": True, **_paced(stack, sizes)}


# -- 5. outbox bytes per pending message ------------------------------------


def _outbox(
    services: Services, workdir: Path, sizes: Sizes, name: str, sample: list[bytes]
) -> dict[str, Any]:
    """A backlog enriched into the outbox, shipper stopped: bytes per message.

    ``sample`` receives up to :data:`PAYLOAD_SAMPLE` of the pending messages,
    evenly spaced: the raw limits' payloads.
    """
    stack = Stack(services, workdir / "outbox", name=f"{name}_ob", store_id="RE01")
    try:
        stack.prepare()
        _seed(stack)
        _backlog(stack, changes=min(sizes.changes, OUTBOX_CHANGES_MAX))
        for leg in ("miner", "transformer", "enricher"):
            stack.legs.append(stack.spawn_leg(leg))
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            stack.check_legs_alive()
            left = stack.backlog()
            if left["journal_unread"] == left["raw_new"] == left["changes_new"] == 0:
                break
            time.sleep(0.5)
        db = stack.pipeline_db
        page = _read(db, "PRAGMA page_size")[0][0]
        used = _one(db, "PRAGMA page_count") - _one(db, "PRAGMA freelist_count")
        wal = db.with_name(db.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        # The payload figures are of the JSON messages (what Kafka carries),
        # whatever the outbox stores: the bare table gets the same JSON, so
        # the ratio of the two shows what the outbox's storage gains.
        # In (lane, lane_seq) order, as the bare table was always filled: the
        # order of the sizes changes how rows pack into pages (959 B by id,
        # 980 B by lane on the 100,000-change backlog).
        pending_rows = _messages(db, "state = 'pending'", order="lane, lane_seq")
        messages = [m for _, m in pending_rows]
        pending = len(messages)
        payload = sum(map(len, messages)) / pending if pending else 0.0
        sample += messages[:: max(1, pending // PAYLOAD_SAMPLE)][:PAYLOAD_SAMPLE]
        outbox_only = _outbox_pages(db) * page
        stack.stop_legs()
        bare = _bare_bytes(messages, workdir / "bare.db")
    finally:
        stack.close()
    bytes_db = used * page
    return {
        "pending": pending,
        "avg_payload_bytes": round(payload, 1),
        "db_bytes": bytes_db,
        "wal_bytes": wal_bytes,
        "bytes_per_pending": round((bytes_db + wal_bytes) / pending, 1)
        if pending
        else 0,
        "outbox_table_bytes_per_pending": (
            round(outbox_only / pending, 1) if pending and outbox_only else None
        ),
        "bare_bytes_per_row": bare,
    }


def _outbox_pages(db: Path) -> int:
    """Pages of the outbox, its indexes and its payload dictionaries (0 without
    dbstat)."""
    try:
        return int(
            _one(
                db,
                "SELECT count(*) FROM dbstat WHERE name IN"
                " (SELECT name FROM sqlite_master"
                " WHERE tbl_name IN ('outbox', 'outbox_dicts'))",
            )
        )
    except sqlite3.OperationalError:
        return 0


def _bare_bytes(messages: list[bytes], bare: Path) -> float:
    """The same JSON messages in a bare (id, payload TEXT) table: bytes per row."""
    if not messages:
        return 0.0
    conn = sqlite3.connect(bare, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO t (payload) VALUES (?)", [(m.decode(),) for m in messages]
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    return round(float(pages) * size / len(messages), 1)


# -- 6. cost on the IBM i ---------------------------------------------------


def _ibmi(services: Services, workdir: Path, sizes: Sizes, name: str) -> dict[str, Any]:
    """The miner alone on a written journal, 50 ms per DISPLAY_JOURNAL call."""
    stack = Stack(services, workdir / "ibmi", name=f"{name}_ibmi", store_id="RE01")
    try:
        stack.prepare()
        _seed(stack)
        emu = stack.emulator()
        head = emu.head().sequence or 0
        _backlog(stack, entries=max(1, sizes.miner_entries - head))
        emu.set_latency(IBMI_LATENCY_MS)
        # The miner pauses 50 windows ahead of the transformer: past that
        # the transformer runs too, else the miner would wait for it.
        legs = ["miner"] + (["transformer"] if sizes.miner_entries > 50_000 else [])
        for leg in legs:
            stack.legs.append(stack.spawn_leg(leg))
        deadline = time.monotonic() + 1800
        while stack.backlog()["journal_unread"] != 0:
            stack.check_legs_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("miner did not read the journal in 1800 s")
            time.sleep(0.1)
        stack.stop_legs()
        found = _miner_figures(stack.pipeline_db)
        found["legs"] = legs
        found["journal_sequences"] = emu.head().sequence
        found["raw"] = bench.raw_odbc(stack.box_config, emu.head())
    finally:
        stack.close()
    return found


def _miner_figures(db: Path) -> dict[str, Any]:
    """Rates from the first stored window to the last: start-up excluded.

    Round trips are ``miner.calls`` (every ODBC call: journal windows and
    receiver lists) and rows ``miner.rows`` (as fetched, before filtering)
    when the miner counts them; else its windows and stored entries.
    """
    counters = dict(_read(db, "SELECT name, value FROM counters"))
    first, last = _read(db, "SELECT min(mined_at), max(mined_at) FROM raw_entries")[0]
    at_first = _one(db, "SELECT count(*) FROM raw_entries WHERE mined_at = ?", (first,))
    entries = int(counters.get("miner.entries", 0))
    windows = int(counters.get("miner.windows", 0))
    calls = int(counters.get("miner.calls", windows))
    fetched = int(counters.get("miner.rows", entries))
    span = (last - first) if entries else 0.0
    return {
        "latency_ms": IBMI_LATENCY_MS,
        "entries": entries,
        "windows": windows,
        "round_trips": calls,
        "rows_fetched": fetched,
        "seconds": round(span, 2),
        "entries_per_s": round((entries - at_first) / span, 1) if span else 0.0,
        "round_trips_per_s": round(calls / span, 2) if span else 0.0,
        "rows_per_round_trip": round(fetched / calls, 1) if calls else 0.0,
        "rows_per_window": round(fetched / windows, 1) if windows else 0.0,
    }
