"""Operator actions as commands that the legs carry out (issue 6).

The web page never changes pipeline state itself: it inserts a row into
``commands`` (and one into ``audit``, same transaction) and the leg named by
the row carries it out between two steps (:class:`Runner`, driven by
:func:`appliance.daemon.run`).

Invariants:

- A command runs at most once. :meth:`Runner.run_pending` moves it from
  ``pending`` to ``running`` before calling the handler and to ``done`` or
  ``failed`` after. A leg killed in between leaves it ``running``; the next
  start marks it ``failed`` ("interrupted") rather than repeat it, and the
  operator sees that in the audit page and asks again if needed. A handler
  that cannot decide yet raises :class:`CommandLater`: the command goes back
  to ``pending`` unrun and is taken again at the next poll (the miner's
  ``skip_entry`` right after a restart).
- ``pause`` and ``resume`` are handled here for every leg: the flag is kept
  in ``leg_flags`` so a paused leg stays paused across a restart.
- Only the enricher writes ``outbox.lane_seq``: a re-send (:func:`resend`)
  runs inside the enricher with the enricher's own lane counters. Copies keep
  the original ``version``, so the hub's version guard applies a copy only
  where the ODH lost the row or holds an older image; elsewhere it skips it.
- Dead-letter actions (retry, discard) run in the leg of the letter's stage.
  A transformer letter is retried by resetting its raw entry to ``state = 0``
  only when that entry is outside a commit cycle: an entry of a cycle whose
  commit already went by would be held forever waiting for a commit that will
  not come again.

- ``skip_entry`` (the miner) passes over exactly the journal entry the
  miner's unusable-entry alarm names, never another (:func:`skip_entry_args`,
  :meth:`appliance.miner.MinerLeg.handle_command`).

- ``check`` and ``load`` go to the ``control`` leg (the guardian,
  docs/guardian.md §5): a check compares a table with ODH and repairs it; a
  load reads the table and sends every row as an ``r`` change.

Worked example: the technician asks to re-send table PRIX. The page inserts
``commands(leg='enricher', kind='resend', args={"table": "PRIX"})``. Between
two batches the enricher copies each confirmed PRIX message (one per
version) to a new outbox row of the same lane with the next ``lane_seq``;
the shipper sends them as any other message; the hub re-inserts the row that
was deleted behind the relay's back and skips the others.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from appliance import payloads, store
from appliance.errors import ApplianceError

logger = logging.getLogger(__name__)

LEGS = ("miner", "transformer", "enricher", "shipper", "control")
KINDS = {
    "pause": LEGS,
    "resume": LEGS,
    "resend": ("enricher",),
    "retry_dead_letter": ("transformer", "enricher"),
    # Any leg that parks may discard its own letters (a guardian request the
    # store cannot read, a bad confirmation); only decode stages can retry.
    "discard_dead_letter": ("miner", "transformer", "enricher", "shipper", "control"),
    "rewind": ("miner",),
    "skip_entry": ("miner",),
    "check": ("control",),
    "load": ("control",),
}
POLL_EVERY_S = 0.5
FINISH_TRIES = 5
# An IBM i system name: ASCII only, so a full-width look-alike is refused.
SYSTEM_NAME = re.compile(r"[A-Z#@$][A-Z0-9_#@$]{0,29}")
_META_SEQ = "enricher.lane_seq."

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    leg TEXT NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '{}',
    requested_by TEXT NOT NULL,
    requested_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed')),
    result TEXT NOT NULL DEFAULT '',
    done_at REAL
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (leg, state, id);
CREATE TABLE IF NOT EXISTS leg_flags (
    leg TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user_name TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    command_id INTEGER
)
"""


class CommandError(ApplianceError):
    """A command that cannot be requested or carried out (message says why)."""


class CommandLater(ApplianceError):
    """The leg cannot decide yet (it has not read what the command is about
    since its start): the command goes back to pending for the next poll."""


