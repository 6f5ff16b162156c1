"""The ``control`` leg: the guardian's store end (docs/guardian.md §5).

It runs three kinds of job, one at a time, each a little per step:

- ``check``: read a whole table (keyset pages of ``read_chunk_rows``),
  cache ``(pk, pk_hash, row_hash)`` in ``guardian_cache``, and once the
  pipeline has passed the read's end hand bucket checksums to the enricher
  (``guardian_outbound``). Scheduled every ``interval_s``, or the ``check``
  command.
- ``load``: read a table and send every row as an ``r`` change; each page is
  its own bracketed read (§1, up to LOAD_PAGES pages per bracket), so its
  rows carry that bracket's ``v_low``.
  A table without ``meta guardian.loaded.<TABLE>`` is loaded once when
  ``initial_load``; the ``load`` command sends it again. Its rows count as
  ``loaded``, never ``repaired`` (:mod:`appliance.guardian.records`).
- ``repair``: the hub's ``repair`` request; each key is read again by its
  primary key and sent as ``r`` (the row, or NULL when it is gone).

Invariants:

- A key changed during a read (``bracket.changed_keys``) is never sent as
  ``r`` and is "changed" (hash NULL) in checksums: the change reaches the hub
  on its own, with a larger version.
- Hub requests arrive in ``guardian_requests`` (written by the shipper); a
  request is marked done (``state = 1``) in the transaction that queues its
  answer, so a restart answers it again at most once more, never never.
- A step does one bounded thing: one page read, one hand-off, one batch of
  requests. A job cut by SIGTERM or a crash is abandoned (its run is marked
  so at the next start) and comes back with the next schedule, the initial
  load or the hub's request.
- Reads are paced to ``max_rows_per_s`` to spare the IBM i.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import deque
from typing import Any

import pyodbc

from appliance import store
from appliance.config import BoxSettings
from appliance.errors import ApplianceError, DecodeError, SourceError
from appliance.guardian import bracket, digest, parts, reader, records
from appliance.guardian.jobs import (
    HOUSEKEEP_EVERY_S,
    LOAD_PAGES,
    LOADED,
    NEXT_CHECK,
    PURGE_ROWS,
    REPAIR_AT_MOST,
    REPAIR_TRIES,
    REQUESTS_PER_STEP,
    RETRY_FIRST_S,
    RETRY_MAX_S,
    RUN_SEQ,
    STAGE,
    Job,
    insert_r,
)
from appliance.guardian.reader import TableReader

logger = logging.getLogger(__name__)


class ControlLeg:
    """The guardian's store end, driven by :func:`appliance.daemon.run`."""

    name = STAGE

    def __init__(self, settings: BoxSettings, conn: sqlite3.Connection) -> None:
        self.settings = settings
        self.section = settings.guardian
        self.ibmi = settings.ibmi
        self.conn = conn
        self.journal_id = f"{self.ibmi.journal_library}/{self.ibmi.journal_name}"
        self.queue: deque[Job] = deque()
        self.job: Job | None = None
        self._source: Any = None
        self._housekeep_at = 0.0
        self._paced_until = 0.0
        self._retry_at = 0.0
        self._taken: set[str] = set()
        self._sql_names: dict[str, str] = {}
        self._finished = 0
        self._purge_queue: set[tuple[str, str]] = set()
        records.ensure_schema(conn)  # columns added since (``loaded``)

    # -- Leg protocol ----------------------------------------------------------

    def setup(self) -> None:
        """Mark runs cut by a stop as abandoned; forget their cache."""
        now = time.time()
        with store.transaction(self.conn):
            cut = self.conn.execute(
                "UPDATE guardian_runs SET state = 'abandoned', finished_at = ?,"
                " error = 'interrupted by a restart' WHERE state = 'reading'"
                " RETURNING run, table_name",
                (now,),
            ).fetchall()
            for run, table in cut:
                self._forget_cache(run, table)
                self._event(run, table, "abandoned", "interrupted by a restart")
        # A restart forgets the purge queue: caches of closed runs are found again.
        for run, table in self.conn.execute(
            "SELECT DISTINCT c.run, c.table_name FROM guardian_cache c"
            " JOIN guardian_runs r ON r.run = c.run AND r.table_name = c.table_name"
            " WHERE r.state NOT IN ('reading', 'sent')"
        ).fetchall():
            self._forget_cache(run, table)
        logger.info(
            "guardian ready stage=%s tables=%s abandoned=%d",
            STAGE,
            ",".join(self.modes()),
            len(cut),
        )

    def step(self) -> bool:
        """One bounded piece of work; False when there was nothing to do."""
        now = time.monotonic()
        worked = False
        if now >= self._housekeep_at:
            self._housekeep_at = now + HOUSEKEEP_EVERY_S
            worked = self._housekeep()
        worked = self._purge() or worked
        if self.job is None:
            self.job = self._next_job(now)
        job = self.job
        if job is None or now < max(self._paced_until, self._retry_at):
            return worked
        try:
            return self._advance(job) or worked
        except (SourceError, DecodeError) as exc:
            self._failed(job, exc)
            return False

    def close(self) -> None:
        self._drop_source()

    def _next_job(self, now: float) -> Job | None:
        for job in list(self.queue):
            if job.not_before <= now:
                self.queue.remove(job)
                return job
        return None

    def status(self) -> str:
        job = self.job
        doing = "idle" if job is None else f"{job.kind}:{job.table}:{job.rows_read}"
        return f"{doing} queued={len(self.queue)} finished={self._finished}"

    def handle_command(self, kind: str, args: dict[str, Any]) -> str:
        """``check`` ({"table"?, "mode"?, "reason"?}) or ``load`` ({"table"})."""
        from appliance.commands import CommandError

        modes = self.modes()
        table = args.get("table")
        if table is not None:
            table = str(table).upper()
            if table not in modes:
                raise CommandError(
                    f"table {table[:40]!r} is not relayed: {sorted(modes)}"
                )
        reason = str(args.get("reason") or "command")[:200]
        if kind == "check":
            mode = args.get("mode")
            if mode not in (None, "repair", "log"):
                raise CommandError(f"mode {str(mode)[:20]!r}: expected repair or log")
            run = self._new_run_id()
            for name in [table] if table else sorted(modes):
                self._enqueue(Job("check", name, run, mode or modes[name], reason))
            return f"check queued run={run}"
        if kind == "load":
            if table is None:
                raise CommandError("load needs a table")
            run = self._new_run_id()
            job = Job("load", table, run, modes[table], reason, send_as="resend")
            self._enqueue(job)
            return f"load queued run={run} table={table}"
        raise CommandError(f"control carries out no {kind!r}")

    # -- configuration -----------------------------------------------------------

    def modes(self) -> dict[str, str]:
        """Table (system name) -> mode, from ``guardian.tables`` or the defaults."""
        if self.section.tables:
            return {t.upper(): m for t, m in self.section.tables.items()}
        return {t.upper(): self.section.default_mode for t in self.ibmi.tables}

    def _system_name(self, sql_name: str) -> str:
        for system, sql in self._sql_names.items():
            if sql == sql_name:
                return system
        return sql_name.upper()

    # -- scheduling ----------------------------------------------------------------

    def _housekeep(self) -> bool:
        """Schedule checks and loads, answer hub requests, prune the cache."""
        self._schedule()
        worked = self._take_requests()
        self._prune()
        return worked

    def _busy_with(self, kind: str, table: str) -> bool:
        jobs = [*self.queue, *([self.job] if self.job else [])]
        return any(j.kind == kind and j.table == table for j in jobs)

    def _enqueue(self, job: Job) -> None:
        self.queue.append(job)
        logger.info(
            "guardian job queued stage=%s kind=%s table=%s run=%s",
            STAGE,
            job.kind,
            job.table,
            job.run,
        )

    def _schedule(self) -> None:
        modes = self.modes()
        if self.section.initial_load:
            for table, mode in modes.items():
                if store.meta_get(
                    self.conn, LOADED + table
                ) is None and not self._busy_with("load", table):
                    job = Job("load", table, self._new_run_id(), mode, "initial load")
                    self._enqueue(job)
        if self.section.interval_s <= 0:
            return
        now = time.time()
        due = store.meta_get(self.conn, NEXT_CHECK)
        if due is not None and float(due) > now:
            return
        if due is not None:
            run = self._new_run_id()
            for table, mode in sorted(modes.items()):
                if not self._busy_with("check", table):
                    self._enqueue(Job("check", table, run, mode, "scheduled"))
        with store.transaction(self.conn):
            store.meta_put(self.conn, NEXT_CHECK, str(now + self.section.interval_s))

    def _new_run_id(self) -> str:
        with store.transaction(self.conn):
            seq = int(store.meta_get(self.conn, RUN_SEQ) or 0) + 1
            store.meta_put(self.conn, RUN_SEQ, str(seq))
            epoch = store.epoch(self.conn)
        return f"{epoch}-{seq}"

    # -- hub requests --------------------------------------------------------------

    def _take_requests(self) -> bool:
        rows = self.conn.execute(
            "SELECT request, run, table_name, body FROM guardian_requests"
            " WHERE state = 0 ORDER BY received_at, request LIMIT ?",
            (REQUESTS_PER_STEP + len(self._taken),),
        ).fetchall()
        handled = 0
        for request, run, table, text in rows:
            if request in self._taken or handled >= REQUESTS_PER_STEP:
                continue
            handled += 1
            try:
                self._request(str(request), str(run), str(table), json.loads(text))
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                self._park_request(str(request), str(run), str(table), text, exc)
        return handled > 0

    def _park_request(
        self, request: str, run: str, table: str, text: str, exc: Exception
    ) -> None:
        """A request this store cannot read: parked with its text, never retried."""
        reason = f"bad guardian request: {type(exc).__name__}: {str(exc)[:200]}"
        with store.transaction(self.conn):
            store.park(
                self.conn,
                stage=STAGE,
                reason=reason,
                table=table,
                position=request,
                data=text.encode()[:4096],
            )
            self._event(run, table, "bad_request", reason)
            self._mark_request(request)
        logger.warning("guardian request parked stage=%s table=%s", STAGE, table)

    def _request(
        self, request: str, run: str, table: str, body: dict[str, Any]
    ) -> None:
        info = parts.run_info(self.conn, run, table)
        repair = [str(pk) for pk in body.get("repair") or []]
        narrow = [[int(b), int(p)] for b, p in body.get("narrow") or []]
        if len(repair) > REPAIR_AT_MOST or len(narrow) > parts.BUCKETS_PER_PART:
            raise ValueError(
                f"{len(repair)} pks and {len(narrow)} buckets: the hub asks at most"
                f" {REPAIR_AT_MOST} and {parts.BUCKETS_PER_PART} per request"
            )
        for bits, prefix in narrow:
            if not (0 < bits <= parts.MAX_BITS and 0 <= prefix < 1 << bits):
                raise ValueError(f"narrow bucket [{bits}, {prefix}] out of range")
        if body.get("done"):
            self._done(request, run, table, body)
            return
        if info is None:
            self._close_request(request, run, table, "unknown run", "cache gone")
            return
        if repair and info.mode != "repair":
            self._event(run, table, "repair_refused", f"mode={info.mode}")
            repair = []
        if repair:
            system = self._system_name(table)
            job = Job("repair", system, run, info.mode, "hub request", "repair")
            job.request, job.keys, job.narrow = request, repair, narrow
            self._taken.add(request)
            self._enqueue(job)
            return
        with store.transaction(self.conn):
            self._answer_narrow(info, request, narrow)
            self._mark_request(request)

    def _answer_narrow(
        self, info: parts.RunInfo, request: str, narrow: list[list[int]]
    ) -> None:
        if not narrow:
            return
        count, size = parts.narrow_parts(
            self.conn,
            info,
            self._last_change_id(),
            request=request,
            narrow=narrow,
            narrow_bits=self.section.narrow_bits,
            keys_at_most=self.section.keys_at_most,
        )
        self.conn.execute(
            "UPDATE guardian_runs SET narrowed = narrowed + ?, parts = parts + ?,"
            " bytes_sent = bytes_sent + ? WHERE run = ? AND table_name = ?",
            (len(narrow), count, size, info.run, info.table),
        )

    def _done(self, request: str, run: str, table: str, body: dict[str, Any]) -> None:
        summary = json.dumps(body.get("summary") or {}, sort_keys=True)[:500]
        with store.transaction(self.conn):
            self._forget_cache(run, table)
            self.conn.execute(
                "UPDATE guardian_runs SET state = 'done', finished_at = ?"
                " WHERE run = ? AND table_name = ? AND state IN ('sent', 'loaded')",
                (time.time(), run, table),
            )
            self._event(run, table, "done", summary)
            self._mark_request(request)
        logger.info("guardian run done stage=%s run=%s table=%s", STAGE, run, table)

    def _close_request(
        self, request: str, run: str, table: str, what: str, detail: str
    ) -> None:
        with store.transaction(self.conn):
            self._event(run, table, what, detail)
            self._mark_request(request)

    def _mark_request(self, request: str) -> None:
        self.conn.execute(
            "UPDATE guardian_requests SET state = 1 WHERE request = ?", (request,)
        )
        self._taken.discard(request)

    # -- jobs ----------------------------------------------------------------------

    def _advance(self, job: Job) -> bool:
        src = self._ensure_source()
        if job.table_reader is None:
            if job.table not in self.modes() and not self._find_table(src, job):
                return True
            layout = reader.load_layout(src, self.ibmi, job.table)
            self._sql_names[job.table] = layout.sql_name
            job.table_reader = TableReader(self.ibmi, layout)
            self._start_run(job)
            return True
        if job.marks is None:
            cached = (job.run, job.table_reader.table)
            if job.kind == "check" and cached in self._purge_queue:
                # A check read again keeps its run: the old attempt's cache
                # goes first, or its batched deletes would take the new rows.
                return self._purge(cached)
            job.marks = bracket.low_marks(self.conn)
            job.start_after = job.after
            job.head_before = reader.read_head(src, self.ibmi)
            job.read_at = time.time()
            return True
        if not job.done_reading:
            self._read(src, job, job.table_reader)
            return True
        if job.head_after is None:
            job.head_after = reader.read_head(src, self.ibmi)
            job.wait_since = time.monotonic()
            return True
        if not bracket.caught_up(self.conn, self.journal_id, job.head_after):
            if time.monotonic() - job.wait_since > self.section.wait_pipeline_s:
                raise SourceError(
                    f"pipeline not past {job.head_after.position()} after"
                    f" {self.section.wait_pipeline_s:.0f}s; read abandoned"
                )
            return False
        self._hand_off(job, job.table_reader)
        return True

    def _find_table(self, src: Any, job: Job) -> bool:
        """Point ``job.table`` (a run's SQL name) at the relayed system name.

        Runs and hub requests name a table by its SQL name, the catalog by
        its system name; after a restart the leg may not have met the table
        yet. A name no relayed table has closes the request (recorded).
        """
        for system in self.modes():
            if system not in self._sql_names:
                layout = reader.load_layout(src, self.ibmi, system)
                self._sql_names[system] = layout.sql_name
        system = self._system_name(job.table)
        if system in self.modes():
            job.table = system
            return True
        self.job = None
        if job.request is not None:
            self._close_request(
                job.request, job.run, job.table, "unknown table", "not relayed"
            )
        return False

    def _read(self, src: Any, job: Job, table: TableReader) -> None:
        chunk = self.section.read_chunk_rows
        if job.kind == "repair":
            todo = [pk for pk in job.keys if pk not in job.found][:chunk]
            for pk in todo:
                try:
                    job.found[pk] = _read_pk(src, table, pk)
                except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
                    self._park_pk(job, table, pk, exc)
            job.done_reading = len(job.found) == len(job.keys)
            self._pace(len(todo))
            return
        rows, last = table.chunk(src, job.after, chunk)
        fetched = len(rows) + table.unkeyed
        if table.unkeyed:
            self._unkeyed(job, table)
        job.rows_read += len(rows)
        job.after = last if last is not None else job.after
        self._pace(fetched)
        if job.kind == "load":
            # Several pages per bracket: each bracket waits for the pipeline.
            job.rows.extend(rows)
            job.more = fetched == chunk
            job.done_reading = not job.more or len(job.rows) >= LOAD_PAGES * chunk
            return
        with store.transaction(self.conn):
            self.conn.executemany(
                "INSERT OR REPLACE INTO guardian_cache (run, table_name, pk, pk_hash,"
                " row_hash) VALUES (?, ?, ?, ?, ?)",
                [
                    _cache_row(job.run, table.table, table.key_of(row), row)
                    for row in rows
                ],
            )
            self.conn.execute(
                "UPDATE guardian_runs SET rows_read = ?"
                " WHERE run = ? AND table_name = ?",
                (job.rows_read, job.run, table.table),
            )
        job.done_reading = fetched < chunk

    def _unkeyed(self, job: Job, table: TableReader) -> None:
        """Rows of the page left out, their key holding U+0000 (reader module doc).

        Neither checked nor loaded: the hub cannot hold them, and the
        transformer parks their changes. One event per page that had some,
        with the first one's key as fetched (escaped), so a person can find it.
        """
        first = ascii(table.unkeyed_first)[:300]
        detail = f"rows={table.unkeyed} key holds U+0000, left out; first key={first}"
        with store.transaction(self.conn):
            self._event(job.run, table.table, "unkeyed", detail)
        logger.warning(
            "rows left out, key holds NUL stage=%s table=%s count=%d",
            STAGE,
            table.table,
            table.unkeyed,
        )

    def _park_pk(self, job: Job, table: TableReader, pk: str, exc: Exception) -> None:
        """A pk not of this table's key: parked, left out of the answer."""
        job.keys.remove(pk)
        reason = f"repair pk unreadable: {type(exc).__name__}: {str(exc)[:200]}"
        with store.transaction(self.conn):
            store.park(
                self.conn,
                stage=STAGE,
                reason=reason,
                table=table.table,
                position=job.request or job.run,
                data=pk.encode()[:4096],
                expected=f"a JSON object of {', '.join(c.name for c in table.keys)}",
            )
        logger.warning("repair pk parked stage=%s table=%s", STAGE, table.table)

    def _pace(self, rows: int) -> None:
        self._paced_until = time.monotonic() + rows / self.section.max_rows_per_s

    def _hand_off(self, job: Job, table: TableReader) -> None:
        assert job.marks is not None
        # The bucket sums of a whole table are a long read: made before the
        # write lock (the cache is this leg's alone), then corrected inside it
        # for the keys found changed, so other legs never wait on them.
        sums = None
        if job.kind == "check":
            bits = parts.bits_for(job.rows_read)
            sums = parts.bucket_sums(self.conn, job.run, table.table, bits)
        with store.transaction(self.conn):
            if bracket.cleared_since(self.conn, table.table, job.marks.c_low):
                raise SourceError(f"table {table.table} cleared during the read")
            changed = bracket.changed_keys(self.conn, table.table, job.marks.c_low)
            for cycles in (bracket.rolled_back_keys, bracket.netted_keys):
                changed |= cycles(
                    self.conn, job.marks.r_low, table.object_name, table.image_key
                )
            if sums is not None:
                self._hand_off_check(job, table, changed, sums)
            elif job.kind == "load":
                self._hand_off_load(job, table, changed)
            else:
                self._hand_off_repair(job, table, changed)
        if job.kind == "load" and job.more:
            job.restart()
            return
        self.job = None
        self._finished += 1
        logger.info(
            "guardian job handed over stage=%s kind=%s table=%s run=%s count=%d",
            STAGE,
            job.kind,
            table.table,
            job.run,
            job.rows_read if job.kind != "repair" else len(job.keys),
        )

    def _hand_off_check(
        self, job: Job, table: TableReader, changed: set[str], sums: list[list[Any]]
    ) -> None:
        assert job.marks is not None
        bits = parts.bits_for(job.rows_read)
        sums = parts.without_keys(
            self.conn, job.run, table.table, sums, bits=bits, pks=sorted(changed)
        )
        self.conn.executemany(
            "UPDATE guardian_cache SET row_hash = NULL"
            " WHERE run = ? AND table_name = ? AND pk = ?",
            [(job.run, table.table, pk) for pk in changed],
        )
        marked = self.conn.execute(
            "SELECT count(*) FROM guardian_cache WHERE run = ? AND table_name = ?"
            " AND row_hash IS NULL",
            (job.run, table.table),
        ).fetchone()[0]
        info = parts.RunInfo(
            job.run, table.table, job.mode, job.marks.v_low, job.rows_read, int(marked)
        )
        count, size = parts.checksum_parts(
            self.conn, info, self._last_change_id(), sums
        )
        self.conn.execute(
            "UPDATE guardian_runs SET state = 'sent', v_low = ?, rows_read = ?,"
            " changed = ?, parts = ?, bytes_sent = ? WHERE run = ? AND table_name = ?",
            (info.v_low, job.rows_read, marked, count, size, job.run, table.table),
        )

    def _hand_off_load(self, job: Job, table: TableReader, changed: set[str]) -> None:
        """Send the page; keys changed during its read are read again later.

        A key whose change was rolled back or netted away leaves no change
        for the hub: dropping it would leave the row out of the hub for good
        (seen under load: rows seeded before the relay started, touched by a
        rolled-back cycle during the initial load). So, as a repair does,
        such keys are read again in a bracket of their own; the run is
        ``loaded`` once the last of those reads is handed over.
        """
        rows: list[tuple[str, dict[str, Any] | None]] = []
        again: list[tuple[str, dict[str, Any] | None]] = []
        for row in job.rows:
            pk = digest.canonical_pk(table.key_of(row))
            (again if pk in changed else rows).append((pk, row))
        insert_r(self.conn, job, table, rows)
        # Loaded, not repaired: no check found these rows different (records).
        self.conn.execute(
            "UPDATE guardian_runs SET rows_read = ?, loaded = loaded + ?"
            " WHERE run = ? AND table_name = ?",
            (job.rows_read, len(rows), job.run, table.table),
        )
        if again:
            follow = Job("repair", job.table, job.run, job.mode, job.reason, "load")
            follow.keys, follow.tries = sorted(pk for pk, _ in again), 1
            follow.not_before = time.monotonic() + RETRY_FIRST_S
            self.queue.append(follow)
        if not job.more:
            self._loaded(job.run, table.table)

    def _loaded(self, run: str, table: str) -> None:
        """The load's end, once no read of its changed keys is still queued."""
        if any(
            j.run == run and j.table == table and j.send_as == "load"
            for j in self.queue
        ):
            return
        self.conn.execute(
            "UPDATE guardian_runs SET state = 'loaded', finished_at = ?"
            " WHERE run = ? AND table_name = ?",
            (time.time(), run, table),
        )
        store.meta_put(self.conn, LOADED + table, str(time.time()))
        read = self.conn.execute(
            "SELECT rows_read FROM guardian_runs WHERE run = ? AND table_name = ?",
            (run, table),
        ).fetchone()
        self._event(run, table, "loaded", f"rows={read[0] if read else 0}")

    def _hand_off_repair(self, job: Job, table: TableReader, changed: set[str]) -> None:
        """Send what did not change; read the keys that did again, a little later.

        The hub waits for an ``r`` of every pk it asked, so a key changed
        during the read is not given up: it is read again in a new bracket
        (its own change reaches the hub meanwhile), up to REPAIR_TRIES times.
        """
        rows = [(pk, row) for pk, row in job.found.items() if pk not in changed]
        again = sorted(pk for pk in job.found if pk in changed)
        if job.send_as == "load":
            # A load sends what exists; a key now absent (an insert rolled
            # back) has nothing to load, and deletions are the journal's.
            rows = [(pk, row) for pk, row in rows if row is not None]
        deleted = sum(1 for _, row in rows if row is None)
        insert_r(self.conn, job, table, rows)
        info = parts.run_info(self.conn, job.run, table.table)
        if info is not None and job.request is not None:
            self._answer_narrow(info, job.request, job.narrow)
        # A load's keys read again count as loaded (absent now: deleted).
        sent = "loaded" if job.send_as == "load" else "repaired"
        self.conn.execute(
            f"UPDATE guardian_runs SET {sent} = {sent} + ?, deleted = deleted + ?,"
            " dropped = dropped + ? WHERE run = ? AND table_name = ?",
            (len(rows) - deleted, deleted, len(again), job.run, table.table),
        )
        if again and job.tries + 1 < REPAIR_TRIES:
            follow = Job(
                "repair", job.table, job.run, job.mode, job.reason, job.send_as
            )
            follow.request, follow.keys, follow.tries = (
                job.request,
                again,
                job.tries + 1,
            )
            follow.not_before = time.monotonic() + RETRY_FIRST_S * follow.tries
            self.queue.append(follow)
            return
        if again:
            detail = f"request={job.request} count={len(again)}"
            self._event(job.run, table.table, "repair_gave_up", detail)
        if job.request is not None:
            self._mark_request(job.request)
        if job.send_as == "load":
            self._loaded(job.run, table.table)

    # -- runs and failures -----------------------------------------------------------

    def _start_run(self, job: Job) -> None:
        if job.kind == "repair":
            return
        assert job.table_reader is not None
        table = job.table_reader.table
        with store.transaction(self.conn):
            self.conn.execute(
                "INSERT OR IGNORE INTO guardian_runs (run, table_name, kind, mode,"
                " reason, started_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job.run, table, job.kind, job.mode, job.reason, time.time()),
            )

    def _failed(self, job: Job, exc: ApplianceError) -> None:
        """A failed read is done again from its start, after a growing pause."""
        self._drop_source()
        job.attempt += 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (job.attempt - 1))
        self._retry_at = time.monotonic() + delay
        table = self._sql_names.get(job.table, job.table)
        with store.transaction(self.conn):
            if job.kind == "check":
                self._forget_cache(job.run, table)
            self._event(job.run, table, "retry", f"attempt={job.attempt}: {exc}"[:500])
            self.conn.execute(
                "UPDATE guardian_runs SET error = ? WHERE run = ? AND table_name = ?",
                (str(exc)[:500], job.run, table),
            )
            store.bump(self.conn, "control.read_failures")
        if job.kind == "load":
            job.after = job.start_after  # the bracket's rows were not sent
        job.restart()
        job.table_reader = None
        logger.warning(
            "guardian read failed, retrying stage=%s table=%s run=%s attempt=%d"
            " error=%s",
            STAGE,
            table,
            job.run,
            job.attempt,
            exc,
        )

    def _prune(self) -> None:
        """Drop the cache of runs the hub never closed, after ``cache_keep_h``."""
        limit = time.time() - self.section.cache_keep_h * 3600
        stale = self.conn.execute(
            "SELECT run, table_name FROM guardian_runs WHERE state = 'sent'"
            " AND started_at < ?",
            (limit,),
        ).fetchall()
        if not stale:
            return
        with store.transaction(self.conn):
            for run, table in stale:
                self._forget_cache(run, table)
                self.conn.execute(
                    "UPDATE guardian_runs SET state = 'expired', finished_at = ?"
                    " WHERE run = ? AND table_name = ?",
                    (time.time(), run, table),
                )
                self._event(run, table, "expired", "no done from the hub")

    def _forget_cache(self, run: str, table: str) -> None:
        """Let the cache of a run go; :meth:`_purge` deletes it in small batches.

        A million-row cache deleted in one transaction held the write lock
        long enough for the other legs' ``BEGIN IMMEDIATE`` to time out.
        """
        self._purge_queue.add((run, table))

    def _purge(self, which: tuple[str, str] | None = None) -> bool:
        """Delete at most ``PURGE_ROWS`` forgotten cache rows (own transaction)."""
        if not self._purge_queue:
            return False
        run, table = which or next(iter(self._purge_queue))
        with store.transaction(self.conn):
            cur = self.conn.execute(
                "DELETE FROM guardian_cache WHERE rowid IN (SELECT rowid FROM"
                " guardian_cache WHERE run = ? AND table_name = ? LIMIT ?)",
                (run, table, PURGE_ROWS),
            )
        if cur.rowcount < PURGE_ROWS:
            self._purge_queue.discard((run, table))
        return cur.rowcount > 0

    def _event(self, run: str, table: str, what: str, detail: str = "") -> None:
        self.conn.execute(
            "INSERT INTO guardian_events (at, run, table_name, what, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            (time.time(), run, table, what, detail),
        )

    def _last_change_id(self) -> int:
        return int(
            self.conn.execute("SELECT coalesce(max(id), 0) FROM changes").fetchone()[0]
        )

    # -- ODBC ------------------------------------------------------------------------

    def _ensure_source(self) -> Any:
        if self._source is None:
            self._source = reader.connect(self.ibmi)
        return self._source

    def _drop_source(self) -> None:
        conn, self._source = self._source, None
        if conn is not None:
            try:
                conn.close()
            except pyodbc.Error:
                logger.debug("closing the source connection failed")


def _read_pk(src: Any, table: TableReader, pk: str) -> dict[str, Any] | None:
    """The source row of ``pk`` (a canonical pk), or None when it has none.

    The point read compares as the database does (CHAR blank-padded, numbers
    by value), so it may find a row whose own pk is another text: that row
    is not this pk's, which the source therefore lacks.
    """
    key = json.loads(pk)
    names = {c.name for c in table.keys}
    if not isinstance(key, dict) or set(key) != names:
        raise ValueError(f"expected exactly the key columns {sorted(names)}")
    row = table.by_key(src, key)
    if row is None or digest.canonical_pk(table.key_of(row)) != pk:
        return None
    return row


def _cache_row(
    run: str, table: str, key: dict[str, Any], row: dict[str, Any]
) -> tuple[Any, ...]:
    pk = digest.canonical_pk(key)
    return (run, table, pk, digest.pk_hash(pk), digest.row_hash(pk, row))


def build(settings: BoxSettings) -> ControlLeg:
    """The control leg on the configured pipeline database and source."""
    return ControlLeg(settings, store.connect(settings.pipeline.db_path))
