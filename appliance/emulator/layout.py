"""Column definitions of emulated DB2 for i tables, and their JSON values.

A :class:`Column` is one field of a physical file's record format. It knows
its catalog spelling (``QSYS2.SYSCOLUMNS2``), its PostgreSQL twin in schema
``mag``, its size in the journal record image, and how a value of it is
written in JSON (contracts §2).

Invariants:

- names are system names: 1-10 characters, upper case, ``A-Z 0-9 _ # @ $``,
  starting with a letter, so SQL name == system name;
- the record image of a table is the concatenation of every column's
  ``storage`` bytes in ordinal order, with no padding;
- ``json_value`` is the one normalisation used by the emulator's expected
  rows: CHAR loses trailing blanks, DECIMAL/NUMERIC become strings with
  exactly ``scale`` decimals, dates and times ISO, NULL stays None.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from appliance.errors import SourceError

NAME = re.compile(r"^[A-Z][A-Z0-9_#@$]{0,9}$")
TYPES = (
    "CHAR",
    "VARCHAR",
    "DECIMAL",
    "NUMERIC",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "DATE",
    "TIME",
    "TIMESTAMP",
)
FIXED_SIZE = {"SMALLINT": 2, "INTEGER": 4, "BIGINT": 8, "DATE": 10, "TIME": 8}
FIXED_SIZE["TIMESTAMP"] = 26
CATALOG_TYPE = {"TIMESTAMP": "TIMESTMP"}
INT_DIGITS = {"SMALLINT": 5, "INTEGER": 10, "BIGINT": 19}


def check_name(name: str, what: str) -> str:
    """``name`` upper-cased, or SourceError when it is no valid system name."""
    upper = name.upper()
    if not NAME.match(upper):
        raise SourceError(
            f"invalid {what} name {name[:20]!r}: expected 1-10 chars A-Z 0-9 _ # @ $"
        )
    return upper


@dataclass(frozen=True)
class Column:
    """One field of a record format.

    ``length`` is the character length for CHAR/VARCHAR and the precision
    for DECIMAL/NUMERIC; it is ignored for the other types.
    """

    name: str
    type: str
    length: int = 0
    scale: int = 0
    ccsid: int = 1147
    nullable: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_name(self.name, "column"))
        object.__setattr__(self, "type", self.type.upper())
        if self.type not in TYPES:
            raise SourceError(
                f"column {self.name}: unsupported type {self.type!r}, "
                f"expected one of {', '.join(TYPES)}"
            )
        self._check_size()

    def _check_size(self) -> None:
        if self.type in ("CHAR", "VARCHAR") and not 1 <= self.length <= 32740:
            raise SourceError(
                f"column {self.name}: length {self.length} out of 1..32740"
            )
        if self.type in ("DECIMAL", "NUMERIC") and not (
            1 <= self.length <= 63 and 0 <= self.scale <= self.length
        ):
            raise SourceError(
                f"column {self.name}: precision {self.length} scale {self.scale} "
                "invalid, expected 1 <= scale+1 <= precision <= 63"
            )

    @property
    def catalog_type(self) -> str:
        """DATA_TYPE as QSYS2.SYSCOLUMNS2 spells it."""
        return CATALOG_TYPE.get(self.type, self.type)

    @property
    def storage(self) -> int:
        """Bytes of this field in the record image."""
        if self.type == "CHAR":
            return self.length
        if self.type == "VARCHAR":
            return 2 + self.length
        if self.type == "DECIMAL":
            return self.length // 2 + 1
        if self.type == "NUMERIC":
            return self.length
        return FIXED_SIZE[self.type]

    @property
    def catalog_length(self) -> int:
        """LENGTH in the catalog: chars, precision, or the buffer size."""
        if self.type in ("CHAR", "VARCHAR", "DECIMAL", "NUMERIC"):
            return self.length
        return self.storage

    @property
    def text_ccsid(self) -> int | None:
        """CCSID shown in the catalog (None for numeric types)."""
        if self.type in ("CHAR", "VARCHAR"):
            return self.ccsid
        if self.type in ("DATE", "TIME", "TIMESTAMP"):
            return 37 if self.ccsid == 65535 else self.ccsid
        return None

    @property
    def pg_name(self) -> str:
        """Column name in the PostgreSQL data table (lower case)."""
        return self.name.lower()

    def pg_type(self) -> str:
        """PostgreSQL type of the data-table column."""
        if self.type in ("CHAR", "VARCHAR"):
            return f"{self.type.lower()}({self.length})"
        if self.type in ("DECIMAL", "NUMERIC"):
            return f"numeric({self.length},{self.scale})"
        if self.type == "TIME":
            return "time(0)"
        if self.type == "TIMESTAMP":
            return "timestamp(6)"
        return self.type.lower()

    def json_value(self, value: Any) -> Any:
        """The value as contracts §2 writes it in JSON."""
        if value is None:
            return None
        if self.type == "CHAR":
            return str(value).rstrip(" ")
        if self.type == "VARCHAR":
            return str(value)
        if self.type in ("DECIMAL", "NUMERIC"):
            return decimal_text(Decimal(value), self.scale)
        if self.type in INT_DIGITS:
            return int(value)
        if self.type == "DATE":
            return _as_date(value).isoformat()
        if self.type == "TIME":
            return _as_time(value).strftime("%H:%M:%S")
        return _as_timestamp(value).isoformat(timespec="microseconds")


def decimal_text(value: Decimal, scale: int) -> str:
    """``value`` with exactly ``scale`` decimals; ``-0`` is written ``0``."""
    exact = value.quantize(Decimal(1).scaleb(-scale))
    if exact == 0:
        exact = abs(exact)
    return f"{exact:f}"


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _as_time(value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    return dt.time.fromisoformat(str(value))


def _as_timestamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