@dataclass(frozen=True)
class Command:
    id: int
    leg: str
    kind: str
    args: dict[str, Any]


class Handles(Protocol):
    """A leg that carries out its own kinds of command."""

    def handle_command(self, kind: str, args: dict[str, Any]) -> str: ...


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the commands, leg_flags and audit tables if missing."""
    with store.transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


def audit(
    conn: sqlite3.Connection,
    user: str,
    action: str,
    detail: str = "",
    command_id: int | None = None,
) -> None:
    """Append to the audit log (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO audit (at, user_name, action, detail, command_id)"
        " VALUES (?, ?, ?, ?, ?)",
        (time.time(), user, action, detail[:500], command_id),
    )


def request(
    conn: sqlite3.Connection, leg: str, kind: str, args: dict[str, Any], user: str
) -> int:
    """Queue a command for ``leg`` and audit it; return its id."""
    return request_once(conn, leg, kind, args, user, once=False)[0]


def request_once(
    conn: sqlite3.Connection,
    leg: str,
    kind: str,
    args: dict[str, Any],
    user: str,
    *,
    once: bool = True,
) -> tuple[int, bool]:
    """Queue a command unless the same one (leg, kind, args) is still pending.

    Returns ``(id, created)``: with ``once`` a pending twin's id comes back
    with ``created = False`` and nothing is queued or audited. The check and
    the insert share one write transaction, so two requests racing from two
    processes cannot both queue (a loop of POSTs once queued thousands of
    full table reads).
    """
    if kind not in KINDS:
        raise CommandError(f"command kind {kind[:40]!r} unknown, expected {KINDS}")
    if leg not in KINDS[kind]:
        raise CommandError(
            f"command {kind!r} not for leg {leg[:40]!r}, expected {KINDS[kind]}"
        )
    _check_numbers(args)
    if kind == "skip_entry":
        args = skip_entry_args(args)
    text = json.dumps(args, sort_keys=True, allow_nan=False)
    with store.transaction(conn):
        if once:
            twin = conn.execute(
                "SELECT id FROM commands WHERE leg = ? AND kind = ? AND args = ?"
                " AND state = 'pending' ORDER BY id LIMIT 1",
                (leg, kind, text),
            ).fetchone()
            if twin is not None:
                return int(twin[0]), False
        cur = conn.execute(
            "INSERT INTO commands (leg, kind, args, requested_by, requested_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (leg, kind, text, user, time.time()),
        )
        command_id = int(cur.lastrowid or 0)
        audit(conn, user, kind, f"leg={leg} {text}", command_id)
    logger.info("command requested stage=%s kind=%s id=%d", leg, kind, command_id)
    return command_id, True


def take(conn: sqlite3.Connection, leg: str) -> list[Command]:
    """Claim the pending commands of ``leg`` (now ``running``), oldest first."""
    # A plain read first: every leg polls twice a second, and taking the
    # write lock for an empty answer cost the control leg 18% of its time.
    pending = conn.execute(
        "SELECT 1 FROM commands WHERE leg = ? AND state = 'pending' LIMIT 1", (leg,)
    ).fetchone()
    if pending is None:
        return []
    with store.transaction(conn):
        rows = conn.execute(
            "UPDATE commands SET state = 'running' WHERE leg = ? AND state = 'pending'"
            " RETURNING id, leg, kind, args",
            (leg,),
        ).fetchall()
    commands = [Command(r[0], r[1], r[2], json.loads(r[3])) for r in rows]
    return sorted(commands, key=lambda c: c.id)


def finish(conn: sqlite3.Connection, command_id: int, ok: bool, result: str) -> None:
    """Record the outcome of a command."""
    with store.transaction(conn):
        conn.execute(
            "UPDATE commands SET state = ?, result = ?, done_at = ? WHERE id = ?",
            ("done" if ok else "failed", result[:1000], time.time(), command_id),
        )


