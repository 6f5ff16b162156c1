"""Reading the IBM i journal safely: the DISPLAY_JOURNAL query and the chain walk.

Pure functions and values; the miner (:mod:`appliance.miner`) does the I/O,
and :mod:`appliance.journalrows` turns the rows into entries.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

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
# ... and where an operator skipped a commit boundary (or an entry of unknown
# code): its ``commit_cycle`` is the cycle that can no longer end (0: unknown).
SKIP_MARK = ("*", "SK")
# ... and where it skipped a row change of cycle ``commit_cycle``, still
# open then: its table (``object``; blank: every relayed table) is checked
# again once that cycle ends, when the source shows how it ended.
SKIP_ROW_MARK = ("*", "SR")
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


# The names of :func:`window_sql`'s columns, in order, either dialect (a row
# an operator skips is kept in dead letters under these names).
WINDOW_COLUMNS = tuple(
    c.removeprefix("J.").strip('"').upper() for c in _columns("emulator")
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
