"""Reading the IBM i journal safely: the DISPLAY_JOURNAL query and the chain walk.

Pure functions and values; the miner (:mod:`appliance.miner`) does the I/O.

Invariants this module guarantees to its caller:

- Every query names ONE receiver as both starting and ending receiver, and a
  bounded sequence window ``start <= end`` inside it. Sequence numbers are
  unique inside one receiver, so IBM's first-occurrence rule for numbers
  repeated across a reset (domain brief §3.2) can never apply, and a window
  is never inverted (Popsink #79).
- :func:`plan` never moves a bookmark backwards and never jumps over a
  receiver: a successor is taken only through the chain links, and only when
  its ``previous`` link points back at the receiver just finished. A missing
  or re-created receiver is a :class:`Gap`, never a silent restart.
- A receiver is finished when it is detached and the bookmark has reached its
  ``last_sequence_number``; reading goes on at the successor's
  ``first_sequence_number``, which is 1 after ``CHGJRN SEQOPT(*RESET)`` or an
  IPL.

Bookmark semantics, with a worked example. ``(rcv, seq, processed=True)``
means every entry of ``rcv`` up to ``seq`` is stored; ``processed=False``
means reading resumes AT ``seq`` (used when entering a new receiver).

    QSQJRN0001 detached, first 1, last 2500; window 1000; bookmark (0001, 1200, T)
    plan -> Read(0001, 1201, 2200)             window is behind the end
    bookmark after -> (0001, 2200, T)          even if nothing came back
    plan -> Read(0001, 2201, 2500)
    bookmark after -> (0001, 2500, T)          receiver finished
    plan -> Move(QSQJRN0002)                   its first sequence is 1 (*RESET)
    bookmark after -> (0002, 1, F)
    plan -> Read(0002, 1, min(last, 1000))     0002 is attached: at_head

At the head of the attached receiver (``at_head``) the bookmark advances only
to the last entry actually returned: an entry racing the head is read on the
next poll instead of being skipped.

First start (no bookmark): reading begins at the first entry of the oldest
readable receiver of the chain that holds the attached receiver. That is the
safe choice for an initial load — older entries are simply not there, newer
ones are never skipped; a deployment that wants "from now" seeds the bookmark.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from appliance.errors import SourceError

Dialect = Literal["ibmi", "emulator"]
Key = tuple[str, str]

JOURNAL_CODES = "C,D,F,J,R"
OBJECT_CODES = frozenset({"R", "D", "F"})
# Hidden internal entries as DISPLAY_JOURNAL shows them with INCLUDE_INTERNAL
# (code, type). IBM does not document them (brief §1, parameter 23): this is
# the emulator's J IE; add the real ones when a store shows them.
INTERNAL_TYPES = frozenset({("J", "IE")})
# The relay's own marker in raw_entries where a data gap was passed over
# (``on_data_gap = "resend"``); no IBM journal code is '*'.
GAP_MARK = ("*", "DG")
READABLE = frozenset({"ATTACHED", "ONLINE", "SAVED"})
ATTACHED = "ATTACHED"


@dataclass(frozen=True)
class Receiver:
    """One row of QSYS2.JOURNAL_RECEIVER_INFO, normalised."""

    library: str
    name: str
    status: str
    attach_ts: str | None
    detach_ts: str | None
    first_seq: int | None
    last_seq: int | None
    previous: Key | None = None
    next: Key | None = None

    @property
    def key(self) -> Key:
        return (self.library, self.name)

    @property
    def attached(self) -> bool:
        return self.status == ATTACHED

    @property
    def readable(self) -> bool:
        return self.status in READABLE


@dataclass(frozen=True)
class Bookmark:
    """The miner's position: see the module docstring for its meaning."""

    receiver_library: str
    receiver_name: str
    sequence: int
    processed: bool
    entry_ts: str = ""
    attach_ts: str = ""
    first_sequence: int = 0

    @property
    def key(self) -> Key:
        return (self.receiver_library, self.receiver_name)

    @property
    def next_sequence(self) -> int:
        """The first sequence not yet stored."""
        return self.sequence + 1 if self.processed else self.sequence

    def position(self) -> str:
        return f"{self.receiver_library}/{self.receiver_name}:{self.sequence}"


@dataclass(frozen=True)
class Read:
    """Read ``start..end`` (inclusive) of one receiver."""

    receiver: Receiver
    start: int
    end: int
    at_head: bool


