"""Journal rows: DISPLAY_JOURNAL rows in, ``raw_entries`` tuples out.

Pure functions and values; the miner (:mod:`appliance.miner`) does the I/O and
:mod:`appliance.journal` decides what to read.

Invariants this module guarantees to its caller:

- A window is converted whole or not at all: a row without a value the relay
  needs (a NULL sequence, code, type, entry time or receiver; a NULL object,
  RRN or commit cycle on an entry that needs one) refuses it with
  :class:`EntryError`, which names receiver, sequence (or None), window,
  column, raw value and what was expected (:func:`check_rows`). Nothing is
  guessed.
- :func:`entries_from_rows` gives, column by column, exactly the values
  :func:`entry_from_row` gives row by row (tests/test_journal_window.py).
- :func:`check_window` refuses a window the source got wrong (another
  receiver, out of order, outside the asked range).
- :func:`select` keeps every C and J entry and the R, D and F entries of the
  relayed tables, and counts the hidden internal entries it drops.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from appliance.errors import SourceError
from appliance.journal import (
    INTERNAL_TYPES,
    OBJECT_CODES,
    WINDOW_COLUMNS,
    Bookmark,
    Read,
    number,
    text,
    timestamp,
)

# -- rows to entries ------------------------------------------------------------


def entry_from_row(row: Sequence[Any], journal: str) -> dict[str, Any]:
    """A ``window_sql`` row as a ``raw_entries`` row (contracts.md §2)."""
    obj = text(row[6])
    nulls = row[16]
    if isinstance(nulls, str):
        nulls = nulls.encode("utf-8")
    data = row[17]
    return {
        "journal": journal,
        "receiver_library": text(row[14]),
        "receiver_name": text(row[15]),
        "sequence": int(row[1]),
        "code": text(row[2]),
        "entry_type": text(row[3]),
        "entry_ts": timestamp(row[0]) or "",
        "commit_cycle": number(row[5]) or 0,
        "object": obj.ljust(30) if obj else "",
        "object_type": text(row[7]),
        "rrn": number(row[4]) or 0,
        "job": row_job(row),
        "program": text(row[13]),
        "user_name": text(row[12]),
        "indicator_flag": text(row[8]),
        "null_map": None if nulls is None else bytes(nulls),
        "data": None if data is None else bytes(data),
        "mined_at": time.time(),
    }


# The ``raw_entries`` columns a mined entry fills, in the order of the tuples
# :func:`entries_from_rows` builds (contracts.md §2); ``id`` and ``state``
# are the database's.
ENTRY_FIELDS = (
    "journal",
    "receiver_library",
    "receiver_name",
    "sequence",
    "code",
    "entry_type",
    "entry_ts",
    "commit_cycle",
    "object",
    "object_type",
    "rrn",
    "job",
    "program",
    "user_name",
    "indicator_flag",
    "null_map",
    "data",
    "mined_at",
)
# Positional, in ENTRY_FIELDS order: a window (or one of the relay's marks)
# goes in as plain tuples.
INSERT_ENTRY = "INSERT INTO raw_entries ({}) VALUES ({})".format(
    ", ".join(ENTRY_FIELDS), ", ".join("?" * len(ENTRY_FIELDS))
)
RECEIVER_AT = ENTRY_FIELDS.index("receiver_name")
SEQUENCE_AT = ENTRY_FIELDS.index("sequence")
CODE_AT = ENTRY_FIELDS.index("code")
TYPE_AT = ENTRY_FIELDS.index("entry_type")
TS_AT = ENTRY_FIELDS.index("entry_ts")
OBJECT_AT = ENTRY_FIELDS.index("object")
_ISO_US = operator.methodcaller("isoformat", timespec="microseconds")
_ROW_WIDTH = len(WINDOW_COLUMNS)


class EntryError(SourceError):
    """A journal row lacks a value the relay needs to place or read the entry.

    Carries what a technician needs to find the entry on the IBM i: the
    receiver (library/name) of the window, the entry's sequence (None when
    that is the missing value: the row's place in the result says nothing,
    since NULLs sort last), the window (``after`` is its start - 1, the last
    sequence stored), the column, its raw value and what was expected.
    """

    def __init__(
        self,
        *,
        receiver: str,
        sequence: int | None,
        after: int,
        end: int | None,
        field: str,
        value: Any,
        expected: str,
    ) -> None:
        self.receiver = receiver
        self.sequence = sequence
        self.after = after
        self.end = end
        self.field = field
        self.value = "NULL" if value is None else repr(value)[:64]
        self.expected = expected
        where = "unknown" if sequence is None else str(sequence)
        window = f"{after + 1}..{'' if end is None else end}"
        super().__init__(
            f"journal entry unusable receiver={receiver} sequence={where}"
            f" window={window} last_stored={after} field={field}"
            f" value={self.value} expected={expected}"
        )


# What a row must hold: (column index, name, expected, how it is read) on
# every row, (column index, name, expected, codes) on rows of some journal
# codes. A NULL there is never guessed: a NULL sequence leaves the entry's
# position unknown; a NULL code, type or object makes a row change look like
# an entry the relay ignores; a NULL commit cycle, like a change outside
# commitment control (shipped before its commit); a NULL RRN misplaces the
# RRN map. JOB_*, PROGRAM_NAME, the user, OBJECT_TYPE, INDICATOR_FLAG,
# NULL_VALUE_INDICATORS and ENTRY_DATA may be NULL (an R entry without its
# image is parked by the transformer, with its position).
def _sequence_value(value: Any) -> int:
    if value is None or isinstance(value, bool):
        raise TypeError("no sequence")
    return int(value)


def _timestamp_value(value: Any) -> str:
    if value is None:
        raise TypeError("no timestamp")
    return timestamp(value) or ""


def _filled_text(value: Any) -> str:
    found = text(value)
    if not found:
        raise ValueError("blank")
    return found


_EVERY_ROW: tuple[tuple[int, str, str, Any], ...] = (
    (1, "SEQUENCE_NUMBER", "a whole number, DECIMAL(21,0)", _sequence_value),
    (0, "ENTRY_TIMESTAMP", "a TIMESTAMP", _timestamp_value),
    (2, "JOURNAL_CODE", "a journal code, CHAR(1)", _filled_text),
    (3, "JOURNAL_ENTRY_TYPE", "an entry type, CHAR(2)", _filled_text),
    (14, "RECEIVER_LIBRARY", "the receiver's library", _filled_text),
    (15, "RECEIVER_NAME", "the receiver's name", _filled_text),
)
_SOME_ROWS: tuple[tuple[int, str, str, frozenset[str]], ...] = (
    (6, "OBJECT", "file, library and member", OBJECT_CODES),
    (4, "COUNT_OR_RRN", "the record's RRN, DECIMAL(21,0)", frozenset({"R"})),
    (5, "COMMIT_CYCLE", "a cycle number (0: none)", frozenset({"R", "C"})),
)
_REFUSALS = (TypeError, ValueError, ArithmeticError)


def _reads(read: Any, value: Any) -> bool:
    try:
        read(value)
    except _REFUSALS:
        return False
    return True


def _all_read(column: Sequence[Any], read: Any) -> bool:
    """Every value of ``column`` reads; the usual types and distinct values first."""
    if read is _sequence_value and _only(column, Decimal, int):
        return True
    if read is _timestamp_value and _only(column, dt.datetime):
        return True
    try:
        distinct: Iterable[Any] = set(column)
    except TypeError:  # an unhashable value (bytearray): each one
        distinct = column
    return all(_reads(read, v) for v in distinct)


def check_rows(
    columns: Sequence[Sequence[Any]],
    receiver: str,
    before: int,
    end: int | None = None,
) -> None:
    """Refuse a window with a row missing a value the relay needs.

    ``columns`` are the window's values column by column; ``receiver``
    (library/name), ``before`` (the sequence before the window, the last
    one stored) and ``end`` name where it was read. A clean window costs a
    type check or a set of its distinct values per column; one that fails
    is walked to name its first bad row.
    """
    problems: list[tuple[int, str, Any, str]] = []
    for index, name, expected, read in _EVERY_ROW:
        column = columns[index]
        if not _all_read(column, read):
            row = next(r for r, v in enumerate(column) if not _reads(read, v))
            problems.append((row, name, column[row], expected))
    codes = columns[2]
    for index, name, expected, needed in _SOME_ROWS:
        column = columns[index]
        read = _filled_text if index == 6 else _sequence_value
        if _all_read(column, read):
            continue
        # Blank objects are usual (C and J entries): only those rows are
        # looked at, and only an entry of a code that needs one is refused.
        try:
            bad = {v for v in set(column) if not _reads(read, v)}
            flags: Iterable[bool] = map(bad.__contains__, column)
        except TypeError:
            flags = (not _reads(read, v) for v in column)
        for row in itertools.compress(range(len(column)), flags):
            code = text(codes[row])
            if code in needed:
                what = f"{expected} on a {code} entry"
                problems.append((row, name, column[row], what))
                break
    if not problems:
        return
    row, name, value, expected = min(problems, key=lambda p: p[0])
    own = columns[1][row]
    raise EntryError(
        receiver=receiver,
        sequence=_sequence_value(own) if _reads(_sequence_value, own) else None,
        after=before,
        end=end,
        field=name,
        value=value,
        expected=expected,
    )


def mark(
    journal: str,
    at: Bookmark,
    kind: tuple[str, str],
    *,
    commit_cycle: int = 0,
    obj: str = "",
    rrn: int = 0,
    job: str = "",
) -> tuple[Any, ...]:
    """A relay's own marker entry (``GAP_MARK``, ``SKIP_MARK``,
    ``SKIP_ROW_MARK``) at ``at``'s receiver, sequence and entry time, as a
    ``raw_entries`` tuple."""
    code, entry_type = kind
    values = {
        "journal": journal,
        "receiver_library": at.receiver_library,
        "receiver_name": at.receiver_name,
        "sequence": at.sequence,
        "code": code,
        "entry_type": entry_type,
        "entry_ts": at.entry_ts,
        "commit_cycle": commit_cycle,
        "object": obj,
        "object_type": "",
        "rrn": rrn,
        "job": job,
        "program": "",
        "user_name": "",
        "indicator_flag": "",
        "null_map": None,
        "data": None,
        "mined_at": time.time(),
    }
    return tuple(values[name] for name in ENTRY_FIELDS)


# -- a row as it came (kept whole when an operator skips it) -------------------


def row_text(row: Sequence[Any]) -> dict[str, str | None]:
    """Every column of a :func:`~appliance.journal.window_sql` row as text, as it came.

    Bytes are upper-case hex, NULL stays None, anything else is ``str``
    (no trailing blanks stripped): what a technician compares with DSPJRN.
    """
    found: dict[str, str | None] = {}
    for name, value in zip(WINDOW_COLUMNS, row, strict=False):
        if value is None:
            found[name] = None
        elif isinstance(value, bytes | bytearray | memoryview):
            found[name] = bytes(value).hex().upper()
        else:
            found[name] = str(value)
    return found


def whole(value: Any) -> int | None:
    """A DECIMAL(21,0) column's value as int, None when it does not read as one."""
    return _sequence_value(value) if _reads(_sequence_value, value) else None


