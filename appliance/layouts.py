"""Table layouts: where each field sits in a journal record image.

A :class:`Layout` is read from the catalog (``QSYS2.SYSCOLUMNS2`` for the
columns, ``QSYS2.SYSKEYCST`` for the primary key) and gives every column its
byte offset and buffer length. There is no offset column in the catalog: the
image is the record format buffer, fields back to back in ordinal order with
no padding, so offsets are running sums of the buffer lengths (domain brief
§4.1, §4.2):

    CHAR(n) n        VARCHAR(n) 2+n     GRAPHIC(n) 2n      VARG(n) 2+2n
    DECIMAL(p) p//2+1  NUMERIC(p) p     SMALLINT 2  INTEGER 4  BIGINT 8
    DATE 10 (*ISO *EUR *USA *JIS), 8 (*MDY *DMY *YMD), 6 (*JUL)
    TIME 8           TIMESTAMP(p) 19 + (p+1 if p > 0)

Invariants:

- ``Layout.record_length`` is the sum of the buffer lengths; a record image
  of any other length is never decoded (the decoder refuses it).
- When the catalog gives ``STORAGE`` for a column it must equal the computed
  buffer length, else :class:`DecodeError` names the column: a wrong offset
  would shift every later field, so no guess is made.
- A NULL date or time separator means the format's default, never "none".

Hidden columns (``HIDDEN`` P or I) are physical fields: they are in the
image, decoded like any other, and flagged (``Column.hidden``).

Layout versions (§4.5): the catalog only shows the layout in force *now*, so
:class:`LayoutHistory` keeps every version the transformer has loaded, keyed
by the raw-entry id (journal order) from which it is in force, persisted in
the pipeline database's ``meta`` table (``layout.<LIB>/<FILE>.<since>``). A
``D CG``/``D CT`` at raw id ``c`` adds a placeholder "new version from
``c``, not loaded yet"; the next record entry after ``c`` reads the catalog
and fills it. An entry is decoded with the version whose ``since`` is the
largest not after its own id, so entries before an ALTER keep the old layout
even across a restart. When the catalog is read while a ``D CG`` for the
table is still unprocessed, the layout it shows starts at that ``D CG``, and
an older entry with no known version is parked unless its length fits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import DecodeError

logger = logging.getLogger(__name__)

COLUMNS_SQL = (
    "SELECT table_schema, table_name, column_name, system_column_name,"
    " ordinal_position, data_type, length, numeric_scale, ccsid, is_nullable,"
    " storage, date_format, date_separator, time_format, time_separator, hidden"
    " FROM qsys2.syscolumns2"
    " WHERE system_table_schema = ? AND system_table_name = ?"
    " ORDER BY ordinal_position"
)
KEYS_SQL = (
    "SELECT column_name, ordinal_position FROM qsys2.syskeycst"
    " WHERE table_schema = ? AND table_name = ?"
    " ORDER BY ordinal_position"
)

# Spellings met in catalogs and DDL, mapped to SYSCOLUMNS2's DATA_TYPE.
_TYPE_ALIASES = {
    "CHARACTER": "CHAR",
    "NCHAR": "GRAPHIC",
    "VARGRAPHIC": "VARG",
    "NVARCHAR": "VARG",
    "TIMESTAMP": "TIMESTMP",
    "INT": "INTEGER",
    "DEC": "DECIMAL",
    "VARBINARY": "VARBIN",
    "REAL": "FLOAT",
    "DOUBLE": "FLOAT",
}
_FIXED = {"SMALLINT": 2, "INTEGER": 4, "BIGINT": 8, "TIME": 8}
DATE_SIZES = {
    "ISO": 10,
    "JIS": 10,
    "EUR": 10,
    "USA": 10,
    "MDY": 8,
    "DMY": 8,
    "YMD": 8,
    "JUL": 6,
}
TIME_FORMATS = ("ISO", "JIS", "EUR", "USA", "HMS")


@dataclass(frozen=True, slots=True)
class Column:
    """One field of a record format, as the catalog describes it.

    ``length`` is the catalog LENGTH: characters for CHAR/VARCHAR/GRAPHIC,
    the precision for DECIMAL/NUMERIC. ``offset`` (0-based) and ``size`` are
    filled in by :func:`make_layout`.
    """

    name: str
    data_type: str
    length: int = 0
    scale: int | None = None
    ccsid: int | None = None
    nullable: bool = False
    system_name: str = ""
    date_format: str = "ISO"
    date_separator: str = ""
    time_format: str = "ISO"
    time_separator: str = ""
    storage: int | None = None
    hidden: bool = False
    offset: int = 0
    size: int = 0

    @property
    def timestamp_precision(self) -> int:
        """Fractional digits of a TIMESTAMP column (6 when the catalog is silent)."""
        if 19 <= self.length <= 32:
            return 0 if self.length == 19 else self.length - 20
        if self.scale is not None and 0 <= self.scale <= 12:
            return self.scale
        return 6


@dataclass(frozen=True, slots=True)
class Layout:
    """The record format of one table: columns with offsets, and its key."""

    library: str
    table: str
    sql_schema: str
    sql_name: str
    columns: tuple[Column, ...]
    keys: tuple[str, ...]
    record_length: int

    def column(self, name: str) -> Column:
        """The column called ``name`` (SQL or system name)."""
        for column in self.columns:
            if name in (column.name, column.system_name):
                return column
        raise KeyError(name)


def normalise_type(data_type: str) -> str:
    """DATA_TYPE spelled as SYSCOLUMNS2 spells it ('TIMESTAMP' -> 'TIMESTMP')."""
    upper = data_type.strip().upper()
    return _TYPE_ALIASES.get(upper, upper)


def normalise_format(value: Any, default: str) -> str:
    """'*EUR', 'eur ', None -> 'EUR' / the default."""
    if value is None:
        return default
    text = str(value).strip().upper().lstrip("*")
    return text or default


def buffer_length(column: Column) -> int:
    """Bytes of ``column`` in the record image (domain brief §4.2 and §4.3)."""
    kind = column.data_type
    if kind in ("CHAR", "BINARY"):
        return column.length
    if kind in ("VARCHAR", "VARBIN"):
        return 2 + column.length
    if kind == "GRAPHIC":
        return 2 * column.length
    if kind == "VARG":
        return 2 + 2 * column.length
    if kind == "DECIMAL":
        return column.length // 2 + 1
    if kind == "NUMERIC":
        return column.length
    if kind in _FIXED:
        return _FIXED[kind]
    if kind == "FLOAT":
        return 4 if column.length == 4 else 8
    if kind == "DATE":
        return _date_size(column)
    if kind == "TIMESTMP":
        precision = column.timestamp_precision
        return 19 + (precision + 1 if precision > 0 else 0)
    raise _layout_error(column, f"unsupported data type {kind}", "a decodable type")


def _date_size(column: Column) -> int:
    size = DATE_SIZES.get(column.date_format)
    if size is None:
        raise _layout_error(
            column,
            f"unknown date format {column.date_format}",
            "one of " + " ".join(DATE_SIZES),
        )
    return size


def _layout_error(column: Column, reason: str, expected: str) -> DecodeError:
    return DecodeError(reason, field=column.name, expected=expected)


def make_layout(
    library: str,
    table: str,
    columns: Iterable[Column],
    keys: Sequence[str] = (),
    *,
    sql_schema: str = "",
    sql_name: str = "",
) -> Layout:
    """A layout with offsets computed; checks STORAGE where the catalog gives it."""
    placed: list[Column] = []
    offset = 0
    for given in columns:
        column = dataclasses.replace(
            given,
            data_type=normalise_type(given.data_type),
            system_name=given.system_name or given.name,
        )
        size = buffer_length(column)
        if column.storage is not None and column.storage != size:
            raise DecodeError(
                "catalog storage differs from computed buffer length",
                table=f"{library}/{table}",
                field=column.name,
                offset=offset,
                expected=f"storage {size} for {column.data_type}({column.length})",
            )
        placed.append(dataclasses.replace(column, offset=offset, size=size))
        offset += size
    return Layout(
        library=library,
        table=table,
        sql_schema=sql_schema or library,
        sql_name=sql_name or table,
        columns=tuple(placed),
        keys=tuple(keys),
        record_length=offset,
    )


def load_layout(cursor: Any, library: str, table: str) -> Layout:
    """Read the layout of ``library/table`` (system names) from the catalog.

    ``cursor`` is a DB-API cursor on the source (pyodbc, ``?`` markers).
    Raises DecodeError when the catalog describes no columns or a column that
    cannot be decoded; driver errors propagate for the caller to translate.
    """
    library, table = library.strip().upper(), table.strip().upper()
    cursor.execute(COLUMNS_SQL, (library, table))
    rows = cursor.fetchall()
    if not rows:
        raise DecodeError(
            "table not found in catalog",
            table=f"{library}/{table}",
            expected="rows in QSYS2.SYSCOLUMNS2",
        )
    sql_schema, sql_name = _text(rows[0][0]), _text(rows[0][1])
    columns = [_column_from_row(row) for row in rows]
    cursor.execute(KEYS_SQL, (sql_schema, sql_name))
    keys = [_text(row[0]) for row in cursor.fetchall()]
    layout = make_layout(
        library, table, columns, keys, sql_schema=sql_schema, sql_name=sql_name
    )
    logger.info(
        "layout loaded stage=transformer table=%s count=%d record_length=%d",
        sql_name,
        len(layout.columns),
        layout.record_length,
    )
    return layout


def _column_from_row(row: Sequence[Any]) -> Column:
    return Column(
        name=_text(row[2]),
        system_name=_text(row[3]),
        data_type=normalise_type(_text(row[5])),
        length=int(row[6] or 0),
        scale=None if row[7] is None else int(row[7]),
        ccsid=None if row[8] is None else int(row[8]),
        nullable=_text(row[9]).upper() in ("Y", "YES"),
        storage=None if row[10] is None else int(row[10]),
        date_format=normalise_format(row[11], "ISO"),
        date_separator=_separator(row[12]),
        time_format=normalise_format(row[13], "ISO"),
        time_separator=_separator(row[14]),
        # SYSCOLUMNS2.HIDDEN: N, P (partially) or I (implicitly hidden).
        hidden=len(row) > 15 and _text(row[15]).upper() in ("P", "I"),
    )


def _separator(value: Any) -> str:
    """A catalog separator; '' (the format default) when NULL or empty."""
    if value is None:
        return ""
    text = str(value)
    return text[:1]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def layout_to_json(layout: Layout) -> str:
    """A layout as JSON text (for the ``meta`` table)."""
    return json.dumps(dataclasses.asdict(layout), separators=(",", ":"))


def layout_from_json(text: str) -> Layout:
    """The inverse of :func:`layout_to_json`."""
    data = json.loads(text)
    columns = tuple(Column(**column) for column in data.pop("columns"))
    data["keys"] = tuple(data["keys"])
    return Layout(columns=columns, **data)


@dataclass(frozen=True, slots=True)
class LayoutVersion:
    """A layout in force from raw entry ``since`` (0: before anything seen).

    ``layout`` is None for a placeholder: a ``D CG`` was met at ``since`` and
    the catalog has not been read after it yet.
    """

    since: int
    position: str
    layout: Layout | None


class LayoutHistory:
    """Every known layout version of the relayed tables, keyed by position.

    ``conn`` is the pipeline database; versions are written to its ``meta``
    table inside the caller's transaction, so a rolled-back step forgets
    them with everything else (call :meth:`forget` then).
    """

    PREFIX = "layout."

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._tables: dict[str, list[LayoutVersion]] | None = None

    def _all(self) -> dict[str, list[LayoutVersion]]:
        if self._tables is None:
            tables: dict[str, list[LayoutVersion]] = {}
            rows = self._conn.execute(
                "SELECT key, value FROM meta WHERE key LIKE 'layout.%' ORDER BY key"
            ).fetchall()
            for key, value in rows:
                name, _, since = str(key)[len(self.PREFIX) :].rpartition(".")
                record = json.loads(value)
                layout = record["layout"]
                tables.setdefault(name, []).append(
                    LayoutVersion(
                        since=int(since),
                        position=record["position"],
                        layout=None if layout is None else layout_from_json(layout),
                    )
                )
            self._tables = tables
        return self._tables

    def forget(self) -> None:
        """Drop the in-memory copy (after a rolled-back transaction)."""
        self._tables = None

    def versions(self, table: str) -> list[LayoutVersion]:
        """Versions of ``table`` ('LIB/FILE'), oldest first."""
        return sorted(self._all().get(table, []), key=lambda v: v.since)

    def add(
        self, table: str, since: int, position: str, layout: Layout | None
    ) -> LayoutVersion:
        """Record a version (or a placeholder) in force from raw id ``since``."""
        version = LayoutVersion(since, position, layout)
        text = json.dumps(
            {
                "position": position,
                "layout": None if layout is None else layout_to_json(layout),
            }
        )
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (f"{self.PREFIX}{table}.{since:012d}", text),
        )
        kept = [v for v in self._all().get(table, []) if v.since != since]
        self._all()[table] = [*kept, version]
        return version

    def in_force(self, table: str, raw_id: int) -> LayoutVersion | None:
        """The version in force at ``raw_id``: the latest whose since <= raw_id."""
        found = None
        for version in self.versions(table):
            if version.since <= raw_id:
                found = version
        return found