@dataclass(frozen=True)
class Move:
    """Enter ``target`` at its first sequence (``source`` None: first start)."""

    target: Receiver
    source: Receiver | None
    reason: str


@dataclass(frozen=True)
class Wait:
    """Nothing to read now; refresh the receiver list and try again."""

    reason: str


@dataclass(frozen=True)
class Gap:
    """Entries were lost at the source: stop and tell an operator."""

    reason: str
    receiver: str
    cpf: str | None = "CPF9801"  # the IBM id of "object not found"; None if present


Action = Read | Move | Wait | Gap


# -- SQL -----------------------------------------------------------------------


def _user_column(dialect: Dialect) -> str:
    # CURRENT_USER is reserved: quoted, and quoted names are case-sensitive, so
    # DB2 wants it upper-case and PostgreSQL (the emulator) lower-case.
    return 'J."CURRENT_USER"' if dialect == "ibmi" else 'J."current_user"'


def _columns(dialect: Dialect) -> tuple[str, ...]:
    return (
        "J.ENTRY_TIMESTAMP",
        "J.SEQUENCE_NUMBER",
        "J.JOURNAL_CODE",
        "J.JOURNAL_ENTRY_TYPE",
        "J.COUNT_OR_RRN",
        "J.COMMIT_CYCLE",
        "J.OBJECT",
        "J.OBJECT_TYPE",
        "J.INDICATOR_FLAG",
        "J.JOB_NAME",
        "J.JOB_USER",
        "J.JOB_NUMBER",
        _user_column(dialect),
        "J.PROGRAM_NAME",
        "J.RECEIVER_LIBRARY",
        "J.RECEIVER_NAME",
        "J.NULL_VALUE_INDICATORS",
        "J.ENTRY_DATA",
    )


def window_sql(
    dialect: Dialect, *, include_internal: bool = False, eof_delay: int = 0
) -> str:
    """The bounded one-receiver DISPLAY_JOURNAL query, with 8 ``?`` markers.

    Markers, in order: journal library, journal name, receiver library and
    name (starting), starting sequence, receiver library and name (ending),
    ending sequence. See :func:`window_params`.

    ``include_internal`` adds ``INCLUDE_INTERNAL => 'YES'`` (7.5 TR5 / 7.4
    TR26 only: older releases reject the parameter, so the miner leaves it
    out and sees hidden entries only as sequence gaps).

    ``eof_delay`` > 0 (a waiting read, ``ibmi.wait_s``) adds ``EOF_DELAY``
    and drops the ORDER BY: a sort cannot hand out a row before its input
    ends, and with EOF_DELAY the IBM i's input need not end; entries come in
    journal order anyway, and :func:`check_window` refuses any other.
    """
    if isinstance(eof_delay, bool) or not isinstance(eof_delay, int) or eof_delay < 0:
        raise ValueError(f"EOF_DELAY must be a whole number >= 0, got {eof_delay!r}")
    internal = ", INCLUDE_INTERNAL => 'YES'" if include_internal else ""
    if eof_delay:
        internal += f", EOF_DELAY => {eof_delay}"
    call = (
        "QSYS2.DISPLAY_JOURNAL("
        "JOURNAL_LIBRARY => ?, JOURNAL_NAME => ?, "
        "STARTING_RECEIVER_LIBRARY => ?, STARTING_RECEIVER_NAME => ?, "
        "STARTING_SEQUENCE => CAST(? AS DECIMAL(21,0)), "
        f"JOURNAL_CODES => '{JOURNAL_CODES}', "
        "ENDING_RECEIVER_LIBRARY => ?, ENDING_RECEIVER_NAME => ?, "
        f"ENDING_SEQUENCE => CAST(? AS DECIMAL(21,0)){internal})"
    )
    source = f"TABLE({call}) AS J" if dialect == "ibmi" else f"{call} AS J"
    columns = ", ".join(_columns(dialect))
    order = "" if eof_delay else " ORDER BY J.SEQUENCE_NUMBER"
    return f"SELECT {columns} FROM {source}{order}"