def row_sequence(row: Sequence[Any]) -> int | None:
    """The row's SEQUENCE_NUMBER, None when it does not read as one."""
    return whole(row[1])


def row_job(row: Sequence[Any]) -> str:
    """The row's job as ``raw_entries.job`` writes it: NUMBER/USER/NAME."""
    return "/".join((text(row[11]), text(row[10]), text(row[9])))


def entries_from_rows(
    rows: Sequence[Sequence[Any]],
    journal: str,
    mined_at: float,
    read: Read | None = None,
) -> list[tuple[Any, ...]]:
    """A window of :func:`~appliance.journal.window_sql` rows as ``raw_entries`` tuples.

    Each tuple holds, in :data:`ENTRY_FIELDS` order, exactly the values
    :func:`entry_from_row` gives for its row (tests/test_journal_window.py
    compares the two), except ``mined_at``, one time for the whole window. The work is
    done column by column: a column whose values all have the type the
    driver normally returns is converted in one pass (``map`` over a method),
    any other column value by value through the same helpers as
    :func:`entry_from_row`, so a NULL or an odd type is handled the same.

    A row missing a value the relay needs (:func:`check_rows`) refuses the
    whole window with :class:`EntryError`, named by ``read``'s receiver and
    start when given.
    """
    if not rows:
        return []
    # Indexing each row per column is cheaper than unpacking driver rows.
    columns = [[row[i] for row in rows] for i in range(_ROW_WIDTH)]
    if read is None:
        check_rows(columns, f"{text(rows[0][14])}/{text(rows[0][15])}", 0)
    else:
        receiver = f"{read.receiver.library}/{read.receiver.name}"
        check_rows(columns, receiver, read.start - 1, read.end)
    objects = [o.ljust(30) if o else "" for o in _texts(columns[6])]
    job_parts = map(_texts, (columns[11], columns[10], columns[9]))
    jobs = map("/".join, zip(*job_parts, strict=True))
    return list(
        zip(
            itertools.repeat(journal),
            _texts(columns[14]),
            _texts(columns[15]),
            map(int, columns[1]),
            _texts(columns[2]),
            _texts(columns[3]),
            _timestamps(columns[0]),
            _numbers(columns[5]),
            objects,
            _texts(columns[7]),
            _numbers(columns[4]),
            jobs,
            _texts(columns[13]),
            _texts(columns[12]),
            _texts(columns[8]),
            _null_maps(columns[16]),
            _blobs(columns[17]),
            itertools.repeat(mined_at),
            strict=False,
        )
    )


