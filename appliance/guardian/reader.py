"""Read a relayed table through the ODBC boundary, as the relay ships its rows.

The reader uses the miner's connection code (:mod:`appliance.source`) and the
catalog layout the transformer decodes with (:mod:`appliance.layouts`), and
turns every value into exactly the JSON value the decoder gives for the same
field (contracts.md "Values in JSON"): CHAR without trailing blanks, DECIMAL
as text with ``scale`` decimals, dates and times formatted, binary as
upper-case hex, REAL as the shortest decimal of its float32. Hidden columns
are named in the select list, so they are read as the journal images have
them. A text holding U+0000 is null, as the decoder makes it
(:func:`appliance.odbcvalues.json_value`): otherwise every check would find
the row different and every repair would send a value the hub parks. A row
whose key holds U+0000 is left out of the pages (counted in
:attr:`TableReader.unkeyed`): its changes are parked by the transformer, so
the hub never has it, and with a null key several such rows would be one.

A table is read by keyset pagination on its primary key: each query takes
the next ``chunk`` rows after the last key seen, so a read never holds a
cursor open between two steps and never skips or repeats a row that did not
change. Key parameters are cast to the column's type, so CHAR padding and
numeric types compare as the database orders them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyodbc

from appliance import journal, layouts, source
from appliance.config import IbmiSection
from appliance.decoder import RecordDecoder
from appliance.decoding.numbers import floating
from appliance.decoding.text import HEX_CCSID
from appliance.errors import SourceError
from appliance.layouts import Column, Layout
from appliance.odbcvalues import json_value

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Z_#@$][A-Z0-9_#@$]{0,127}$")
_REAL = floating(4)
QUERY_TIMEOUT_S = 120  # the miner's; systemd's watchdog outlasts it
Row = dict[str, Any]


@dataclass(frozen=True)
class Head:
    """The journal's head: the attached receiver and its last sequence."""

    library: str
    name: str
    sequence: int
    attach_ts: str

    def position(self) -> str:
        return f"{self.library}/{self.name}:{self.sequence}"


def _ident(name: str) -> str:
    """A catalog name fit for SQL unquoted (so both dialects fold it alike)."""
    if not _NAME.match(name):
        raise SourceError(f"name {name[:40]!r} is not a plain SQL identifier")
    return name


def sql_type(column: Column) -> str:
    """The column's type spelled for a CAST of a key parameter."""
    kind, length, scale = column.data_type, column.length, column.scale or 0
    if kind in ("CHAR", "VARCHAR", "GRAPHIC", "VARG"):
        spelled = {"GRAPHIC": "CHAR", "VARG": "VARCHAR"}.get(kind, kind)
        return f"{spelled}({length})"
    if kind in ("DECIMAL", "NUMERIC"):
        return f"{kind}({length},{scale})"
    if kind == "TIMESTMP":
        return "TIMESTAMP"
    if kind == "FLOAT":
        return "DOUBLE PRECISION"
    return kind