def window_params(
    journal_library: str, journal_name: str, read: Read
) -> tuple[Any, ...]:
    """Parameters of :func:`window_sql` for one :class:`Read`.

    Sequences go as Decimal: *MAXOPT3 numbers do not fit a 64-bit integer.
    """
    rcv = read.receiver
    return (
        journal_library,
        journal_name,
        rcv.library,
        rcv.name,
        Decimal(read.start),
        rcv.library,
        rcv.name,
        Decimal(read.end),
    )


RECEIVERS_SQL = (
    "SELECT JOURNAL_RECEIVER_LIBRARY, JOURNAL_RECEIVER_NAME, STATUS,"
    " ATTACH_TIMESTAMP, DETACH_TIMESTAMP, FIRST_SEQUENCE_NUMBER,"
    " LAST_SEQUENCE_NUMBER, PREVIOUS_JOURNAL_RECEIVER_LIBRARY,"
    " PREVIOUS_JOURNAL_RECEIVER, NEXT_JOURNAL_RECEIVER_LIBRARY,"
    " NEXT_JOURNAL_RECEIVER"
    " FROM QSYS2.JOURNAL_RECEIVER_INFO"
    " WHERE JOURNAL_LIBRARY = ? AND JOURNAL_NAME = ?"
)
"""The receivers of one journal (both dialects: a plain view)."""


# -- normalising source values -------------------------------------------------


def text(value: Any) -> str:
    """A CHAR/VARCHAR value without trailing blanks ('' for NULL)."""
    if value is None:
        return ""
    return str(value).rstrip()


def number(value: Any) -> int | None:
    """A DECIMAL(21,0) (pyodbc Decimal) as int; None stays None."""
    if value is None:
        return None
    return int(value)


def timestamp(value: Any) -> str | None:
    """A local naive timestamp as ``YYYY-MM-DDTHH:MM:SS.ffffff``; None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="microseconds")
    parsed = dt.datetime.fromisoformat(str(value).strip().replace(" ", "T"))
    return parsed.isoformat(timespec="microseconds")


def _link(library: Any, name: Any) -> Key | None:
    if not text(name):
        return None
    return (text(library), text(name))


def receiver_from_row(row: Sequence[Any]) -> Receiver:
    """A :data:`RECEIVERS_SQL` row as a :class:`Receiver`."""
    return Receiver(
        library=text(row[0]),
        name=text(row[1]),
        status=text(row[2]).upper(),
        attach_ts=timestamp(row[3]),
        detach_ts=timestamp(row[4]),
        first_seq=number(row[5]),
        last_seq=number(row[6]),
        previous=_link(row[7], row[8]),
        next=_link(row[9], row[10]),
    )


def entry_from_row(row: Sequence[Any], journal: str) -> dict[str, Any]:
    """A :func:`window_sql` row as a ``raw_entries`` row (contracts.md §2)."""
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
        "job": "/".join((text(row[11]), text(row[10]), text(row[9]))),
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
RECEIVER_AT = ENTRY_FIELDS.index("receiver_name")
SEQUENCE_AT = ENTRY_FIELDS.index("sequence")
CODE_AT = ENTRY_FIELDS.index("code")
TYPE_AT = ENTRY_FIELDS.index("entry_type")
TS_AT = ENTRY_FIELDS.index("entry_ts")
OBJECT_AT = ENTRY_FIELDS.index("object")
_ISO_US = operator.methodcaller("isoformat", timespec="microseconds")
_ROW_WIDTH = len(_columns("ibmi"))


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


# -- a row as it came (kept whole when an operator skips it) -------------------

# The names of :func:`window_sql`'s columns, in order (a skipped row is kept
# in dead letters under these names).
ROW_COLUMNS = tuple(
    c.removeprefix("J.").strip('"').upper() for c in _columns("emulator")
)


def row_text(row: Sequence[Any]) -> dict[str, str | None]:
    """Every column of a :func:`window_sql` row as text, as it came.

    Bytes are upper-case hex, NULL stays None, anything else is ``str``
    (no trailing blanks stripped): what a technician compares with DSPJRN.
    """
    found: dict[str, str | None] = {}
    for name, value in zip(ROW_COLUMNS, row, strict=False):
        if value is None:
            found[name] = None
        elif isinstance(value, bytes | bytearray | memoryview):
            found[name] = bytes(value).hex().upper()
        else:
            found[name] = str(value)
    return found


def row_sequence(row: Sequence[Any]) -> int | None:
    """The row's SEQUENCE_NUMBER, None when it does not read as one."""
    value = row[1]
    return _sequence_value(value) if _reads(_sequence_value, value) else None