def _only(column: Sequence[Any], *kinds: type) -> bool:
    """Every value of ``column`` has exactly one of ``kinds`` for its type."""
    return set(map(type, column)).issubset(kinds)


def _texts(column: Sequence[Any]) -> list[str]:
    if _only(column, str):
        return list(map(str.rstrip, column))
    return list(map(text, column))


def _numbers(column: Sequence[Any]) -> list[int]:
    """``number(value) or 0`` of every value."""
    if _only(column, Decimal, int):
        return list(map(int, column))
    return [number(v) or 0 for v in column]


def _timestamps(column: Sequence[Any]) -> list[str]:
    """``timestamp(value) or ""`` of every value.

    Plain ``isoformat()`` is the faster call and gives the same text for a
    naive datetime with microseconds (26 characters); any other length (no
    microseconds, a time zone) sends the column through the exact way.
    """
    if _only(column, dt.datetime):
        texts = list(map(dt.datetime.isoformat, column))
        if _only_length(texts, 26):
            return texts
        return list(map(_ISO_US, column))
    return [timestamp(v) or "" for v in column]


def _only_length(texts: Sequence[str], length: int) -> bool:
    return set(map(len, texts)) == {length}


def _null_maps(column: Sequence[Any]) -> list[bytes | None]:
    if _only(column, str):
        return list(map(str.encode, column))
    return [_blob(v.encode("utf-8") if isinstance(v, str) else v) for v in column]


