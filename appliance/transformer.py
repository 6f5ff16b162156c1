"""The transformer leg: raw journal entries in, committed row changes out.

Each step takes up to ``pipeline.batch`` rows of ``raw_entries`` with
``state = 0`` in id order and, in ONE SQLite write transaction, writes what
they produce (``changes``, ``held_changes``, dead letters, counters) and marks
them ``state = 1``. A crash before COMMIT leaves everything as it was; after,
all of it is done. The batch is computed before that transaction, reading
only (:mod:`appliance.readphase`), so the other legs are not kept from the
write lock while it decodes; a batch that needs a write midway (a layout
version, a dead letter) or whose entries changed meanwhile is computed again
inside the transaction. Nothing the leg needs between steps lives only in
memory: layout versions are in ``meta`` (compiled decoders are rebuilt from
them), and only the warnings given once per table per run (blank numerics,
field errors) are forgotten. Within a batch, held rows (:class:`HeldRows`),
RRN map slots, changes and counters are kept in memory and written before
the COMMIT, in the order the entries made them: the tables are left as one
statement per entry would have left them, ids included, whatever the batch
size (tests/test_transformer_held_cache.py, tests/emulator/).

What each entry type does (UB/BR pairing, commit cycles and their netting,
the RRN map, CLRPFM, layout changes, field errors, dead letters, journaling
alarms, a refused catalog read): docs/design.md, "The transformer: what an
entry does".

A committed cycle is reduced to its net effect per key (:mod:`appliance.netting`).
Holding and ending cycles, and the relay's marks about them: :mod:`appliance.cycles`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from appliance import checks, layouts, rrnmap, store
from appliance.catalog import OdbcCatalog, denied
from appliance.changesource import Entry, SourceBlock, new_entries
from appliance.changesource import object_names as _object_names
from appliance.changesource import position as _position
from appliance.changesource import qualified as _qualified
from appliance.config import BoxSettings
from appliance.cycles import CommitCycles
from appliance.decoder import Decoded, JsonValue, RecordDecoder
from appliance.decoding.versions import CatalogReader, DecoderVersions
from appliance.doorbell import Doorbell
from appliance.errors import DecodeError, SourceError
from appliance.heldrows import HeldRows
from appliance.journal import GAP_MARK, SKIP_MARK, SKIP_ROW_MARK
from appliance.netting import (
    Event,
    canonical,
    net_effect,
    row_event,
    tagged,
    with_errors,
)
from appliance.readphase import ReadPhase

logger = logging.getLogger(__name__)

STAGE = "transformer"
ROW_TYPES = frozenset({"PT", "PX", "UB", "UP", "DL", "BR", "UR", "DR"})
BEFORE_TYPES = frozenset({"UB", "BR"})
AFTER_TYPES = frozenset({"UP", "UR"})
INSERT_TYPES = frozenset({"PT", "PX"})
LAYOUT_TYPES = frozenset({"CG", "CT"})
# Member entries after which ODH cannot follow the table from the journal.
MEMBER_ALARMS = {
    "EJ": "journaling ended: later changes of the table are not journaled",
    "MR": "member restored: its rows were replaced without record entries",
}
# What the alarm's dead letter tells the operator the relay does about it.
MEMBER_REPAIRS = {
    "EJ": "a guardian check (repair) of the table when journaling restarts (F JM)",
    "MR": "a guardian check (repair) of the table, requested now",
}
DENIED_KEY = "transformer.alarm.source_denied"
MAX_BACKOFF_S = 60.0

Image = dict[str, JsonValue]


class _Moved(Exception):
    """The batch's entries changed between its reading and its writing."""