def entries_from_rows(
    rows: Sequence[Sequence[Any]],
    journal: str,
    mined_at: float,
    read: Read | None = None,
) -> list[tuple[Any, ...]]:
    """A window of :func:`window_sql` rows as ``raw_entries`` tuples.

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


# -- the chain -----------------------------------------------------------------


def index(receivers: Iterable[Receiver]) -> dict[Key, Receiver]:
    return {r.key: r for r in receivers}


def attached(receivers: Iterable[Receiver]) -> Receiver | None:
    """The receiver currently attached (the journal head), if any."""
    return next((r for r in receivers if r.attached), None)


def oldest_available(receivers: Sequence[Receiver]) -> Receiver | None:
    """The oldest readable receiver of the chain that holds the attached one.

    Walks ``previous`` links back from the attached receiver and stops at a
    chain break: a missing, unreadable (freed) receiver, or no link.
    """
    by_key = index(receivers)
    current = attached(receivers)
    seen: set[Key] = set()
    while current is not None and current.previous is not None:
        seen.add(current.key)
        before = by_key.get(current.previous)
        if before is None or not before.readable or before.key in seen:
            break
        current = before
    return current


def successor(receivers: Sequence[Receiver], rcv: Receiver) -> Key | None:
    """The key of the receiver after ``rcv``: its ``next`` link, else a back link."""
    if rcv.next is not None:
        return rcv.next
    return next((r.key for r in receivers if r.previous == rcv.key), None)


def plan(
    bookmark: Bookmark | None, receivers: Sequence[Receiver], window: int
) -> Action:
    """Decide the next thing to do from the bookmark and a fresh receiver list."""
    if bookmark is None:
        return _plan_first(receivers)
    rcv = index(receivers).get(bookmark.key)
    if rcv is None:
        return Gap("bookmarked receiver no longer exists", _name(bookmark.key))
    problem = _identity_problem(bookmark, rcv)
    if problem:
        return Gap(problem, _name(rcv.key), cpf=None)
    if rcv.attach_ts is None:
        return Wait("receiver attach time not yet known")
    first = bookmark.next_sequence
    last = rcv.last_seq if rcv.last_seq is not None else first - 1
    if first <= last:
        if not rcv.readable:
            return Gap(
                f"receiver status {rcv.status} with unread entries",
                _name(rcv.key),
                cpf=None,
            )
        end = min(last, first + window - 1)
        return Read(rcv, first, end, at_head=rcv.attached and end == last)
    if rcv.attached:
        return Wait("at the head" if first == last + 1 else "head behind bookmark")
    return _plan_successor(receivers, rcv)


def _plan_first(receivers: Sequence[Receiver]) -> Action:
    start = oldest_available(receivers)
    if start is None:
        return Wait("journal has no attached receiver")
    if start.attach_ts is None or start.first_seq is None:
        return Wait("oldest receiver not yet settled")
    return Move(start, None, "first start at the oldest available receiver")


def resume_after_gap(
    bookmark: Bookmark | None, receivers: Sequence[Receiver]
) -> Move | Wait:
    """Where reading resumes after a data gap: the oldest entry still available.

    That is the first entry of the oldest readable receiver of the attached
    chain (:func:`oldest_available`): the walk back stops at the break the gap
    left, so it is always past the bookmark and nothing is read twice. The
    bookmarked receiver itself is refused unless it was re-created (its
    identity changed), since its unread entries would then be read again.
    """
    start = oldest_available(receivers)
    if start is None:
        return Wait("journal has no attached receiver")
    if start.attach_ts is None or start.first_seq is None:
        return Wait("oldest receiver not yet settled")
    if (
        bookmark is not None
        and start.key == bookmark.key
        and not _identity_problem(bookmark, start)
    ):
        return Wait("the oldest available receiver is the bookmarked one")
    return Move(start, None, "data gap: resumed at the oldest available entry")


def _plan_successor(receivers: Sequence[Receiver], rcv: Receiver) -> Action:
    key = successor(receivers, rcv)
    if key is None:
        return Wait("detached receiver has no successor yet")
    target = index(receivers).get(key)
    if target is None:
        return Gap(f"next receiver {_name(key)} no longer exists", _name(key))
    if target.previous is not None and target.previous != rcv.key:
        missing = _name(target.previous)
        return Gap(
            f"receiver {missing} between {rcv.name} and {target.name} is gone", missing
        )
    if not target.readable:
        return Gap(f"next receiver status {target.status}", _name(key), cpf=None)
    if target.attach_ts is None or target.first_seq is None:
        return Wait("next receiver not yet settled")
    return Move(target, rcv, f"{rcv.name} finished at {rcv.last_seq}")


def _identity_problem(bookmark: Bookmark, rcv: Receiver) -> str:
    """Why ``rcv`` is not the receiver the bookmark was taken in ('' if it is)."""
    first, attach = rcv.first_seq, rcv.attach_ts
    if bookmark.first_sequence and first not in (None, bookmark.first_sequence):
        return (
            f"receiver re-created: first sequence {first},"
            f" expected {bookmark.first_sequence}"
        )
    if bookmark.attach_ts and attach not in (None, bookmark.attach_ts):
        return f"receiver re-created: attached {attach}, expected {bookmark.attach_ts}"
    return ""


def entered(move: Move, previous: Bookmark | None) -> Bookmark:
    """The bookmark that enters ``move.target`` before its first entry."""
    target = move.target
    return Bookmark(
        receiver_library=target.library,
        receiver_name=target.name,
        sequence=target.first_seq or 1,
        processed=False,
        entry_ts=previous.entry_ts if previous else "",
        attach_ts=target.attach_ts or "",
        first_sequence=target.first_seq or 0,
    )


def after_window(
    bookmark: Bookmark, read: Read, last_seen: int | None, entry_ts: str
) -> Bookmark:
    """The bookmark once ``read`` is stored (``last_seen``: its highest sequence).

    Behind the head the whole window is settled, so the bookmark takes its end
    even when the window was empty or all filtered (Popsink #36). At the head
    only what was actually returned counts.
    """
    sequence = read.end if not read.at_head else last_seen
    if sequence is None:
        return bookmark
    return Bookmark(
        receiver_library=read.receiver.library,
        receiver_name=read.receiver.name,
        sequence=sequence,
        processed=True,
        entry_ts=entry_ts or bookmark.entry_ts,
        attach_ts=read.receiver.attach_ts or bookmark.attach_ts,
        first_sequence=read.receiver.first_seq or bookmark.first_sequence,
    )


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


# -- the head and the miner's lag ------------------------------------------------


@dataclass(frozen=True)
class Lag:
    """How far the bookmark is behind the journal head.

    ``entries`` counts sequence numbers still unread (hidden entries count
    too, so it is an upper bound on what the miner will store); ``seconds``
    compares the head entry's time with the bookmarked entry's, both in UTC.
    """

    head: str
    entries: int
    seconds: float | None


def lag_entries(bookmark: Bookmark | None, receivers: Sequence[Receiver]) -> int | None:
    """Unread sequence numbers from the bookmark to the head, across receivers.

    Worked example across a reset: bookmark (0001, 400) with 0001 ending at
    500, then 0002 (*RESET) holding 1..300 and attached: 100 + 300 = 400.
    None when the chain from the bookmark to the head cannot be followed.
    """
    if bookmark is None:
        return None
    by_key = index(receivers)
    rcv = by_key.get(bookmark.key)
    if rcv is None or rcv.last_seq is None:
        return None
    total = max(0, rcv.last_seq - bookmark.next_sequence + 1)
    seen = {rcv.key}
    while not rcv.attached:
        key = successor(receivers, rcv)
        following = by_key.get(key) if key else None
        if following is None or following.key in seen:
            return None
        seen.add(following.key)
        rcv = following
        if rcv.first_seq is not None and rcv.last_seq is not None:
            total += rcv.last_seq - rcv.first_seq + 1
    return total


def head_read(receivers: Sequence[Receiver]) -> Read | None:
    """A one-entry window on the head entry (to learn its timestamp)."""
    head = attached(receivers)
    if head is None or head.last_seq is None:
        return None
    return Read(head, head.last_seq, head.last_seq, at_head=True)


def utc_seconds(local: str, zone: dt.tzinfo) -> float | None:
    """A local naive ISO timestamp of the store as a UTC epoch (None if empty)."""
    if not local:
        return None
    return dt.datetime.fromisoformat(local).replace(tzinfo=zone).timestamp()


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
