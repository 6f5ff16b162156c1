"""The transformer leg: raw journal entries in, committed row changes out.

Each step takes up to ``pipeline.batch`` rows of ``raw_entries`` with
``state = 0`` in id order and, in ONE SQLite transaction, writes what they
produce (``changes``, ``held_changes``, dead letters, counters) and marks them
``state = 1``. A crash before COMMIT leaves everything as it was; after, all
of it is done. Nothing the leg needs between steps lives only in memory
except the layout cache, which is re-read from the catalog after a restart.

What an entry does:

- ``R`` PT PX UB UP DL BR UR DR of a relayed table: decoded with the table's
  layout. UB/BR wait in ``held_changes`` (key ``before:<object>|<rrn>|<job>``)
  for the UP/UR of the same object, RRN and job; pairing by job keeps two jobs
  updating one table apart. An UP with no before image is an update whose
  ``before`` is unknown (``IMAGES(*AFTER)``).
- Commit cycle 0: the change is emitted at once. Otherwise it is held under
  ``cycle:<raw id of the cycle's C SC>``; ``open:<journal>:<cycle>`` maps the
  journal's cycle number to that raw id, so the same cycle number after a
  sequence reset opens a new, distinct key.
- ``C CM``: the cycle's changes are reduced to their net effect per table and
  primary key and emitted; ``C RB`` drops them.
- ``F CR`` (CLRPFM) emits an ``op = 't'`` change; ``D CG``/``D CT`` drop the
  table's layout so the next record entry reads the catalog again (see
  :mod:`appliance.layouts` for why that keeps layout versions in journal
  order). Everything else is counted as ignored.
- A record that cannot be decoded is parked in dead letters with the table,
  position ``RECEIVER:SEQUENCE``, field, offset, bytes and expectation; the
  relay goes on with the next entry.

Net effect, worked through for one key in one cycle (first before image
against last after image):

    PT k=57 (after A)  ... DR k=57              -> nothing (never existed)
    UB/UP k=12 (B->C)  ... BR/UR k=12 (C->B)    -> nothing (before == after)
    DL k=9 (before D)  ... PX k=9 (after D)     -> nothing
    UB/UP k=5 (E->F)   ... UB/UP k=5 (F->G)     -> one 'u' E->G, made by the 2nd UP

So rollbacks (C RB) and savepoint rollbacks (compensations, then C CM) need no
special case. The version of a change is the raw id of the entry that made
its final image.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pyodbc

from appliance import layouts, source, store
from appliance.config import BoxSettings, IbmiSection
from appliance.decoder import JsonValue, RecordDecoder, compile_layout
from appliance.errors import DecodeError, SourceError

logger = logging.getLogger(__name__)

STAGE = "transformer"
ROW_TYPES = frozenset({"PT", "PX", "UB", "UP", "DL", "BR", "UR", "DR"})
BEFORE_TYPES = frozenset({"UB", "BR"})
AFTER_TYPES = frozenset({"UP", "UR"})
INSERT_TYPES = frozenset({"PT", "PX"})
LAYOUT_TYPES = frozenset({"CG", "CT"})
MAX_BACKOFF_S = 60.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Image = dict[str, JsonValue]
Event = dict[str, Any]


class CatalogReader(Protocol):
    """Where table layouts come from (the IBM i catalog, or a test's dict)."""

    def load_layout(self, library: str, table: str) -> layouts.Layout: ...


class OdbcCatalog:
    """Reads layouts through ODBC; reconnects on the next call after a failure."""

    def __init__(
        self, ibmi: IbmiSection, connect: Callable[[IbmiSection], Any] = source.connect
    ) -> None:
        self._ibmi = ibmi
        self._connect = connect
        self._conn: Any = None

    def load_layout(self, library: str, table: str) -> layouts.Layout:
        if self._conn is None:
            self._conn = self._connect(self._ibmi)
        try:
            cursor = self._conn.cursor()
            try:
                return layouts.load_layout(cursor, library, table)
            finally:
                cursor.close()
        except pyodbc.Error as exc:
            self.close()
            raise source.translate(exc, f"reading layout of {library}/{table}") from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pyodbc.Error:
                logger.debug("closing catalog connection failed", exc_info=True)
            self._conn = None


def canonical(value: Any) -> str:
    """Compact JSON with sorted keys: the one spelling of a key or an image."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def net_effect(events: Iterable[Event]) -> list[Event]:
    """Reduce a cycle's row events to one change per (table, key), in order.

    An event has ``kind`` (insert, update, delete), ``table``, ``key``,
    ``before``, ``after``, ``raw_id``. The result's ``op`` is c, u or d.
    """
    states: dict[str, dict[str, Any]] = {}
    for event in events:
        ident = event["table"] + "\0" + canonical(event["key"])
        state = states.get(ident)
        if state is None:
            state = states[ident] = {
                "existed": event["kind"] != "insert",
                "before": event["before"],
            }
        if state["before"] is None and event["kind"] == "delete":
            state["before"] = event["before"]
        state["exists"] = event["kind"] != "delete"
        state["after"] = event["after"] if state["exists"] else None
        state["last"] = event
    changes = [c for c in map(_final_change, states.values()) if c is not None]
    return sorted(changes, key=lambda change: change["raw_id"])


def _final_change(state: dict[str, Any]) -> Event | None:
    existed, exists = state["existed"], state["exists"]
    if not existed and not exists:
        return None
    if existed and exists and state["before"] == state["after"]:
        return None
    op = "u" if existed and exists else ("c" if exists else "d")
    last = state["last"]
    return {
        **last,
        "op": op,
        "before": state["before"] if existed else None,
        "after": state["after"],
    }


class TransformerLeg:
    """Decodes, pairs, holds and emits; see the module docstring."""

    name = STAGE

    def __init__(
        self,
        settings: BoxSettings,
        conn: sqlite3.Connection,
        catalog: CatalogReader,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.catalog = catalog
        self._clock = clock
        self._library = settings.ibmi.table_library.strip().upper()
        self._tables = {name.strip().upper() for name in settings.ibmi.tables}
        self._zone = ZoneInfo(settings.store.timezone)
        self._decoders: dict[tuple[str, str], RecordDecoder | DecodeError] = {}
        self._retry_at = 0.0
        self._failures = 0
        self._tally: Counter[str] = Counter()

    # -- Leg protocol -------------------------------------------------------

    def setup(self) -> None:
        logger.info(
            "transformer starting stage=%s table=%s count=%d",
            STAGE,
            ",".join(sorted(self._tables)),
            len(self._tables),
        )

    def step(self) -> bool:
        """Process one batch; True when entries were consumed."""
        if self._clock() < self._retry_at:
            return False
        # A plain read first: an idle leg must not take the write lock.
        if (
            self.conn.execute(
                "SELECT 1 FROM raw_entries WHERE state = 0 LIMIT 1"
            ).fetchone()
            is None
        ):
            return False
        saved = dict(self._decoders)
        try:
            with store.transaction(self.conn):
                rows = self.conn.execute(
                    "SELECT * FROM raw_entries WHERE state = 0 ORDER BY id LIMIT ?",
                    (self.settings.pipeline.batch,),
                ).fetchall()
                done, failure = self._process(rows)
        except BaseException:
            self._decoders = saved
            raise
        if failure is not None:
            self._back_off(failure)
        elif done:
            self._failures = 0
        return done > 0

    def close(self) -> None:
        closer = getattr(self.catalog, "close", None)
        if callable(closer):
            closer()
        self.conn.close()

    def status(self) -> str:
        tally = self._tally
        text = (
            f"entries={tally['entries']} changes={tally['changes']}"
            f" parked={tally['parked']}"
        )
        if self._failures:
            text += f" source_failures={self._failures}"
        return text

    # -- the batch ----------------------------------------------------------

    def _process(self, rows: list[sqlite3.Row]) -> tuple[int, SourceError | None]:
        """Handle rows in order; stop at a source failure (that row stays new)."""
        done: list[tuple[int]] = []
        failure: SourceError | None = None
        for row in rows:
            try:
                self._handle(row)
            except SourceError as exc:
                failure = exc
                break
            done.append((row["id"],))
        self.conn.executemany("UPDATE raw_entries SET state = 1 WHERE id = ?", done)
        if done:
            store.bump(self.conn, "transformer.entries", len(done))
            self._tally["entries"] += len(done)
        return len(done), failure

    def _back_off(self, failure: SourceError) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** min(self._failures, 7))
        self._retry_at = self._clock() + delay
        logger.warning(
            "catalog read failed, backing off stage=%s attempt=%d elapsed_s=%.1f"
            " error=%s",
            STAGE,
            self._failures,
            delay,
            failure,
        )

    def _handle(self, row: sqlite3.Row) -> None:
        code, kind = row["code"], row["entry_type"]
        if code == "R" and kind in ROW_TYPES and self._relayed(row):
            self._record(row)
        elif code == "C" and kind in ("SC", "CM", "RB"):
            self._commit_control(row, kind)
        elif code == "D" and kind in LAYOUT_TYPES and self._relayed(row):
            self._decoders.pop(_object_names(row), None)
            self._count("transformer.layout_changes")
        elif code == "F" and kind == "CR" and self._relayed(row):
            self._cleared(row)
        else:
            self._count("transformer.ignored")

    def _relayed(self, row: sqlite3.Row) -> bool:
        library, table = _object_names(row)
        return library == self._library and table in self._tables

    def _count(self, counter: str, by: int = 1) -> None:
        store.bump(self.conn, counter, by)

    # -- record entries -----------------------------------------------------

    def _record(self, row: sqlite3.Row) -> None:
        decoder = self._decoder(*_object_names(row))
        try:
            if isinstance(decoder, DecodeError):
                raise decoder
            image = decoder.decode(
                bytes(row["data"] or b""), row["null_map"], position=_position(row)
            )
            source_info = self._source(row, decoder.layout)
        except DecodeError as exc:
            self._park(row, exc)
            return
        events = self._events(row, decoder.layout, image, source_info)
        if not events:
            return
        if row["commit_cycle"]:
            self._hold(row, events)
        else:
            self._emit(net_effect(events))

    def _decoder(self, library: str, table: str) -> RecordDecoder | DecodeError:
        """The compiled layout in force for the table (SourceError propagates)."""
        found = self._decoders.get((library, table))
        if found is None:
            try:
                layout = self.catalog.load_layout(library, table)
                found = compile_layout(layout, self.settings.ibmi.ccsid_overrides)
            except DecodeError as exc:
                found = exc
            self._decoders[(library, table)] = found
        return found

    def _events(
        self,
        row: sqlite3.Row,
        layout: layouts.Layout,
        image: Image,
        source_info: dict[str, Any],
    ) -> list[Event]:
        """Row events of one entry: [] while a before image waits for its after."""
        kind = row["entry_type"]
        slot = f"before:{row['object']}|{row['rrn']}|{row['job']}"
        if kind in BEFORE_TYPES:
            self._keep_before(slot, row["id"], image)
            return []
        base = {"table": layout.sql_name, "raw_id": row["id"], **source_info}
        if kind in INSERT_TYPES:
            return [_event(base, "insert", _key(layout, image, row), None, image)]
        if kind not in AFTER_TYPES:
            return [_event(base, "delete", _key(layout, image, row), image, None)]
        before = self._take_before(slot)
        old_key, new_key = _key(layout, before or image, row), _key(layout, image, row)
        if old_key == new_key:
            return [_event(base, "update", new_key, before, image)]
        # An update of the primary key is a delete of the old key, insert of the new.
        return [
            _event(base, "delete", old_key, before, None),
            _event(base, "insert", new_key, None, image),
        ]

    def _keep_before(self, slot: str, raw_id: int, image: Image) -> None:
        replaced = self.conn.execute(
            "DELETE FROM held_changes WHERE cycle_key = ?", (slot,)
        ).rowcount
        if replaced:
            self._count("transformer.unpaired_before", replaced)
        self.conn.execute(
            "INSERT INTO held_changes (cycle_key, raw_id, change) VALUES (?, ?, ?)",
            (slot, raw_id, canonical(image)),
        )

    def _take_before(self, slot: str) -> Image | None:
        found = self.conn.execute(
            "DELETE FROM held_changes WHERE cycle_key = ? RETURNING change", (slot,)
        ).fetchall()
        if not found:
            return None
        image: Image = json.loads(found[-1][0])
        return image

    def _park(self, row: sqlite3.Row, exc: DecodeError) -> None:
        library, table = _object_names(row)
        position = _position(row)
        store.park(
            self.conn,
            stage=STAGE,
            reason=exc.reason,
            table=exc.table or f"{library}/{table}",
            position=position,
            field=exc.field,
            byte_offset=exc.offset,
            data=exc.data,
            expected=exc.expected,
            raw_id=row["id"],
        )
        self._tally["parked"] += 1
        logger.warning(
            "entry parked stage=%s table=%s position=%s field=%s offset=%s reason=%s",
            STAGE,
            exc.table or table,
            position,
            exc.field,
            exc.offset,
            exc.reason,
        )

    # -- commitment control -------------------------------------------------

    def _open_key(self, row: sqlite3.Row) -> str:
        cycle = row["commit_cycle"] or row["sequence"]  # a C SC is its own cycle
        return f"open:{row['journal']}:{cycle}"

    def _cycle_of(self, row: sqlite3.Row) -> str | None:
        found = self.conn.execute(
            "SELECT raw_id FROM held_changes WHERE cycle_key = ?",
            (self._open_key(row),),
        ).fetchone()
        return None if found is None else f"cycle:{found[0]}"

    def _open_cycle(self, row: sqlite3.Row) -> str:
        """Start a cycle keyed by this entry's raw id (its C SC, normally)."""
        stale = self._cycle_of(row)
        if stale is not None:
            self._abandon(row, stale)
        self.conn.execute(
            "INSERT INTO held_changes (cycle_key, raw_id, change) VALUES (?, ?, '{}')",
            (self._open_key(row), row["id"]),
        )
        return f"cycle:{row['id']}"

    def _hold(self, row: sqlite3.Row, events: list[Event]) -> None:
        cycle = self._cycle_of(row)
        if cycle is None:
            # No C SC seen (it precedes the relay's first entry): open it here.
            self._count("transformer.cycle_without_start")
            cycle = self._open_cycle(row)
        self.conn.execute(
            "INSERT INTO held_changes (cycle_key, raw_id, change) VALUES (?, ?, ?)",
            (cycle, row["id"], canonical(events)),
        )

    def _commit_control(self, row: sqlite3.Row, kind: str) -> None:
        if kind == "SC":
            self._open_cycle(row)
            return
        cycle = self._cycle_of(row)
        if cycle is None:
            self._count("transformer.ignored")
            return
        events = self._close_cycle(row, cycle)
        if kind == "CM":
            self._emit(net_effect(events))
            self._count("transformer.commits")
        else:
            self._count("transformer.rollbacks")

    def _close_cycle(self, row: sqlite3.Row, cycle: str) -> list[Event]:
        """Delete the cycle's held rows and its open marker; return its events."""
        held = self.conn.execute(
            "DELETE FROM held_changes WHERE cycle_key = ? RETURNING raw_id, change",
            (cycle,),
        ).fetchall()
        self.conn.execute(
            "DELETE FROM held_changes WHERE cycle_key = ?", (self._open_key(row),)
        )
        events: list[Event] = []
        for _, change in sorted(held, key=lambda found: int(found[0])):
            events.extend(json.loads(change))
        return events

    def _abandon(self, row: sqlite3.Row, cycle: str) -> None:
        """A cycle number reopened while still open: park what it held."""
        events = self._close_cycle(row, cycle)
        for event in events:
            store.park(
                self.conn,
                stage=STAGE,
                reason="commit cycle reopened before its CM or RB",
                table=event["table"],
                position=_position(row),
                expected="C CM or C RB before the next C SC of the same cycle",
                raw_id=event["raw_id"],
                payload=event,
            )
        logger.warning(
            "open commit cycle abandoned stage=%s position=%s count=%d",
            STAGE,
            _position(row),
            len(events),
        )

    # -- output -------------------------------------------------------------

    def _cleared(self, row: sqlite3.Row) -> None:
        """CLRPFM: every row of the member is gone, with no DL entries."""
        decoder = self._decoder(*_object_names(row))
        if isinstance(decoder, DecodeError):
            self._park(row, decoder)
            return
        layout = decoder.layout
        try:
            source_info = self._source(row, layout)
        except DecodeError as exc:
            self._park(row, exc)
            return
        change = {
            "table": layout.sql_name,
            "raw_id": row["id"],
            "op": "t",
            "key": {},
            "before": None,
            "after": None,
            **source_info,
        }
        self._emit([change])

    def _emit(self, changes: list[Event]) -> None:
        self.conn.executemany(
            "INSERT INTO changes (raw_id, table_name, op, key, before, after, source,"
            " entry_ts_ms, mined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    change["raw_id"],
                    change["table"],
                    change["op"],
                    canonical(change["key"]),
                    None if change["before"] is None else canonical(change["before"]),
                    None if change["after"] is None else canonical(change["after"]),
                    canonical(change["source"]),
                    change["entry_ts_ms"],
                    change["mined_at"],
                )
                for change in changes
            ],
        )
        if changes:
            self._count("transformer.changes", len(changes))
            self._tally["changes"] += len(changes)

    def _source(self, row: sqlite3.Row, layout: layouts.Layout) -> dict[str, Any]:
        """``source``, ``entry_ts_ms`` and ``mined_at`` of a change made by ``row``."""
        local_text = row["entry_ts"]
        try:
            local = dt.datetime.fromisoformat(local_text)
        except ValueError:
            raise DecodeError(
                "entry timestamp unreadable",
                table=layout.sql_name,
                position=_position(row),
                field="entry_ts",
                data=str(local_text).encode()[:64],
                expected="YYYY-MM-DDTHH:MM:SS.ffffff",
            ) from None
        # fold=0: in the repeated hour of a DST fall-back, the first occurrence.
        utc = local.replace(tzinfo=self._zone).astimezone(dt.UTC)
        source_info = {
            "journal": row["journal"],
            "receiver": row["receiver_name"],
            "receiver_library": row["receiver_library"],
            "sequence": row["sequence"],
            "commit_cycle": row["commit_cycle"],
            "library": layout.library,
            "table": layout.sql_name,
            "rrn": row["rrn"],
            "entry_ts": local_text,
            "entry_ts_utc": utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        return {
            "source": source_info,
            "entry_ts_ms": (utc - _EPOCH) // dt.timedelta(milliseconds=1),
            "mined_at": row["mined_at"],
        }


def _event(
    base: dict[str, Any],
    kind: str,
    key: dict[str, JsonValue],
    before: Image | None,
    after: Image | None,
) -> Event:
    return {**base, "kind": kind, "key": key, "before": before, "after": after}


def _key(
    layout: layouts.Layout, image: Image, row: sqlite3.Row
) -> dict[str, JsonValue]:
    """Primary-key columns of the image; the RRN when the table has no key."""
    if not layout.keys:
        return {"RRN": row["rrn"]}
    return {name: image.get(name) for name in layout.keys}


def _object_names(row: sqlite3.Row) -> tuple[str, str]:
    """(library, file) from the 30-char OBJECT: file 1-10, library 11-20."""
    text = str(row["object"] or "").ljust(30)
    return text[10:20].strip().upper(), text[0:10].strip().upper()


def _position(row: sqlite3.Row) -> str:
    return f"{row['receiver_name']}:{row['sequence']}"


def build(settings: BoxSettings) -> TransformerLeg:
    """The leg as the service runs it: the pipeline database and ODBC catalog."""
    conn = store.connect(settings.pipeline.db_path)
    return TransformerLeg(settings, conn, OdbcCatalog(settings.ibmi))