def is_paused(conn: sqlite3.Connection, leg: str) -> bool:
    row = conn.execute("SELECT paused FROM leg_flags WHERE leg = ?", (leg,)).fetchone()
    return bool(row and row[0])


def _set_paused(conn: sqlite3.Connection, leg: str, paused: bool) -> None:
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO leg_flags (leg, paused, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (leg) DO UPDATE SET paused = excluded.paused,"
            " updated_at = excluded.updated_at",
            (leg, int(paused), time.time()),
        )


class Runner:
    """Carries out a leg's commands between its steps (see module doc)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        leg: object,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.leg = leg
        self.name = name
        self._clock = clock
        self._polled = float("-inf")
        ensure_schema(conn)
        with store.transaction(conn):
            conn.execute(
                "UPDATE commands SET state = 'failed', done_at = ?,"
                " result = 'interrupted by a restart; not repeated'"
                " WHERE leg = ? AND state = 'running'",
                (time.time(), name),
            )
        self.paused = is_paused(conn, name)
        if self.paused:
            logger.warning("leg starts paused stage=%s", name)

    def run_pending(self) -> int:
        """Run what is pending (at most every POLL_EVERY_S); return how many."""
        now = self._clock()
        if now - self._polled < POLL_EVERY_S:
            return 0
        self._polled = now
        try:
            todo = take(self.conn, self.name)
        except sqlite3.OperationalError as exc:
            # The database is busy or full: the leg's own step will meet the
            # same and wait it out; the commands wait for the next poll.
            logger.warning("commands not read stage=%s error=%s", self.name, exc)
            return 0
        for command in todo:
            try:
                ok, result = self._run(command)
            except CommandLater as exc:
                self._put_back(command.id, str(exc))
                continue
            self._finish(command.id, ok, result)
            log = logger.info if ok else logger.warning
            log(
                "command %s stage=%s kind=%s id=%d",
                "done" if ok else "failed",
                self.name,
                command.kind,
                command.id,
            )
        return len(todo)

    def _put_back(self, command_id: int, why: str) -> None:
        """Pending again, for the next poll (taken again then)."""
        with store.transaction(self.conn):
            self.conn.execute(
                "UPDATE commands SET state = 'pending'"
                " WHERE id = ? AND state = 'running'",
                (command_id,),
            )
        logger.debug("command waits stage=%s id=%d why=%s", self.name, command_id, why)

    def _finish(self, command_id: int, ok: bool, result: str) -> None:
        """Record the outcome, retried while the database stays busy."""
        for attempt in range(1, FINISH_TRIES + 1):
            try:
                finish(self.conn, command_id, ok, result)
                return
            except sqlite3.OperationalError as exc:
                if attempt == FINISH_TRIES:
                    raise
                logger.warning(
                    "command outcome not written stage=%s id=%d attempt=%d error=%s",
                    self.name,
                    command_id,
                    attempt,
                    exc,
                )
                time.sleep(attempt)

    def _run(self, command: Command) -> tuple[bool, str]:
        try:
            if command.kind in ("pause", "resume"):
                self.paused = command.kind == "pause"
                _set_paused(self.conn, self.name, self.paused)
                return True, command.kind + "d"
            if command.kind in ("retry_dead_letter", "discard_dead_letter"):
                letter = int(command.args["id"])
                if command.kind == "discard_dead_letter":
                    return True, discard_dead_letter(self.conn, letter, self.name)
                return True, retry_dead_letter(self.conn, letter, self.name)
            handler = getattr(self.leg, "handle_command", None)
            if handler is None:
                raise CommandError(f"leg {self.name} carries out no {command.kind}")
            return True, str(handler(command.kind, command.args))
        except CommandLater:
            raise
        except (
            ApplianceError,
            KeyError,
            ValueError,
            TypeError,
            OverflowError,
        ) as exc:
            return False, f"{type(exc).__name__}: {str(exc)[:300]}"


# -- dead letters ------------------------------------------------------------


def _letter(conn: sqlite3.Connection, letter_id: int, stage: str) -> sqlite3.Row:
    row = conn.execute(
        "SELECT id, stage, state, raw_id, payload FROM dead_letters WHERE id = ?",
        (letter_id,),
    ).fetchone()
    if row is None:
        raise CommandError(f"dead letter {letter_id} not found")
    if row["stage"] != stage:
        raise CommandError(f"dead letter {letter_id} is of stage {row['stage']!r}")
    if row["state"] != "parked":
        raise CommandError(f"dead letter {letter_id} already {row['state']}")
    return row  # type: ignore[no-any-return]


def discard_dead_letter(
    conn: sqlite3.Connection, letter_id: int, stage: str | None = None
) -> str:
    """Mark a parked letter discarded (its bytes stay for the record).

    With ``stage``, only a letter of that stage (the leg carrying it out).
    """
    with store.transaction(conn):
        if stage is not None:
            _letter(conn, letter_id, stage)
        cur = conn.execute(
            "UPDATE dead_letters SET state = 'discarded'"
            " WHERE id = ? AND state = 'parked'",
            (letter_id,),
        )
        if cur.rowcount != 1:
            raise CommandError(f"dead letter {letter_id} is not parked")
    return f"dead letter {letter_id} discarded"


def retry_dead_letter(conn: sqlite3.Connection, letter_id: int, stage: str) -> str:
    """Feed a parked letter back to its stage (see the module invariants)."""
    with store.transaction(conn):
        row = _letter(conn, letter_id, stage)
        if stage == "shipper":
            # Its row is still in the outbox: nothing to feed back.
            raise CommandError(
                f"dead letter {letter_id}: the shipper reads its outbox row again"
                " every 30 s and sends it once it reads; restore the row's payload"
                " or dictionary (appliance/payloads.py)"
            )
        if stage == "enricher":
            detail = _retry_change(conn, row)
        else:
            detail = _retry_raw(conn, row)
        conn.execute(
            "UPDATE dead_letters SET state = 'retried' WHERE id = ?", (letter_id,)
        )
        store.bump(conn, f"{stage}.retried")
    return detail


def _retry_change(conn: sqlite3.Connection, row: sqlite3.Row) -> str:
    if not row["payload"]:
        raise CommandError(f"dead letter {row['id']} has no change to retry")
    change = json.loads(row["payload"])

    def text(name: str) -> str | None:
        value = change.get(name)
        return None if value is None else json.dumps(value, ensure_ascii=False)

    cur = conn.execute(
        "INSERT INTO changes (raw_id, table_name, op, key, before, after, source,"
        " entry_ts_ms, mined_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        (
            int(change["raw_id"]),
            str(change["table"]),
            str(change["op"]),
            text("key"),
            text("before"),
            text("after"),
            text("source"),
            int(change["entry_ts_ms"]),
            float(change["mined_at"]),
        ),
    )
    return f"dead letter {row['id']} back as change {cur.lastrowid}"


def _retry_raw(conn: sqlite3.Connection, row: sqlite3.Row) -> str:
    raw_id = row["raw_id"]
    if raw_id is None:
        raise CommandError(f"dead letter {row['id']} names no raw entry")
    raw = conn.execute(
        "SELECT commit_cycle FROM raw_entries WHERE id = ?", (raw_id,)
    ).fetchone()
    if raw is None:
        raise CommandError(f"raw entry {raw_id} is gone (pruned); cannot retry")
    if int(raw[0]) != 0:
        raise CommandError(
            f"raw entry {raw_id} belongs to commit cycle {raw[0]}, whose commit"
            " went by: re-send the table instead"
        )
    conn.execute("UPDATE raw_entries SET state = 0 WHERE id = ?", (raw_id,))
    return f"dead letter {row['id']}: raw entry {raw_id} decoded again"


# -- re-send -----------------------------------------------------------------


def resend(
    conn: sqlite3.Connection,
    lane_seqs: dict[int, int],
    *,
    table: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> tuple[int, dict[int, int]]:
    """Copy confirmed messages to new outbox rows; return (count, new lane_seqs).

    One copy per version (a message re-sent twice is copied once), in the
    original order, each with the next ``lane_seq`` of its lane and the same
    version. ``since``/``until`` bound ``mined_at`` (unix seconds). The
    caller keeps ``lane_seqs`` and adopts the returned counters only after
    this returns (the transaction committed).
    """
    # A guardian checksum (op g) is only true of its moment: never re-sent.
    where = ["state = 'confirmed'", "op != 'g'"]
    params: list[Any] = []
    if table:
        where.append("table_name = ?")
        params.append(table.upper())
    if since is not None:
        where.append("mined_at >= ?")
        params.append(since)
    if until is not None:
        where.append("mined_at < ?")
        params.append(until)
    seqs = dict(lane_seqs)
    now = time.time()
    with store.transaction(conn):
        rows = conn.execute(
            "SELECT lane, interest, version, table_name, op, payload, dict_id,"
            " mined_at"
            " FROM outbox WHERE id IN (SELECT min(id) FROM outbox"
            f" WHERE {' AND '.join(where)} GROUP BY version) ORDER BY id",
            params,
        ).fetchall()
        seq_row = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()
        next_id = (int(seq_row[0]) if seq_row else 0) + 1
        copies = []
        unpacker = payloads.Unpacker()
        for row in rows:
            lane = int(row["lane"])
            seqs[lane] = seqs.get(lane, 0) + 1
            # An unreadable row raises PayloadError: the command fails, its
            # transaction rolls back, and the operator is told which row.
            stored = unpacker.value(
                conn, row["payload"], row["dict_id"], table=row["table_name"]
            )
            message = json.loads(stored)
            message["lane_seq"] = seqs[lane]
            message["outbox_id"] = next_id
            payload = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
            copies.append(
                (
                    next_id,
                    lane,
                    seqs[lane],
                    row["interest"],
                    row["version"],
                    row["table_name"],
                    row["op"],
                    payload,
                    now,
                    row["mined_at"],
                )
            )
            next_id += 1
        # Copies are stored as text (dict_id NULL): a resend is rare, and its
        # rows then read like the ones it copied before compression.
        conn.executemany(
            "INSERT INTO outbox (id, lane, lane_seq, interest, version, table_name,"
            " op, payload, created_at, mined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            copies,
        )
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(f"{_META_SEQ}{lane}", str(seq)) for lane, seq in seqs.items()],
        )
        if copies:
            store.bump(conn, "enricher.resent", len(copies))
    logger.warning(
        "messages re-sent stage=enricher table=%s count=%d", table or "*", len(copies)
    )
    return len(copies), seqs


def resend_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate the arguments of a ``resend`` command."""
    out: dict[str, Any] = {}
    table = args.get("table")
    if table is not None:
        ok = isinstance(table, str) and table.isascii()
        if not ok or not SYSTEM_NAME.fullmatch(table.upper()):
            raise CommandError(f"table {str(table)[:40]!a} is not a table name")
        out["table"] = table.upper()
    for name in ("since", "until"):
        value = args.get(name)
        if value is not None:
            out[name] = float(value)
    if not out:
        raise CommandError("resend needs a table or a time range")
    return out