class TransformerLeg(CommitCycles):
    """Decodes, pairs, holds and emits; see the module docstring."""

    name = STAGE
    # An idle step is one local SQLite read: poll soon after work (daemon.run).
    idle_first_s = 0.005

    def __init__(
        self,
        settings: BoxSettings,
        conn: sqlite3.Connection,
        catalog: CatalogReader,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        # Rings the next leg after a step that wrote work for it (a hint:
        # the database stays the hand-over).
        self.doorbell = Doorbell(
            settings.pipeline.db_path.parent, self.name, ("enricher",)
        )
        self.conn = conn
        self.catalog = catalog
        self._clock = clock
        self._library = settings.ibmi.table_library.strip().upper()
        self._tables = {name.strip().upper() for name in settings.ibmi.tables}
        self._source = SourceBlock(ZoneInfo(settings.store.timezone))
        self._versions = DecoderVersions(conn, catalog, settings.ibmi.ccsid_overrides)
        self._rrns = rrnmap.RrnMap(conn)
        self._warned: set[tuple[str, str]] = set()
        self._retry_at = 0.0
        self._failures = 0
        self._denied = ""
        self._tally: Counter[str] = Counter()
        self._held = HeldRows(conn)
        self._reads_only = ReadPhase(conn)
        self._versions.phase = self._reads_only
        self._out: list[Event] = []  # the batch's changes, written at its end
        self._bumps: Counter[str] = Counter()  # the batch's counters, likewise
        checks.ensure_schema(conn)
        self._checks = checks.Flusher(conn, STAGE)

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
        self._checks.flush()  # checks a box refused before, when idle too
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
        done, failure = self._outside_lock() or self._under_lock()
        if failure is not None:
            self._back_off(failure)
        elif done:
            self._failures = 0
            if self._denied:
                self._allowed_again()
        self._checks.flush()
        return done > 0

    def close(self) -> None:
        closer = getattr(self.catalog, "close", None)
        if callable(closer):
            closer()
        self.conn.close()

    def status(self) -> str:
        tally = self._tally
        text = (
            f"this run: entries={tally['entries']} changes={tally['changes']}"
            f" parked={tally['parked']}"
        )
        if self._failures:
            text += f" source_failures={self._failures}"
        if self._denied:
            text = f"ALARM source refused the relay's user: {self._denied} | {text}"
        return text[:300]

    # -- the batch ----------------------------------------------------------

    def _outside_lock(self) -> tuple[int, SourceError | None] | None:
        """The batch computed reading only, then written in a short transaction.

        None when it must be done under the lock instead: a write was wanted
        midway (:mod:`appliance.readphase`), or the entries are no longer the
        new ones they were (an operator's retry put one back): then nothing
        of it was written and its caches are dropped.
        """
        self._held = HeldRows(self.conn)  # held_changes as this batch sees it
        self._rrns.forget()  # the map's slots as this batch sees them
        tally = self._tally.copy()
        rows = new_entries(self.conn, self.settings.pipeline.batch)
        try:
            with self._reads_only:
                done, failure = self._handle_rows(rows)
            if not self._reads_only.wanted_write:
                with store.transaction(self.conn):
                    if not self._finish(rows, done):
                        raise _Moved  # rolled back: nothing of it stays
                    self._held.write_back()
                    self._rrns.flush()
                return done, failure
        except _Moved:
            pass
        except Exception:
            if not self._reads_only.wanted_write:  # not the refusal's doing
                self._versions.forget()
                self._rrns.forget()
                raise
        except BaseException:
            self._versions.forget()
            self._rrns.forget()
            raise
        self._versions.forget()
        self._rrns.forget()
        self._tally = tally
        self._tally["under_lock"] += 1
        return None

    def _under_lock(self) -> tuple[int, SourceError | None]:
        """The batch read, computed and written in one write transaction."""
        self._held = HeldRows(self.conn)
        self._rrns.forget()
        try:
            with store.transaction(self.conn):
                rows = new_entries(self.conn, self.settings.pipeline.batch)
                done, failure = self._handle_rows(rows)
                self._finish(rows, done)
                # Before COMMIT, in the same transaction.
                self._held.write_back()
                self._rrns.flush()
        except BaseException:
            # What the rolled-back transaction wrote to meta is gone (the held
            # rows' cache is made anew at the next step).
            self._versions.forget()
            self._rrns.forget()
            raise
        return done, failure

    def _handle_rows(self, rows: list[Entry]) -> tuple[int, SourceError | None]:
        """Handle rows in order; stop at a source failure (that row stays new).

        ``rows`` are the lowest ids with ``state = 0``, the handled ones a
        prefix: exactly the ``state = 0`` rows up to the last handled id.
        """
        self._out = []
        self._bumps.clear()
        done = 0
        failure: SourceError | None = None
        for row in rows:
            try:
                self._handle(row)
            except SourceError as exc:
                failure = exc
                break
            done += 1
        return done, failure

    def _finish(self, rows: list[Entry], done: int) -> bool:
        """Write the batch's changes and counters, mark its entries; False
        (the caller rolls back) when they are not all still new."""
        self._write_changes()
        if done:
            marked = self.conn.execute(
                "UPDATE raw_entries SET state = 1"
                " WHERE state = 0 AND id BETWEEN ? AND ?",
                (rows[0]["id"], rows[done - 1]["id"]),
            ).rowcount
            if marked != done:
                return False
            self._count("transformer.entries", done)
            self._tally["entries"] += done
        self._write_counts()
        return True

    def _back_off(self, failure: SourceError) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** min(self._failures, 7))
        self._retry_at = self._clock() + delay
        if denied(failure):
            self._refused(failure)
        logger.warning(
            "catalog read failed, backing off stage=%s attempt=%d elapsed_s=%.1f"
            " error=%s",
            STAGE,
            self._failures,
            delay,
            failure,
        )

    def _refused(self, failure: SourceError) -> None:
        """A permission error: still retried, but an alarm until it clears.

        Counted in ``transformer.source_denied`` at every attempt; the
        ``meta`` row ``transformer.alarm.source_denied`` and the leg's status
        (heartbeat, ``appliance status``, the web page's legs) carry it.
        """
        first = not self._denied
        self._denied = str(failure)[:160]
        with store.transaction(self.conn):
            store.bump(self.conn, "transformer.source_denied")
            _put_meta(
                self.conn,
                DENIED_KEY,
                {"error": str(failure)[:500], "attempt": self._failures},
            )
        if first:
            logger.error(
                "source refused the relay's user, retrying until granted"
                " stage=%s attempt=%d error=%s",
                STAGE,
                self._failures,
                failure,
            )

    def _allowed_again(self) -> None:
        with store.transaction(self.conn):
            self.conn.execute("DELETE FROM meta WHERE key = ?", (DENIED_KEY,))
        logger.warning("source grants the relay's user again stage=%s", STAGE)
        self._denied = ""

    def _handle(self, row: Entry) -> None:
        code, kind = row["code"], row["entry_type"]
        if code == "R" and kind in ROW_TYPES and self._relayed(row):
            self._record(row)
        elif code == "C" and kind in ("SC", "CM", "RB"):
            self._commit_control(row, kind)
        elif code == "D" and kind in LAYOUT_TYPES and self._relayed(row):
            library, table = _object_names(row)
            self._versions.changed(row, f"{library}/{table}", _position(row))
            self._count("transformer.layout_changes")
        elif code == "F" and kind == "CR" and self._relayed(row):
            self._rrns.clear("/".join(_object_names(row)))
            self._cleared(row)
        elif code == "F" and kind in MEMBER_ALARMS and self._relayed(row):
            self._member_alarm(row, kind)
        elif code == "F" and kind == "JM" and self._relayed(row):
            self._journaling_started(row)
        elif (code, kind) == GAP_MARK:
            self._cut_cycles(row)
        elif (code, kind) == SKIP_MARK:
            self._cut_skipped(row)
        elif (code, kind) == SKIP_ROW_MARK:
            self._skipped_row(row)
        elif code == "F" and kind == "RG" and self._relayed(row):
            self._reorganized(row)
        else:
            self._count("transformer.ignored")

    def _relayed(self, row: Entry) -> bool:
        library, table = _object_names(row)
        return library == self._library and table in self._tables

    def _count(self, counter: str, by: int = 1) -> None:
        """Count in the batch; written once per counter at its end."""
        self._bumps[counter] += by

    def _write_counts(self) -> None:
        for counter, by in self._bumps.items():
            store.bump(self.conn, counter, by)
        self._bumps.clear()

    # -- record entries -----------------------------------------------------

    def _record(self, row: Entry) -> None:
        position = _position(row)
        try:
            decoder = self._versions.decoder(row, *_object_names(row), position)
            decoded = decoder.decode_record(
                bytes(row["data"] or b""), row["null_map"], position=position
            )
            source_info = self._source(row, decoder)
        except DecodeError as exc:
            if row["entry_type"] == "DL":
                # IMAGES(*AFTER): the slot is known, the row only through the map.
                events = self._imageless_delete(row, exc)
            else:
                self._park(row, exc)
                return
        else:
            self._tally_problems(decoder, decoded, row)
            bad = _key_errors(decoder.layout, decoded.errors)
            if (
                bad
                and row["entry_type"] in ("DL", "DR")
                and self._rrns.knows(_qualified(row["object"]), row["rrn"])
            ):
                # Its key unreadable, the delete still has its slot: the key
                # the RRN map holds, as for a DL whose image is refused (an
                # unknown slot parks the delete with its key error below).
                events = self._imageless_delete(row, _key_error(bad[0], decoder))
            else:
                self._track(row, decoder.layout, decoded)
                events = self._events(row, decoder.layout, decoded, source_info)
        if not events:
            return
        if row["commit_cycle"]:
            self._hold(row, events)
        else:
            self._emit(net_effect(events))

    def _track(self, row: Entry, layout: layouts.Layout, decoded: Decoded) -> None:
        """Follow the entry in the RRN map: after images set, deletes free.

        An after image whose key has a field error frees its slot: the key is
        unknown, and an image-less delete there is parked rather than sent
        for a null key.
        """
        table, kind = _qualified(row["object"]), row["entry_type"]
        if kind in INSERT_TYPES or kind in AFTER_TYPES:
            if _key_errors(layout, decoded.errors):
                self._rrns.drop(table, row["rrn"])
            else:
                self._rrns.put(table, row["rrn"], _key(layout, decoded.values, row))
        elif kind in ("DL", "DR"):
            self._rrns.drop(table, row["rrn"])

    def _imageless_delete(self, row: Entry, exc: DecodeError) -> list[Event]:
        """A DL with no usable image: delete the key mapped to its RRN.

        A DL that came WITH an image the decoder refused (damaged, or of
        another length) is not an ``IMAGES(*AFTER)`` delete: the delete by
        RRN still goes (the map knows the key), and the refused bytes travel
        in its ``errors`` (counter ``transformer.damaged_delete_images``); a
        slot the map cannot vouch for parks the entry with those bytes.
        """
        library, table = _object_names(row)
        # The layout in force, without the image-length check the DL fails.
        unsized = {**row, "code": "", "data": b""}
        try:
            decoder = self._versions.decoder(unsized, library, table, _position(row))
            source_info = self._source(row, decoder)
        except DecodeError:
            self._park(row, exc)  # the layout itself is the problem
            return []
        window = self._rrns.window(f"{library}/{table}")
        if window is not None and self._rrns.uncertain(
            f"{library}/{table}", row["rrn"], dict(row)
        ):
            uncertain = rrnmap.uncertain_rrn(library, table, row["rrn"], window)
            self._park(row, _with_image(uncertain, exc) if row["data"] else uncertain)
            origin = f"transformer RG {window.rg_position} {library}/{table}"
            checks.queue(self.conn, table, "RG", origin)
            self._count("transformer.deletes_uncertain")
            return []
        key = self._rrns.take(f"{library}/{table}", row["rrn"])
        if key is None:
            unknown = rrnmap.unknown_rrn(library, table, row["rrn"])
            self._park(row, _with_image(unknown, exc) if row["data"] else unknown)
            return []
        self._count("transformer.deletes_by_rrn")
        base = {"table": decoder.layout.sql_name, "raw_id": row["id"], **source_info}
        errors: list[dict[str, Any]] = []
        if row["data"]:
            self._count("transformer.damaged_delete_images")
            errors = [_image_error(exc)]
            logger.warning(
                "delete image refused, row deleted by its RRN stage=%s table=%s"
                " position=%s field=%s offset=%s reason=%s",
                STAGE,
                decoder.layout.sql_name,
                _position(row),
                exc.field,
                exc.offset,
                exc.reason,
            )
        return [row_event(base, "delete", key, None, None, errors=errors)]

    def _reorganized(self, row: Entry) -> None:
        """RGZPFM renumbered every RRN: re-read the table's map from the source.

        A source failure propagates (the entry is retried); a catalog that
        cannot read RRNs leaves the map empty (image-less deletes then park).
        Read under the write lock only, so the source is read once.
        """
        self._reads_only.need_lock("RGZPFM: the table's RRNs from the source")
        library, table = _object_names(row)
        try:
            decoder = self._versions.decoder(row, library, table, _position(row))
        except DecodeError as exc:
            self._rrns.clear(f"{library}/{table}")
            self._park(row, exc)
            return
        reader = getattr(self.catalog, "read_rrn_pairs", None)
        pairs = reader(library, decoder.layout) if callable(reader) else []
        # The head right after the pairs closes the window in which the
        # pairs are newer than the entries (rrnmap's module docstring).
        head_of = getattr(self.catalog, "read_head", None)
        head = head_of() if callable(head_of) else None
        window = (
            None if head is None else rrnmap.Window(row["id"], _position(row), head)
        )
        self._rrns.replace(
            f"{library}/{table}", pairs, position=_position(row), window=window
        )
        self._count("transformer.reorganized")

    def _tally_problems(
        self, decoder: RecordDecoder, decoded: Decoded, row: Entry
    ) -> None:
        """Count field errors and blank numerics; warn once per table and kind.

        Both are in the event or counted, so a log line per record would add
        nothing but noise: the first of each kind per table and run is logged.
        """
        if decoded.errors:
            self._count("transformer.field_errors", len(decoded.errors))
            if ("error", decoder.table) not in self._warned:
                self._warned.add(("error", decoder.table))
                first = decoded.errors[0]
                logger.warning(
                    "field decode errors carried in changes stage=%s table=%s"
                    " position=%s field=%s reason=%s",
                    STAGE,
                    decoder.table,
                    _position(row),
                    first["field"],
                    first["reason"],
                )
        if decoded.blanks:
            self._count("transformer.blank_numerics", len(decoded.blanks))
            if ("blank", decoder.table) not in self._warned:
                self._warned.add(("blank", decoder.table))
                logger.warning(
                    "blank numeric fields read as null stage=%s table=%s"
                    " position=%s field=%s",
                    STAGE,
                    decoder.table,
                    _position(row),
                    ",".join(decoded.blanks),
                )

    def _events(
        self,
        row: Entry,
        layout: layouts.Layout,
        decoded: Decoded,
        source_info: dict[str, Any],
    ) -> list[Event]:
        """Row events of one entry: [] while a before image waits for its after.

        An event whose key comes from an image with a field error in a key
        column is parked, not emitted (:meth:`_keyed`).
        """
        kind, image = row["entry_type"], decoded.values
        slot = f"before:{row['object']}|{row['rrn']}|{row['job']}"
        if kind in BEFORE_TYPES:
            self._keep_before(slot, row["id"], image, decoded.errors)
            return []
        base = {"table": layout.sql_name, "raw_id": row["id"], **source_info}
        bad = _key_errors(layout, decoded.errors)
        if kind in INSERT_TYPES:
            errors = tagged(decoded.errors, "after")
            key = _key(layout, image, row)
            event = row_event(base, "insert", key, None, image, errors=errors)
            return self._keyed(row, event, bad)
        if kind not in AFTER_TYPES:
            errors = tagged(decoded.errors, "before")
            key = _key(layout, image, row)
            event = row_event(base, "delete", key, image, None, errors=errors)
            return self._keyed(row, event, bad)
        before, before_errors = self._take_before(slot)
        errors = before_errors + tagged(decoded.errors, "after")
        old_key, new_key = _key(layout, before or image, row), _key(layout, image, row)
        old_bad = _key_errors(layout, before_errors) if before else bad
        if old_key == new_key:
            event = row_event(base, "update", new_key, before, image, errors=errors)
            return self._keyed(row, event, bad or old_bad)
        # An update of the primary key is a delete of the old key, insert of the new.
        after_errors = errors[len(before_errors) :]
        return [
            *self._keyed(
                row,
                row_event(base, "delete", old_key, before, None, errors=before_errors),
                old_bad,
            ),
            *self._keyed(
                row,
                row_event(base, "insert", new_key, None, image, errors=after_errors),
                bad,
            ),
        ]

    def _keyed(
        self, row: Entry, event: Event, bad: list[dict[str, Any]]
    ) -> list[Event]:
        """``[event]``, or ``[]`` once parked when its key has a field error.

        The erroneous key field is null in ``event``: sent, it would name no
        row or merge different rows at the hub (and in a cycle's netting).
        The dead letter keeps the table, position, field, offset, bytes and
        expectation, and the change itself (with its ``errors``) as payload.
        """
        if not bad:
            return [event]
        first = bad[0]
        names = ", ".join(error["field"] for error in bad)
        reason = f"key field unreadable, change not relayed: {first['reason']}"
        if len(bad) > 1:
            reason += f" (key fields in error: {names})"
        store.park(
            self.conn,
            stage=STAGE,
            reason=reason,
            table=event["table"],
            position=_position(row),
            field=first["field"],
            byte_offset=first["offset"],
            data=bytes.fromhex(first["bytes_hex"]),
            expected=first["expected"],
            raw_id=row["id"],
            payload=event,
        )
        self._tally["parked"] += 1
        self._count("transformer.key_errors")
        # No change of that row reaches the hub: a repair check sets it from
        # the source (the bracket leaves alone what is still on its way).
        table = _object_names(row)[1]
        origin = f"transformer key_error {_position(row)} {table}"
        checks.queue(self.conn, table, "key_error", origin)
        logger.warning(
            "change parked, key field unreadable stage=%s table=%s position=%s"
            " field=%s offset=%s reason=%s",
            STAGE,
            event["table"],
            _position(row),
            first["field"],
            first["offset"],
            first["reason"],
        )
        return []

    def _keep_before(
        self, slot: str, raw_id: int, image: Image, errors: list[dict[str, Any]]
    ) -> None:
        replaced = len(self._held.take(slot))
        if replaced:
            self._count("transformer.unpaired_before", replaced)
        self._held.put(slot, raw_id, [image, tagged(errors, "before")])

    def _take_before(self, slot: str) -> tuple[Image | None, list[dict[str, Any]]]:
        """The held before image of ``slot`` and its field errors (or None, [])."""
        found = self._held.take(slot)
        if not found:
            return None, []
        held = found[-1][1]
        if isinstance(held, dict):  # written before field errors were kept
            return held, []
        image: Image = held[0]
        errors: list[dict[str, Any]] = held[1]
        return image, errors

    def _park(self, row: Entry, exc: DecodeError) -> None:
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

    # -- output -------------------------------------------------------------

    def _cleared(self, row: Entry) -> None:
        """CLRPFM: every row of the member is gone, with no DL entries."""
        try:
            decoder = self._versions.decoder(row, *_object_names(row), _position(row))
            layout = decoder.layout
            source_info = self._source(row, decoder)
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
            "errors": [],
            **source_info,
        }
        self._emit([change])

    def _member_alarm(self, row: Entry, kind: str) -> None:
        """F EJ / F MR of a relayed table: an alarm an operator must act on.

        Parked as a dead letter (visible in ``appliance status`` and the web
        page), counted as ``transformer.alarm.<type>``, logged at ERROR.
        """
        library, table = _object_names(row)
        reason = MEMBER_ALARMS[kind]
        store.park(
            self.conn,
            stage=STAGE,
            reason=f"F {kind}: {reason}",
            table=f"{library}/{table}",
            position=_position(row),
            expected=MEMBER_REPAIRS[kind],
            raw_id=row["id"],
        )
        self._count(f"transformer.alarm.{kind}")
        if kind == "MR":
            origin = f"transformer MR {_position(row)} {library}/{table}"
            checks.queue(self.conn, table, "MR", origin)
        else:
            checks.journaling_ended(self.conn, library, table, _position(row))
        logger.error(
            "journal alarm, odh may drift stage=%s table=%s position=%s reason=%s",
            STAGE,
            table,
            _position(row),
            reason,
        )

    def _journaling_started(self, row: Entry) -> None:
        """F JM: journaling (re)started; after an F EJ, ask for a repair check."""
        library, table = _object_names(row)
        if not checks.journaling_started(self.conn, library, table):
            self._count("transformer.ignored")
            return
        logger.warning(
            "journaling restarted, repair check queued stage=%s table=%s position=%s",
            STAGE,
            table,
            _position(row),
        )

    def _emit(self, changes: list[Event]) -> None:
        """Queue changes for the batch's INSERT, in order (:meth:`_write_changes`)."""
        self._out.extend(changes)

    def _write_changes(self) -> None:
        """Write the batch's changes in emit order; errors in ``source.errors``."""
        changes, self._out = self._out, []
        if not changes:
            return
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
                    canonical(with_errors(change)),
                    change["entry_ts_ms"],
                    change["mined_at"],
                )
                for change in changes
            ],
        )
        self._count("transformer.changes", len(changes))
        self._tally["changes"] += len(changes)


