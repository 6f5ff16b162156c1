"""Commitment control in the transformer: cycles held until their end.

A row change of a commit cycle is held (``held_changes``, through
:class:`~appliance.heldrows.HeldRows`) under ``cycle:<raw id of its start>``
until the cycle's C CM (its net effect is emitted) or C RB (dropped); the
cycle's start is marked ``open:<journal>:<cycle number>``. Invariants:

- A cycle number reopened while still open parks what it held (a lost end).
- A data gap's mark (``GAP_MARK``) parks every open cycle: their ends or
  changes may be lost, and the gap's repair checks set those rows.
- An operator's skip of a commit boundary (``SKIP_MARK``) parks the cycle it
  ended, or, of unknown cycle, every open cycle; those that end later at the
  source but the skipped entry's job's own are waited for, and a skipped row
  change of an open cycle (``SKIP_ROW_MARK``) too: their tables are checked
  again when each ends (``check_after:<journal>:<cycle>``), since the skip's
  own checks may have read them while the cycle was open.

:class:`CommitCycles` is a mixin of :class:`~appliance.transformer.TransformerLeg`,
which provides the connection, the held rows, the relayed tables, the batch's
counters and the emission of changes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from appliance import checks, store
from appliance.changesource import Entry
from appliance.changesource import object_names as _object_names
from appliance.changesource import position as _position
from appliance.heldrows import HeldRows
from appliance.netting import Event, canonical, net_effect

# The transformer leg's own logger: these lines are its, whatever the module.
logger = logging.getLogger("appliance.transformer")

STAGE = "transformer"


class CommitCycles:
    """Commit cycles and the relay's own marks about them (module doc)."""

    conn: sqlite3.Connection
    _held: HeldRows
    _library: str
    _tables: set[str]

    def _count(self, counter: str, by: int = 1) -> None:
        raise NotImplementedError  # the leg's

    def _emit(self, changes: list[Event]) -> None:
        raise NotImplementedError  # the leg's

    def _open_key(self, row: Entry) -> str:
        cycle = row["commit_cycle"] or row["sequence"]  # a C SC is its own cycle
        return f"open:{row['journal']}:{cycle}"

    def _cycle_of(self, row: Entry) -> str | None:
        found = self._held.first_id(self._open_key(row))
        return None if found is None else f"cycle:{found}"

    def _open_cycle(self, row: Entry) -> str:
        """Start a cycle keyed by this entry's raw id (its C SC, normally)."""
        stale = self._cycle_of(row)
        if stale is not None:
            self._abandon(row, stale)
        self._held.put(self._open_key(row), row["id"], {})
        return f"cycle:{row['id']}"

    def _hold(self, row: Entry, events: list[Event]) -> None:
        cycle = self._cycle_of(row)
        if cycle is None:
            # No C SC seen (it precedes the relay's first entry): open it here.
            self._count("transformer.cycle_without_start")
            cycle = self._open_cycle(row)
        self._held.put(cycle, row["id"], events)

    def _commit_control(self, row: Entry, kind: str) -> None:
        if kind == "SC":
            self._open_cycle(row)
            return
        self._release_checks(row)
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

    def _close_cycle(self, row: Entry, cycle: str) -> list[Event]:
        """Delete the cycle's held rows and its open marker; return its events."""
        held = self._held.take(cycle)  # in raw id order
        self._held.take(self._open_key(row))
        events: list[Event] = []
        for _, change in held:
            events.extend(change)
        return events

    def _skipped_row(self, row: Entry) -> None:
        """The miner skipped a row change of cycle ``commit_cycle`` here: its
        table is checked again when the cycle ends, and a before image held
        for it (the UB of a skipped UP: same object, RRN and job) is dropped,
        as no UP will ever take it."""
        self._check_after(
            row["journal"], row["commit_cycle"], row, self._mark_tables(row)
        )
        slot = f"before:{row['object']}|{row['rrn']}|{row['job']}"
        if row["object"] and self._held.take(slot):
            self._count("transformer.unpaired_before")

    def _mark_tables(self, row: Entry) -> list[str]:
        """The relayed table a ``SKIP_ROW_MARK`` names (every one when blank)."""
        library, table = _object_names(row)
        if not table:
            return sorted(self._tables)
        return [table] if library == self._library and table in self._tables else []

    def _check_after(
        self, journal: str, cycle: int, row: Entry, tables: list[str]
    ) -> None:
        """Check ``tables`` again when cycle ``cycle`` ends (CM or RB).

        A skip's checks may read the source while a cycle it touched is
        still open there; read again once it ended, they see how it ended.
        Kept in ``held_changes`` (key ``check_after:<journal>:<cycle>``).
        """
        if tables:
            value = {"tables": tables, "position": _position(row)}
            self._held.put(f"check_after:{journal}:{cycle}", row["id"], value)

    def _release_checks(self, row: Entry) -> None:
        """The cycle of this C CM or RB ended: queue the checks waiting for it."""
        key = f"check_after:{row['journal']}:{row['commit_cycle']}"
        for _, value in self._held.take(key):
            for table in value["tables"]:
                origin = f"transformer cycle_end {value['position']} {table}"
                checks.queue(self.conn, table, "skipped_entry", origin)
            self._count("transformer.checks_after_cycle")

    def _cut_skipped(self, row: Entry) -> None:
        """An operator skipped a commit boundary here (``SKIP_MARK``).

        The cycle it may have ended (the mark's ``commit_cycle``) can never
        end: what it holds is parked, and the checks the skip queued set
        those rows from the source (held keys would be taken as in flight).
        Cycle 0, unknown: every open cycle is cut, as after a data gap.
        """
        if not row["commit_cycle"]:
            # The open cycles but the one it ended end later at the source:
            # their tables are checked again then. The one it ended is its
            # job's (a job has one open cycle at a time); a job that does not
            # read leaves it unknown, and every cycle is waited for.
            for journal, number, job in self._open_cycles():
                if not row["job"].strip("/") or job != row["job"]:
                    self._check_after(journal, number, row, sorted(self._tables))
            self._cut_cycles(
                row,
                "commit cycle cut: an entry of unknown cycle, maybe its end,"
                " was skipped by an operator",
                "transformer.cycles_cut_by_skip",
            )
            return
        cycle = self._cycle_of(row)
        if cycle is None:
            return  # nothing held: the cycle ended or never started here
        events = self._close_cycle(row, cycle)
        self._park_events(
            row,
            events,
            f"commit cycle {row['commit_cycle']} cut: its boundary was skipped"
            " by an operator",
            "the guardian's repair check of the table (asked with the skip)",
        )
        self._count("transformer.cycles_cut_by_skip")
        logger.warning(
            "skipped commit boundary, its cycle dropped stage=%s position=%s"
            " cycle=%s count=%d",
            STAGE,
            _position(row),
            row["commit_cycle"],
            len(events),
        )

    def _open_cycles(self) -> list[tuple[str, int, str]]:
        """(journal, cycle number, job of its first entry) of every open cycle."""
        self._held.write_back()
        found = []
        for key, job in self.conn.execute(
            "SELECT h.cycle_key, coalesce(r.job, '') FROM held_changes h"
            " LEFT JOIN raw_entries r ON r.id = h.raw_id"
            " WHERE h.cycle_key LIKE 'open:%'"
        ):
            journal, _, cycle = str(key).removeprefix("open:").rpartition(":")
            found.append((journal, int(cycle), str(job)))
        return sorted(found)

    def _cut_cycles(
        self,
        row: Entry,
        reason: str = "commit cycle cut by a data gap: its end was lost",
        counter: str = "transformer.cycles_cut_by_gap",
    ) -> None:
        """A data gap (or a skip of an entry of unknown cycle) was passed over:
        held cycles lost their end or changes.

        Parked (the repair checks asked with the gap or skip set those rows
        right).
        """
        self._held.write_back()  # the pattern deletes below see the table itself
        held = self.conn.execute(
            "DELETE FROM held_changes WHERE cycle_key LIKE 'cycle:%'"
            " RETURNING raw_id, change, cycle_key"
        ).fetchall()
        self.conn.execute(
            "DELETE FROM held_changes WHERE cycle_key LIKE 'open:%'"
            " OR cycle_key LIKE 'before:%'"
        )
        # In raw id order (rows, not tuples: sorted() cannot compare them).
        in_order = sorted(held, key=lambda row: int(row[0]))
        events = [e for row in in_order for e in json.loads(row[1])]
        self._park_events(
            row,
            events,
            reason,
            "the guardian's repair check of the table (asked)",
        )
        self._count(counter, len({row[2] for row in held}))
        logger.warning(
            "open cycles dropped stage=%s position=%s count=%d reason=%s",
            STAGE,
            _position(row),
            len(events),
            reason,
        )

    def _park_events(
        self, row: Entry, events: list[Any], reason: str, expected: str
    ) -> None:
        """Park held events of a cycle that cannot end (at ``row``)."""
        for event in events:
            store.park(
                self.conn,
                stage=STAGE,
                reason=reason,
                table=event["table"],
                position=_position(row),
                expected=expected,
                raw_id=event["raw_id"],
                payload=event,
            )

    def _abandon(self, row: Entry, cycle: str) -> None:
        """A cycle number reopened while still open: park what it held."""
        # Parked as read back from the table, keys sorted: the same payload text.
        events = json.loads(canonical(self._close_cycle(row, cycle)))
        self._park_events(
            row,
            events,
            "commit cycle reopened before its CM or RB",
            "C CM or C RB before the next C SC of the same cycle",
        )
        logger.warning(
            "open commit cycle abandoned stage=%s position=%s count=%d",
            STAGE,
            _position(row),
            len(events),
        )