# -- rewind ------------------------------------------------------------------


def rewind(
    conn: sqlite3.Connection,
    journal_id: str,
    bookmark: Any,
    receiver: str,
    sequence: int,
) -> Any:
    """Move the miner's bookmark back to ``sequence`` of its current receiver.

    Returns the new bookmark (a :class:`appliance.journal.Bookmark`); the
    entries from ``sequence`` on are read again as new raw entries, hence new
    (higher) versions: the hub applies them in journal order and ends at the
    state it had. Only the current receiver: an older one may be gone.
    """
    import dataclasses

    from appliance.miner import save_bookmark

    if bookmark is None:
        raise CommandError("the miner has no bookmark yet: nothing to rewind")
    if receiver != bookmark.receiver_name:
        raise CommandError(
            f"receiver {receiver[:20]!r} is not the current one"
            f" {bookmark.receiver_name!r}"
        )
    lowest = max(1, int(bookmark.first_sequence or 1))
    if not lowest <= sequence <= bookmark.sequence:
        raise CommandError(f"sequence {sequence} outside {lowest}..{bookmark.sequence}")
    moved = dataclasses.replace(bookmark, sequence=sequence, processed=False)
    with store.transaction(conn):
        save_bookmark(conn, journal_id, moved)
    logger.warning(
        "miner rewound stage=miner position=%s count=%d",
        moved.position(),
        bookmark.sequence - sequence + 1,
    )
    return moved