class TableReader:
    """Reads one table of the store (see the module docstring)."""

    def __init__(self, ibmi: IbmiSection, layout: Layout) -> None:
        if not layout.keys:
            raise SourceError(f"table {layout.sql_name}: no primary key in catalog")
        self.ibmi = ibmi
        self.layout = layout
        self.table = layout.sql_name
        self.columns = layout.columns
        self.keys = tuple(layout.column(name) for name in layout.keys)
        self._hex = {
            c.name
            for c in layout.columns
            if c.data_type in ("CHAR", "VARCHAR") and c.ccsid == HEX_CCSID
        }
        # Rows of the last page left out: their key holds U+0000 (module doc);
        # ``unkeyed_first`` is the first one's key as fetched.
        self.unkeyed = 0
        self.unkeyed_first: list[Any] = []
        names = ", ".join(_ident(c.name) for c in self.columns)
        origin = f"{_ident(layout.sql_schema)}.{_ident(layout.sql_name)}"
        self._select = f"SELECT {names} FROM {origin}"
        self._order = " ORDER BY " + ", ".join(_ident(c.name) for c in self.keys)
        self._after = self._after_clause()
        self.object_name = f"{layout.table:<10}{layout.library:<10}"
        self._decoder: RecordDecoder | None = None
        self._point = " WHERE " + " AND ".join(
            f"{_ident(c.name)} = CAST(? AS {sql_type(c)})" for c in self.keys
        )

    def _after_clause(self) -> str:
        """``(k1, k2) > (?, ?)`` spelled out, which every dialect accepts.

        The leading ``k1 >= ?`` lets the optimizer start an index range scan
        at the last key instead of testing every row against the OR.
        """
        terms = []
        for i, column in enumerate(self.keys):
            equal = [
                f"{_ident(c.name)} = CAST(? AS {sql_type(c)})" for c in self.keys[:i]
            ]
            greater = f"{_ident(column.name)} > CAST(? AS {sql_type(column)})"
            terms.append("(" + " AND ".join([*equal, greater]) + ")")
        first = self.keys[0]
        start = f"{_ident(first.name)} >= CAST(? AS {sql_type(first)})"
        return f" WHERE {start} AND (" + " OR ".join(terms) + ")"

    def after_params(self, last: Sequence[Any]) -> list[Any]:
        params: list[Any] = [last[0]]
        for i in range(len(self.keys)):
            params.extend(last[: i + 1])
        return params

    def chunk(
        self, src: Any, after: Sequence[Any] | None, rows: int
    ) -> tuple[list[Row], Sequence[Any] | None]:
        """The next ``rows`` rows after key ``after`` (raw values) and the last key."""
        limit = f" FETCH FIRST {int(rows)} ROWS ONLY"
        if after is None:
            fetched = _fetch(src, self._select + self._order + limit, [], self.table)
        else:
            sql = self._select + self._after + self._order + limit
            fetched = _fetch(src, sql, self.after_params(after), self.table)
        last = None
        positions = [self.columns.index(c) for c in self.keys]
        if fetched:
            last = [fetched[-1][i] for i in positions]
        kept: list[Row] = []
        self.unkeyed, self.unkeyed_first = 0, []
        for raw in fetched:
            row = self.to_json(raw)
            if any(row[c.name] is None for c in self.keys):
                # A key column is never NULL on the source: a refused value.
                if not self.unkeyed:
                    self.unkeyed_first = [raw[i] for i in positions]
                self.unkeyed += 1
                continue
            kept.append(row)
        return kept, last

    def by_key(self, src: Any, key: dict[str, Any]) -> Row | None:
        """The row of ``key`` (JSON values), or None when the source has none."""
        params = [_key_param(c, key[c.name]) for c in self.keys]
        fetched = _fetch(src, self._select + self._point, params, self.table)
        return self.to_json(fetched[0]) if fetched else None

    def to_json(self, row: Sequence[Any]) -> Row:
        return {
            column.name: json_value(column, value, column.name in self._hex)
            for column, value in zip(self.columns, row, strict=True)
        }

    def key_of(self, row: Row) -> dict[str, Any]:
        return {c.name: row[c.name] for c in self.keys}

    def image_key(self, image: bytes, null_map: bytes | None) -> dict[str, Any]:
        """The key of a journal record image of this table (the decoder's values)."""
        if self._decoder is None:
            self._decoder = RecordDecoder(self.layout, self.ibmi.ccsid_overrides)
        return self.key_of(self._decoder.decode_record(image, null_map).values)


def _key_param(column: Column, value: Any) -> Any:
    """A key's JSON value as a parameter of the column's type."""
    if value is None:
        return None
    kind = column.data_type
    if kind in ("DECIMAL", "NUMERIC") or (
        kind in ("SMALLINT", "INTEGER", "BIGINT") and column.scale
    ):
        return Decimal(str(value))
    if kind == "DATE":
        return dt.date.fromisoformat(str(value))
    if kind == "TIME":
        return dt.time.fromisoformat(str(value))
    if kind == "TIMESTMP":
        return dt.datetime.fromisoformat(str(value)[:26])
    return value


def _fetch(src: Any, sql: str, params: Sequence[Any], table: str) -> list[Any]:
    return source.fetch_all(src, sql, params, f"reading table={table}")


def load_layout(src: Any, ibmi: IbmiSection, table: str) -> Layout:
    """The catalog layout of ``table`` (system name) in the relayed library."""
    try:
        cursor = src.cursor()
        try:
            return layouts.load_layout(cursor, ibmi.table_library, table)
        finally:
            cursor.close()
    except pyodbc.Error as exc:
        raise source.translate(exc, f"reading the catalog table={table}") from exc


def read_head(src: Any, ibmi: IbmiSection) -> Head:
    """The journal's attached receiver and its last sequence (0 when empty)."""
    rows = _fetch(
        src,
        journal.RECEIVERS_SQL,
        (ibmi.journal_library, ibmi.journal_name),
        "journal receivers",
    )
    head = journal.attached([journal.receiver_from_row(r) for r in rows])
    if head is None:
        raise SourceError("journal has no attached receiver: cannot bracket a read")
    return Head(head.library, head.name, head.last_seq or 0, head.attach_ts or "")


def connect(ibmi: IbmiSection) -> Any:
    """The miner's ODBC connection; committed reads where the driver lets us say so."""
    conn = source.connect(ibmi, committed_reads=True)
    try:
        conn.timeout = QUERY_TIMEOUT_S
    except (AttributeError, pyodbc.Error):
        logger.debug("query timeout not supported by the driver")
    try:
        conn.set_attr(pyodbc.SQL_ATTR_TXN_ISOLATION, pyodbc.SQL_TXN_READ_COMMITTED)
    except (AttributeError, pyodbc.Error):
        logger.debug("isolation level not settable, driver default kept")
    return conn