def _blobs(column: Sequence[Any]) -> list[bytes | None]:
    if _only(column, bytes, bytearray):
        return list(map(bytes, column))
    return list(map(_blob, column))


def _blob(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def internal(entry: Mapping[str, Any]) -> bool:
    """A hidden internal entry (shown only with ``INCLUDE_INTERNAL``): skip it.

    Such entries carry nothing for the relay; they only take sequence
    numbers, which is why the miner never expects ``next == last + 1``.
    """
    return (entry["code"], entry["entry_type"]) in INTERNAL_TYPES


def wanted(entry: Mapping[str, Any], library: str, tables: Iterable[str]) -> bool:
    """Keep every C and J entry; R, D and F entries only for the relayed tables."""
    if entry["code"] not in OBJECT_CODES:
        return True
    return _object_wanted(entry["object"], library, _table_names(tables))


def _table_names(tables: Iterable[str]) -> frozenset[str]:
    return frozenset(t.strip().upper() for t in tables)


def _object_wanted(obj: str, library: str, names: frozenset[str]) -> bool:
    file_name, file_library = obj[0:10].strip(), obj[10:20].strip()
    return file_library == library.strip().upper() and file_name in names


def select(
    entries: Sequence[tuple[Any, ...]], library: str, tables: Iterable[str]
) -> tuple[list[tuple[Any, ...]], int]:
    """(entries to store, hidden entries skipped) of a window's tuples.

    The same decision as :func:`internal` and :func:`wanted` per entry; the
    verdict on an object name is taken once per window, not once per entry.
    """
    names = _table_names(tables)
    verdicts: dict[str, bool] = {}
    keep: list[tuple[Any, ...]] = []
    hidden = 0
    for entry in entries:
        code = entry[CODE_AT]
        if (code, entry[TYPE_AT]) in INTERNAL_TYPES:
            hidden += 1
            continue
        if code in OBJECT_CODES:
            obj = entry[OBJECT_AT]
            verdict = verdicts.get(obj)
            if verdict is None:
                verdict = verdicts[obj] = _object_wanted(obj, library, names)
            if not verdict:
                continue
        keep.append(entry)
    return keep, hidden


def check_window(entries: Sequence[tuple[Any, ...]], read: Read) -> None:
    """Refuse a window the source got wrong: wrong receiver, order or range.

    ``entries`` are :func:`entries_from_rows` tuples. The common case (all
    right) is checked a column at a time; a window that fails is walked
    entry by entry to name the first offending one.
    """
    if not entries:
        return
    sequences = [e[SEQUENCE_AT] for e in entries]
    names = {e[RECEIVER_AT] for e in entries}
    if (
        names == {read.receiver.name}
        and read.start <= sequences[0]
        and sequences[-1] <= read.end
        and sorted(set(sequences)) == sequences
    ):
        return
    previous = read.start - 1
    for entry in entries:
        seq, name = entry[SEQUENCE_AT], entry[RECEIVER_AT]
        if name != read.receiver.name:
            raise SourceError(
                f"entry from receiver {name!r},"
                f" expected {read.receiver.name!r} at sequence {seq}"
            )
        if not previous < seq <= read.end:
            raise SourceError(
                f"entry sequence {seq} outside window {read.start}..{read.end}"
                f" or out of order (after {previous})"
            )
        previous = seq