# -- skip one unusable journal entry -----------------------------------------


def skip_entry_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``skip_entry`` command: the entry as the alarm names it.

    ``{"receiver": "LIB/NAME", "sequence": N}``, or for a row without a
    sequence ``{"receiver": "LIB/NAME", "null_after": N}`` (the row with a
    NULL sequence in the window after sequence N, the alarm's
    ``last_stored``). Exactly one of the two numbers.
    """
    receiver = args.get("receiver")
    parts = receiver.upper().split("/") if isinstance(receiver, str) else []
    if len(parts) != 2 or not all(
        p.isascii() and SYSTEM_NAME.fullmatch(p) for p in parts
    ):
        raise CommandError(
            f"receiver {str(receiver)[:40]!a}: expected LIBRARY/NAME as the alarm"
            " shows it"
        )
    given = [name for name in ("sequence", "null_after") if args.get(name) is not None]
    if len(given) != 1:
        raise CommandError(
            "skip_entry needs exactly one of sequence (the entry's) or null_after"
            " (the sequence stored before a row without a sequence)"
        )
    name = given[0]
    value = args[name]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CommandError(f"{name} {str(value)[:30]!a}: expected a whole number")
    try:
        number = int(value)
    except ValueError:
        raise CommandError(
            f"{name} {str(value)[:30]!a}: expected a whole number"
        ) from None
    if number < (1 if name == "sequence" else 0):
        raise CommandError(f"{name} {number}: expected a sequence number")
    _check_numbers(number, name)
    return {"receiver": "/".join(parts), name: number}


def requested(
    conn: sqlite3.Connection, leg: str, kind: str, args: dict[str, Any]
) -> tuple[int, str] | None:
    """(id, requested_by) of the command of ``leg`` being carried out now.

    A handler is called with the kind and arguments only; the oldest
    ``running`` command with those names who asked for it (the
    :class:`Runner` finishes each command before the next one starts).
    """
    text = json.dumps(args, sort_keys=True, allow_nan=False)
    row = conn.execute(
        "SELECT id, requested_by FROM commands WHERE leg = ? AND kind = ?"
        " AND args = ? AND state = 'running' ORDER BY id LIMIT 1",
        (leg, kind, text),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


_SQLITE_INT = 2**63


def _check_numbers(value: Any, name: str = "") -> None:
    """Refuse numbers no leg can use: NaN, infinities, integers past 64 bits.

    Found by a breaker run: such arguments were queued, then raised
    OverflowError inside the leg that took the command. The error names
    the argument (``sequence``, ``tables[2]``).
    """
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, f"{name}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise CommandError(f"argument {name} {value!r}: expected a finite number")
    elif isinstance(value, int) and not -_SQLITE_INT <= value < _SQLITE_INT:
        raise CommandError(f"argument {name}: expected an integer that fits 64 bits")