def _key(layout: layouts.Layout, image: Image, row: Entry) -> dict[str, JsonValue]:
    """Primary-key columns of the image; the RRN when the table has no key."""
    if not layout.keys:
        return {"RRN": row["rrn"]}
    return {name: image.get(name) for name in layout.keys}


def _key_errors(
    layout: layouts.Layout, errors: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The field errors of ``errors`` in a primary-key column (RRN keys have none)."""
    if not errors or not layout.keys:
        return []
    return [error for error in errors if error["field"] in layout.keys]


def _put_meta(conn: sqlite3.Connection, key: str, value: dict[str, Any]) -> None:
    store.meta_put(conn, key, canonical(value))


def build(settings: BoxSettings) -> TransformerLeg:
    """The leg as the service runs it: the pipeline database and ODBC catalog."""
    conn = store.connect(settings.pipeline.db_path)
    return TransformerLeg(settings, conn, OdbcCatalog(settings.ibmi))


def _key_error(error: dict[str, Any], decoder: RecordDecoder) -> DecodeError:
    """A key field's error (a field-level one) as the refusal of the image."""
    return DecodeError(
        f"key field unreadable: {error['reason']}",
        table=decoder.table,
        field=str(error["field"]),
        offset=error["offset"],
        data=bytes.fromhex(str(error["bytes_hex"])),
        expected=str(error["expected"]),
    )


def _with_image(unknown: DecodeError, image: DecodeError) -> DecodeError:
    """An unknown-RRN refusal that also names the DL's refused image."""
    return DecodeError(
        f"{unknown.reason}; its image was refused too: {image.reason}",
        table=unknown.table,
        position=image.position,
        field=image.field,
        offset=image.offset,
        data=image.data,
        expected=image.expected,
    )


def _image_error(exc: DecodeError) -> dict[str, Any]:
    """A refused delete image as a change's field error (before image)."""
    return {
        "field": exc.field,
        "offset": exc.offset,
        "bytes_hex": exc.data.hex().upper(),
        "reason": f"delete image refused, row deleted by its RRN: {exc.reason}",
        "expected": exc.expected,
        "image": "before",
    }
