"""The decoder of the layout version in force at a journal entry (brief §4.5).

:class:`DecoderVersions` sits between the transformer and
:class:`appliance.layouts.LayoutHistory`: it reads the catalog when a table
has no version yet or a ``D CG`` left a placeholder, compiles each version
once, and refuses an image whose length is not that of its version.

Which version an entry gets, worked through (raw ids are journal order):

    raw 10 PT  first sight: catalog read, version since 0   -> v1 (20 bytes)
    raw 11 PT  in force: since 0 <= 11                       -> v1
    raw 12 D CG                                              -> placeholder since 12
    raw 13 PT  in force: the placeholder, catalog read again -> v2 (22 bytes)

After a restart at raw 11 (v1 and the placeholder are in ``meta``) the same
choices are made. If the first catalog read happens at raw 11 while the
``D CG`` at 12 is still unprocessed, the layout read is filed "since 12";
raw 11 then has only a newer version: decoded when its length fits that
version, else parked as "older than every known layout version".

Invariants: an image is decoded only with a version whose record length is
its length; a catalog failure (SourceError) propagates so the batch is
retried; a layout the decoder cannot compile is remembered as a DecodeError
and parks every entry that needs it, until the next ``D CG``.

The version in force is looked up in full only when an entry falls outside
the raw id range of the last version found for its table, ``[since, since of
the next version)``: that range holds while the table's versions do not
change, so every ``D CG``/``D CT``, catalog read and :meth:`forget` empties
the remembered ranges.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Protocol

from appliance import layouts
from appliance.changesource import Entry
from appliance.decoder import RecordDecoder, compile_layout
from appliance.errors import DecodeError
from appliance.readphase import ReadPhase

logger = logging.getLogger(__name__)


class CatalogReader(Protocol):
    """Where table layouts come from (the IBM i catalog, or a test's dict)."""

    def load_layout(self, library: str, table: str) -> layouts.Layout: ...


class DecoderVersions:
    """Compiled decoders per (table, version); see the module docstring."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        catalog: CatalogReader,
        overrides: Mapping[str, int],
    ) -> None:
        self.conn = conn
        self.catalog = catalog
        self.overrides = dict(overrides)
        self.history = layouts.LayoutHistory(conn)
        self.phase: ReadPhase | None = None  # the leg's, when it has one
        self._compiled: dict[tuple[str, int], RecordDecoder | DecodeError] = {}
        # Per table: (first raw id, first raw id past, version, its decoder).
        self._ranges: dict[
            str, tuple[int, float, layouts.LayoutVersion, RecordDecoder]
        ] = {}

    def forget(self) -> None:
        """After a rolled-back transaction: re-read versions, recompile."""
        self.history.forget()
        self._compiled.clear()
        self._ranges.clear()

    def changed(self, row: Entry, name: str, position: str) -> None:
        """A ``D CG``/``D CT`` of ``name``: a new version starts at this entry."""
        self._ranges.clear()
        self.history.add(name, row["id"], position, None)

    def decoder(
        self, row: Entry, library: str, table: str, position: str
    ) -> RecordDecoder:
        """The decoder of the version in force at ``row`` (DecodeError: park it)."""
        name, raw_id = f"{library}/{table}", row["id"]
        known_range = self._ranges.get(name)
        if known_range is not None and known_range[0] <= raw_id < known_range[1]:
            self._check_length(row, known_range[3], known_range[2], position)
            return known_range[3]
        version = self.history.in_force(name, raw_id)
        if version is None:
            known = self.history.versions(name)
            version = known[0] if known else None
        if version is None or version.layout is None:
            version = self._load(row, name, version)
        found = self._compiled.get((name, version.since))
        if found is None:
            found = self._compile(name, version)
            self._compiled[(name, version.since)] = found
        if isinstance(found, DecodeError):
            raise found
        if version.since <= raw_id:
            self._remember(name, version, found)
        self._check_length(row, found, version, position)
        return found

    def _remember(
        self, name: str, version: layouts.LayoutVersion, decoder: RecordDecoder
    ) -> None:
        """File the raw id range in which ``version`` is the one in force."""
        later = [
            v.since for v in self.history.versions(name) if v.since > version.since
        ]
        past = min(later) if later else float("inf")
        self._ranges[name] = (version.since, past, version, decoder)

    def _compile(
        self, name: str, version: layouts.LayoutVersion
    ) -> RecordDecoder | DecodeError:
        try:
            if version.layout is None:  # _load fills it; kept for the types
                raise DecodeError("layout version not loaded", table=name)
            return compile_layout(version.layout, self.overrides)
        except DecodeError as exc:
            return exc

    def _load(
        self,
        row: Entry,
        name: str,
        placeholder: layouts.LayoutVersion | None,
    ) -> layouts.LayoutVersion:
        """Read the catalog's layout and file it as a version."""
        library, table = name.split("/", 1)
        if placeholder is not None:
            since, position = placeholder.since, placeholder.position
        else:
            since, position = self._pending_change(row)
        if self.phase is not None:  # a read phase gives up before the catalog
            self.phase.need_lock(f"catalog read of {name}")
        layout = self.catalog.load_layout(library, table)
        self._ranges.clear()
        return self.history.add(name, since, position, layout)

    def _pending_change(self, row: Entry) -> tuple[int, str]:
        """(raw id, position) of the last unprocessed D CG/CT of the table, or 0.

        The catalog shows the layout after every ALTER already journaled, so
        when one is still ahead of this entry, that is where the layout read
        now starts.
        """
        found = self.conn.execute(
            "SELECT id, receiver_name, sequence FROM raw_entries"
            " WHERE id > ? AND code = 'D' AND entry_type IN ('CG', 'CT')"
            " AND substr(object, 1, 20) = ? ORDER BY id DESC LIMIT 1",
            (row["id"], str(row["object"] or "").ljust(30)[:20]),
        ).fetchone()
        if found is None:
            return 0, ""
        return int(found[0]), f"{found[1]}:{found[2]}"

    @staticmethod
    def _check_length(
        row: Entry,
        decoder: RecordDecoder,
        version: layouts.LayoutVersion,
        position: str,
    ) -> None:
        """Refuse a record image whose length is not that of its version."""
        if row["code"] != "R":
            return
        data = bytes(row["data"] or b"")
        got, want = len(data), decoder.layout.record_length
        if got == want:
            return
        since = version.position or "the first layout read"
        if version.since > row["id"]:
            reason = "image older than every known layout version of the table"
        else:
            reason = "image length does not match its layout version"
        cut = decoder.length_error(data, position)
        raise DecodeError(
            reason,
            table=decoder.table,
            position=position,
            field=cut.field,
            offset=cut.offset,
            data=cut.data,
            expected=f"{want} bytes, got {got} (layout in force since {since})",
        )
