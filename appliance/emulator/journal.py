"""The IBM i emulator's writer side: journal, receivers, tables, jobs.

:class:`Emulator` is the "store application" and the "system operator" of
an emulated IBM i living in a PostgreSQL database: it installs the SQL
surface (``schema.sql``, ``display_journal.sql``), defines tables, runs jobs
that change rows (:mod:`appliance.emulator.job`) and performs CHGJRN, IPL
and DLTJRNRCV. Readers never use this class: they go through ODBC.

Invariants:

- every row change and its journal entries commit in ONE PostgreSQL
  transaction; the journal row is locked until that commit, so entries
  become visible in sequence order even with several writers;
- entry timestamps are naive local times of the journal's time zone;
- a SEQOPT(*RESET) (``change_receiver(reset=True)``, ``ipl()``) is refused
  with CPF7018 while any commit cycle of the journal is open;
- secrets (the reader's password) never reach a log line or an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from appliance.emulator import grants, operations, receivers, store_tables
from appliance.emulator.encoder import DEFAULTS
from appliance.emulator.job import Entry, Job, split_job
from appliance.emulator.layout import Column, check_name
from appliance.emulator.table import TableDef, define, load_tables, write_catalog
from appliance.errors import SourceError

logger = logging.getLogger(__name__)

CPF = re.compile(r"\bCP[FDI][0-9A-F]{4}\b")
SCRIPTS = ("schema.sql", "display_journal.sql", "behaviours.sql")
INSTALL_LOCK = 0x1B3A_0001
SYSTEM_JOB = "000000/QSYS/SCPF"
OPERATOR_JOB = "000001/QSECOFR/QPADEV0001"


@dataclass(frozen=True)
class Head:
    """The highest journal position: attached receiver and its last sequence."""

    receiver_library: str
    receiver_name: str
    sequence: int | None


class Emulator:
    """An emulated IBM i journal MAG/QSQJRN in PostgreSQL database ``conninfo``.

    ``gap_rate`` is the chance that an entry is preceded by 1-3 hidden
    sequence numbers; ``seed`` makes those gaps repeatable; ``clock`` (naive
    local time) replaces the wall clock, e.g. to replay a DST fall-back.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        timezone: str = "America/Martinique",
        library: str = "MAG",
        journal: str = "QSQJRN",
        gap_rate: float = 0.02,
        seed: int = 0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.zone = ZoneInfo(timezone)
        self.library = check_name(library, "library")
        self.journal = check_name(journal, "journal")
        self.gap_rate = gap_rate
        self.clock = clock
        self.locks: dict[tuple[str, int], Job] = {}
        self._rng = random.Random(seed)  # noqa: S311  (gaps, not secrets)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._journal_id: int | None = None
        self._tables: dict[str, TableDef] = {}
        self.unjournaled: set[str] = set()  # OBJECTs after ENDJRNPF
        self.minimized = False  # MINENTDTA(*FLDBDY): updates log changed fields

    # ------------------------------------------------------- connection --

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.conninfo, autocommit=True)
            except psycopg.Error as exc:
                raise SourceError(f"emulator cannot connect: {exc.sqlstate}") from exc
            # An emulator may lose its last transactions in a crash; it must
            # not spend an fsync per journal entry.
            self._conn.execute("SET synchronous_commit = off")
            self._conn.execute("SET lock_timeout = '10s'")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self, *, pipeline: bool = True) -> Iterator[psycopg.Cursor[Any]]:
        """One PostgreSQL transaction, serialised, errors as SourceError.

        In pipeline mode BEGIN travels with the first statement (one round
        trip less per change); scripts of several statements need it off.
        """
        with self._lock:
            try:
                conn = self.conn
                with contextlib.ExitStack() as stack:
                    if pipeline:
                        stack.enter_context(conn.pipeline())
                    stack.enter_context(conn.transaction())
                    yield stack.enter_context(conn.cursor())
            except psycopg.Error as exc:
                raise translate(exc) from exc

    # ---------------------------------------------------------- install --

    def install(self) -> None:
        """Create schemas, views, functions, journal and first receiver."""
        with self.transaction(pipeline=False) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [INSTALL_LOCK])
            for script in SCRIPTS:
                text = resources.files(__package__).joinpath(script).read_text()
                cur.execute(text.encode())
            self._create_journal(cur)
        self._journal_id = None
        self._tables.clear()
        logger.info("emulator installed journal=%s/%s", self.library, self.journal)

    def _create_journal(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(
            "INSERT INTO qsys2.emu_journal (journal_library, journal_name, "
            "receiver_prefix, time_zone) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING journal_id",
            [self.library, self.journal, self.journal[:6], self.zone.key],
        )
        created = cur.fetchone()
        if created is None:
            return
        name = f"{self.journal[:6]}0001"
        cur.execute(
            "INSERT INTO qsys2.emu_receiver (journal_id, receiver_library, "
            "receiver_name, chain_position, status, attach_timestamp) "
            "VALUES (%s, %s, %s, 1, 'ATTACHED', %s) RETURNING receiver_id",
            [created[0], self.library, name, self.now()],
        )
        receiver = cur.fetchone()
        assert receiver is not None
        cur.execute(
            "UPDATE qsys2.emu_journal SET attached_receiver_id = %s "
            "WHERE journal_id = %s",
            [receiver[0], created[0]],
        )

    def grant_reader(self, role: str, password: str, *, data: bool = False) -> None:
        """A login role that may only read the journal and the catalog views.

        It may also select the ``_rrn`` and key columns of every table, now
        and created later (``RRN(T)`` after RGZPFM). With ``data`` it may
        also SELECT the store tables in ``mag`` (the guardian's re-reads).
        The password travels as a SCRAM verifier.
        """
        tables = list(self.tables().values())
        with self.transaction() as cur:
            grants.grant_reader(cur, role, password, data=data)
            for table in tables:
                grants.grant_slots(cur, [role], table.ident, table.key)
        logger.info("reader granted role=%s data=%s", role, data)

    # ----------------------------------------------------------- tables --

    def create_table(
        self,
        name: str,
        columns: Sequence[Column],
        key: Sequence[str],
        *,
        images: str = "*BOTH",
    ) -> TableDef:
        """Define ``MAG/<name>``: catalog rows, ``mag.<name>``, a D CT entry.

        Idempotent when the table exists with the same layout.
        """
        table = define(self.library, name, columns, key, images)
        existing = self.tables().get(table.name)
        if existing is not None:
            if (existing.columns, existing.key) != (table.columns, table.key):
                raise SourceError(
                    f"table {table.name} exists with another layout (CPF7302)",
                    cpf="CPF7302",
                )
            return existing
        with self.transaction() as cur:
            write_catalog(cur, table, self.journal_id)
            cur.execute(table.ddl())
            grants.grant_slots(cur, grants.readers(cur), table.ident, table.key)
            self.emit(cur, SYSTEM_JOB, None, [Entry("D", "CT", table.object)])
        self._tables[table.name] = table
        logger.info("table created table=%s", table.name)
        return table

    def tables(self) -> dict[str, TableDef]:
        """The tables of the library, read once from the catalog."""
        if not self._tables:
            with self.transaction() as cur:
                self._tables = load_tables(cur, self.library)
                cur.execute(
                    "SELECT system_table_name FROM qsys2.emu_table "
                    "WHERE system_table_schema = %s AND NOT journaled",
                    [self.library],
                )
                ended = {row[0] for row in cur.fetchall()}
            # ENDJRNPF outlives this object: another Emulator must not journal.
            self.unjournaled = {
                t.object for name, t in self._tables.items() if name in ended
            }
        return self._tables

    def forget_tables(self) -> None:
        """Drop the cached definitions (after ALTER or CHGJRNOBJ)."""
        self._tables = {}

    def table(self, name: str) -> TableDef:
        found = self.tables().get(name.upper())
        if found is None:
            raise SourceError(f"table {name[:20]!r} not found (CPF9801)", cpf="CPF9801")
        return found

    def create_store_tables(self) -> None:
        """ARTICLE, PRIX and STOCK (see :mod:`.store_tables`)."""
        store_tables.create_store_tables(self)

    def inject_bad_image(self, table: str, *, short_by: int = 3) -> int:
        """Journal an R PT for ``table`` whose image is ``short_by`` bytes short.

        The data table is not changed: a correct relay parks the entry in
        dead letters and delivers nothing for it. Returns its sequence.
        """
        tdef = self.table(table)
        row = {c.name: "BAD" if c.name in tdef.key else None for c in tdef.columns}
        row = {k: v if v is not None else _default(tdef, k) for k, v in row.items()}
        image, null_map = tdef.image(row)
        entry = Entry("R", "PT", tdef.object, 0, "0", null_map, image[:-short_by])
        with self.transaction() as cur:
            sequence = self.emit(cur, "999999/QSECOFR/INJECT", 0, [entry])[0]
        logger.warning("bad image injected table=%s position=%d", tdef.name, sequence)
        return sequence

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Current rows of ``table`` as JSON values (contracts §2), key order."""
        tdef = self.table(table)
        with self.transaction() as cur:
            rows = tdef.select_all(cur)
        return [tdef.json_row(row) for row in rows]

    # ------------------------------------------------------------- jobs --

    def job(
        self, name: str, *, autocommit: bool = False, program: str = "QSQLPGM"
    ) -> Job:
        """A job ``number/user/name``; use it as a context manager."""
        return Job(self, name, autocommit=autocommit, program=program)

    @property
    def journal_id(self) -> int:
        if self._journal_id is None:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT journal_id FROM qsys2.emu_journal "
                    "WHERE journal_library = %s AND journal_name = %s",
                    [self.library, self.journal],
                )
                found = cur.fetchone()
            if found is None:
                raise SourceError(
                    f"journal {self.library}/{self.journal} not found: install() first",
                    cpf="CPF9801",
                )
            self._journal_id = int(found[0])
        return self._journal_id

    def now(self) -> dt.datetime:
        """Local wall time of the journal's time zone, naive."""
        if self.clock is not None:
            return self.clock()
        return dt.datetime.now(self.zone).replace(tzinfo=None)

    def emit(
        self,
        cur: psycopg.Cursor[Any],
        job: str,
        cycle: int | None,
        entries: Sequence[Entry],
        *,
        program: str = "QSQLPGM",
    ) -> list[int]:
        """Append ``entries`` (inside the caller's transaction); their sequences."""
        number, user, name = split_job(job)
        if self.unjournaled:
            entries = [
                e for e in entries if e.code != "R" or e.object not in self.unjournaled
            ]
        gap = self._rng.randint(1, 3) if self._rng.random() < self.gap_rate else 0
        cur.execute(
            "SELECT qsys2.emu_emit(%s, %s, %s, %s::text[], %s, %s::text[], "
            "%s::text[], %s::text[], %s::numeric[], %s::text[], %s::text[], "
            "%s::bytea[])",
            [
                self.journal_id,
                gap,
                self.now(),
                [name, user, number, program, "QSYS" if program[0] == "Q" else "MAG"],
                cycle,
                [e.code for e in entries],
                [e.type for e in entries],
                [e.object for e in entries],
                [e.rrn for e in entries],
                [e.flag for e in entries],
                [e.null_map for e in entries],
                [e.data for e in entries],
            ],
        )
        found = cur.fetchone()
        assert found is not None
        return [int(seq) for seq in found[0]]

    # --------------------------------------------------------- receivers --

    def change_receiver(self, reset: bool = False, *, job: str = OPERATOR_JOB) -> str:
        """CHGJRN JRNRCV(*GEN) SEQOPT(*CONT|*RESET); the new receiver's name."""
        return receivers.change_receiver(self, reset=reset, job=job)

    def ipl(self) -> str:
        """An IPL of a system-managed journal: CHGJRN *GEN with *RESET.

        Like a real IPL it first ends every open commit cycle with a system
        rollback (compensations, C RB with indicator '2'), so the reset is
        never refused; the jobs that held them find their cycle gone.
        """
        for job in {id(j): j for j in self.locks.values()}.values():
            job.end_by_system()
        return receivers.change_receiver(self, reset=True, job=SYSTEM_JOB)

    def delete_receiver(self, name: str) -> None:
        """DLTJRNRCV: the receiver and its entries are gone (CPF7021 if attached)."""
        receivers.delete_receiver(self, name)

    def clear_member(self, table: str) -> int:
        """CLRPFM (F CR, no DL entries); see :mod:`.operations`."""
        return operations.clear_member(self, table)

    def reorganize(self, table: str) -> int:
        """RGZPFM (F RG, RRNs renumbered); see :mod:`.operations`."""
        return operations.reorganize(self, table)

    def end_journaling(self, table: str) -> None:
        """ENDJRNPF (F EJ): later changes of ``table`` are not journaled."""
        operations.set_journaling(self, table, on=False)

    def start_journaling(self, table: str) -> None:
        """STRJRNPF (F JM): changes of ``table`` are journaled again."""
        operations.set_journaling(self, table, on=True)

    def restore_member(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """RSTOBJ (F MR): data replaced by ``rows`` without R entries."""
        operations.restore_member(self, table, rows)

    def add_column(self, table: str, column: Column) -> None:
        """ALTER TABLE ADD COLUMN (D CG, new record length)."""
        operations.add_column(self, table, column)

    def save_and_free(self, name: str) -> None:
        """SAVJRNRCV STG(*FREE): receiver status FREED, entries gone."""
        operations.save_and_free(self, name)

    def set_journal(self, **options: str) -> None:
        """DLTRCV, MNGRCV, MINENTDTA, receiver retention; see :mod:`.operations`."""
        operations.set_journal(self, **options)

    def set_images(self, table: str, images: str) -> None:
        """Journal images of ``table``: '*BOTH' or '*AFTER'."""
        operations.set_images(self, table, images)

    def arm_glitches(
        self, *, null_attach: int = 0, stale_last: int = 0, stale_by: int = 3
    ) -> None:
        """JOURNAL_RECEIVER_INFO glitches for that many reads (jhc #55, #83)."""
        operations.arm_glitches(
            self, null_attach=null_attach, stale_last=stale_last, stale_by=stale_by
        )

    def head(self) -> Head:
        """The attached receiver and the last sequence written to it."""
        with self.transaction() as cur:
            cur.execute(
                "SELECT r.receiver_library, r.receiver_name, r.last_sequence "
                "FROM qsys2.emu_journal j JOIN qsys2.emu_receiver r "
                "ON r.receiver_id = j.attached_receiver_id WHERE j.journal_id = %s",
                [self.journal_id],
            )
            found = cur.fetchone()
        assert found is not None
        last = None if found[2] is None else int(found[2])
        return Head(found[0], found[1], last)

    def set_latency(self, milliseconds: int) -> None:
        """Delay every DISPLAY_JOURNAL call (a slow link to the store)."""
        with self.transaction() as cur:
            cur.execute(
                "UPDATE qsys2.emu_journal SET latency_ms = %s WHERE journal_id = %s",
                [milliseconds, self.journal_id],
            )


def _default(table: TableDef, name: str) -> Any:
    column = table.column(name)
    return None if column.nullable else DEFAULTS[column.type]


def translate(exc: psycopg.Error) -> SourceError:
    """A psycopg error as SourceError, with the CPF id when there is one."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    match = CPF.search(text)
    return SourceError(
        f"emulator sql failed sqlstate={exc.sqlstate}: {text[:300]}",
        cpf=match.group(0) if match else None,
    )
