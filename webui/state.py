"""What the page shows, read from the pipeline database (never written here).

Invariants:

- Reads only. The single write the web page makes is a command request
  (:func:`appliance.commands.request`), elsewhere.
- Rates are differences between two reads kept in memory (:class:`Rates`),
  so they need no schema and restart at zero with the page.
- A leg is ``running`` when its heartbeat is younger than ``stalled_after_s``
  and says running, ``stalled`` when older, ``stopped``/``paused``/
  ``data_gap`` as the leg itself wrote, ``missing`` when it never beat.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.commands import LEGS, CommandError, skip_entry_args
from webui import guardian

logger = logging.getLogger(__name__)

LEG_COUNTERS = {
    "miner": "miner.entries",
    "transformer": "transformer.changes",
    "enricher": "enricher.messages",
    "shipper": "shipper.confirmed",
    "control": "control.r_rows",
}
OUTBOX_ALARM_ROWS = 10_000
OUTBOX_ALARM_AGE_S = 300.0


@dataclass
class Alarm:
    """An alarm: ``detail`` for every alarm, ``facts`` for those that name
    more (the page's text places each; the API lists them when present)."""

    code: str
    detail: str
    facts: dict[str, str] = field(default_factory=dict)

    def shown(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "detail": self.detail}
        if self.facts:
            out["facts"] = dict(self.facts)
        return out


class Rates:
    """Per-counter rates between the last two snapshots (module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, int]] | None = None
        self._rates: dict[str, float] = {}
        self.parked_before: int | None = None
        self.parked_now: int = 0

    def update(self, counters: dict[str, int], parked: int) -> dict[str, float]:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last[0] >= 1.0:
                then, old = self._last
                self._rates = {
                    k: max(0.0, (v - old.get(k, 0)) / (now - then))
                    for k, v in counters.items()
                }
                self.parked_before = self.parked_now
            if self._last is None or now - self._last[0] >= 1.0:
                self._last = (now, dict(counters))
                self.parked_now = parked
            return dict(self._rates)


def _one(conn: sqlite3.Connection, sql: str, *args: Any) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def legs(conn: sqlite3.Connection, stalled_after_s: float) -> list[dict[str, Any]]:
    now = time.time()
    beats = {r["leg"]: r for r in conn.execute("SELECT * FROM heartbeats")}
    paused = {r[0] for r in conn.execute("SELECT leg FROM leg_flags WHERE paused = 1")}
    out = []
    for leg in LEGS:
        beat = beats.get(leg)
        if beat is None:
            missing: dict[str, Any] = {"leg": leg, "state": "missing"}
            out.append(missing | {"age_s": None, "status": ""})
            continue
        age = now - beat["updated_at"]
        state = beat["state"]
        if state in ("running", "paused") and age > stalled_after_s:
            state = "stalled"
        out.append(
            {
                "leg": leg,
                "state": state,
                "age_s": round(age, 1),
                "status": beat["status"],
                "pid": beat["pid"],
                "paused_flag": leg in paused,
            }
        )
    return out


def journal(conn: sqlite3.Connection) -> dict[str, Any]:
    bookmark = conn.execute("SELECT * FROM bookmark").fetchone()
    head = conn.execute("SELECT * FROM journal_head").fetchone()
    receivers = [
        dict(r)
        for r in conn.execute(
            "SELECT receiver_library, receiver_name, min(sequence) AS first,"
            " max(sequence) AS last, count(*) AS entries, max(mined_at) AS mined_at"
            " FROM raw_entries GROUP BY receiver_library, receiver_name"
            " ORDER BY min(id)"
        )
    ]
    unread = None
    if (
        bookmark is not None
        and head is not None
        and head["receiver_name"] == bookmark["receiver_name"]
    ):
        unread = max(0, int(head["sequence"]) - int(bookmark["sequence"]))
    return {
        "bookmark": dict(bookmark) if bookmark else None,
        "head": dict(head) if head else None,
        "unread": unread,
        "receivers": receivers,
    }


def outbox(conn: sqlite3.Connection) -> dict[str, Any]:
    lanes: dict[int, dict[str, int]] = {}
    for lane, state, count in conn.execute(
        "SELECT lane, state, count(*) FROM outbox GROUP BY lane, state"
    ):
        lanes.setdefault(int(lane), {})[state] = int(count)
    oldest = conn.execute(
        "SELECT id, lane, lane_seq, table_name, op, state, mined_at FROM outbox"
        " WHERE state != 'confirmed' ORDER BY mined_at LIMIT 1"
    ).fetchone()
    now = time.time()
    since = now - 3600
    buckets = [0] * 60
    for (at,) in conn.execute(
        "SELECT confirmed_at FROM outbox WHERE confirmed_at >= ?", (since,)
    ):
        buckets[min(59, int((at - since) // 60))] += 1
    return {
        "lanes": dict(sorted(lanes.items())),
        "oldest": dict(oldest) if oldest else None,
        "oldest_age_s": round(now - oldest["mined_at"], 1) if oldest else 0.0,
        "per_minute": buckets,
    }


def chart_svg(per_minute: list[int]) -> str:
    """Confirmed messages per minute over the last hour, as inline SVG."""
    width, height, pad = 600, 160, 20
    top = max(per_minute) if any(per_minute) else 1
    bar = (width - 2 * pad) / len(per_minute)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img"'
        f' xmlns="http://www.w3.org/2000/svg">',
        f'<line class="axis" x1="{pad}" y1="{height - pad}"'
        f' x2="{width - pad}" y2="{height - pad}"/>',
        f'<text x="{pad}" y="14">{top}/min</text>',
        f'<text x="{pad}" y="{height - 4}">-60 min</text>',
        f'<text x="{width - pad - 40}" y="{height - 4}">0</text>',
    ]
    for i, count in enumerate(per_minute):
        h = (height - 2 * pad) * count / top
        x = pad + i * bar
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{height - pad - h:.1f}"'
            f' width="{max(bar - 1, 1):.1f}" height="{h:.1f}"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def dead_letters(conn: sqlite3.Connection, limit: int = 200) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in conn.execute(
            "SELECT id, created_at, stage, table_name, position, field, reason,"
            " state FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
    ]


def dead_letter(conn: sqlite3.Connection, letter_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT * FROM dead_letters WHERE id = ?", (letter_id,)
    ).fetchone()
    if row is None:
        return None
    out = dict(row)
    raw = out["bytes_hex"] or ""
    out["hex_lines"] = [
        " ".join(raw[i + j : i + j + 2] for j in range(0, 32, 2)).strip()
        for i in range(0, len(raw), 32)
    ]
    return out


def audit(conn: sqlite3.Connection, limit: int = 200) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in conn.execute(
            "SELECT a.id, a.at, a.user_name, a.action, a.detail, a.command_id,"
            " c.state AS command_state, c.result FROM audit a"
            " LEFT JOIN commands c ON c.id = a.command_id ORDER BY a.id DESC LIMIT ?",
            (limit,),
        )
    ]


def overview(
    conn: sqlite3.Connection, rates: Rates, stalled_after_s: float
) -> dict[str, Any]:
    """Everything of the overview page (and of /api/v1/state)."""
    counters = {r[0]: int(r[1]) for r in conn.execute("SELECT * FROM counters")}
    parked = int(
        _one(conn, "SELECT count(*) FROM dead_letters WHERE state = 'parked'") or 0
    )
    rate = rates.update(counters, parked)
    leg_rows = legs(conn, stalled_after_s)
    for row in leg_rows:
        # A leg without a counter here shows 0 rather than failing the page.
        name = LEG_COUNTERS.get(row["leg"], "")
        row["count"] = counters.get(name, 0)
        row["rate"] = round(rate.get(name, 0.0), 1)
    jour = journal(conn)
    box = outbox(conn)
    raw_new = int(_one(conn, "SELECT count(*) FROM raw_entries WHERE state = 0") or 0)
    changes_new = int(_one(conn, "SELECT count(*) FROM changes WHERE state = 0") or 0)
    unconfirmed = sum(
        n for lane in box["lanes"].values() for s, n in lane.items() if s != "confirmed"
    )
    lag_entries = (jour["unread"] or 0) + raw_new + changes_new + unconfirmed
    alarms = _alarms(counters, leg_rows, unconfirmed, box, parked, rates)
    if _one(
        conn,
        "SELECT 1 FROM meta WHERE key IN (?, ?)",
        SOURCE_DENIED_KEY,
        MINER_DENIED_KEY,
    ):
        # The IBM i refuses the relay's user: the miner's login or journal
        # reads, or the transformer's catalog reads (both retry meanwhile).
        alarms.append(Alarm("source_denied", ""))
    bad = bad_entry(bad_entry_row(conn))
    if bad is not None:
        alarms.append(bad)
    alarms += [Alarm(c, t) for c, t in guardian.alarms(guardian.guardian(conn))]
    return {
        "legs": leg_rows,
        "counters": counters,
        "lag_entries": lag_entries,
        "lag_s": box["oldest_age_s"],
        "oldest": box["oldest"],
        "unconfirmed": unconfirmed,
        "dead_letters": parked,
        "journal_unread": jour["unread"],
        "alarms": [a.shown() for a in alarms],
    }


SOURCE_DENIED_KEY = "transformer.alarm.source_denied"
MINER_DENIED_KEY = "miner.alarm.source_denied"
BAD_ENTRY_KEY = "miner.alarm.bad_entry"
# The miner's facts the alarm names (its meta row: appliance.miner._unusable).
BAD_ENTRY_FACTS = ("receiver", "sequence", "last_stored", "field", "value", "expected")
FACT_SHOWN = 200  # characters of one fact shown


def bad_entry(stored: object) -> Alarm | None:
    """The alarm of the miner's ``miner.alarm.bad_entry`` row, or None.

    The row is the miner's, but a value of another shape (not JSON, not an
    object, a fact missing or of an odd type) still raises the alarm, its
    unknown facts shown as ``?``, rather than failing the page.
    """
    if stored is None:
        return None
    try:
        value = json.loads(stored) if isinstance(stored, (str, bytes)) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        value = {}
    facts = {}
    for name in BAD_ENTRY_FACTS:
        fact = value.get(name)
        text = "?" if fact is None or isinstance(fact, (dict, list)) else str(fact)
        facts[name] = text[:FACT_SHOWN]
    return Alarm("bad_entry", f"{facts['receiver']}:{facts['sequence']}", facts)


def bad_entry_row(conn: sqlite3.Connection) -> object:
    """The stored value of the miner's unusable-entry alarm, or None."""
    return _one(conn, "SELECT value FROM meta WHERE key = ?", BAD_ENTRY_KEY)


def skip_args(stored: object) -> dict[str, Any] | None:
    """The ``skip_entry`` arguments of the entry the alarm names, or None.

    Only from the miner's own shape: ``sequence`` present, a whole number
    (``{"receiver", "sequence"}``) or null (the row without a sequence:
    ``{"receiver", "null_after": last_stored}``), and a receiver the command
    takes as written. Anything else (the odd shapes :func:`bad_entry` shows
    as ``?``, a receiver the command would upper-case) names no entry the
    miner would agree on, so the page offers no skip.
    """
    try:
        value = json.loads(stored) if isinstance(stored, (str, bytes)) else None
    except ValueError:
        return None
    if not isinstance(value, dict) or "sequence" not in value:
        return None
    if value["sequence"] is None:
        name, number = "null_after", value.get("last_stored")
    else:
        name, number = "sequence", value["sequence"]
    if isinstance(number, bool) or not isinstance(number, int):
        return None
    try:
        args = skip_entry_args({"receiver": value.get("receiver"), name: number})
    except CommandError:
        return None
    return args if args["receiver"] == value["receiver"] else None


def skip_key(args: dict[str, Any]) -> str:
    """The entry of ``skip_entry`` arguments as one ASCII word: the name a
    confirmation form carries back, compared with the alarm's at POST."""
    if "sequence" in args:
        return f"{args['receiver']}:{args['sequence']}"
    return f"{args['receiver']}:null-after-{args['null_after']}"


def _alarms(  # noqa: PLR0917 - one call site, each fact named
    counters: dict[str, int],
    leg_rows: list[dict[str, Any]],
    unconfirmed: int,
    box: dict[str, Any],
    parked: int,
    rates: Rates,
) -> list[Alarm]:
    alarms = []
    gap = counters.get("miner.data_gaps", 0) > 0 or any(
        r["state"] == "data_gap" for r in leg_rows
    )
    if gap:
        alarms.append(Alarm("data_gap", ""))
    for row in leg_rows:
        if row["state"] in ("stalled", "stopped", "missing"):
            alarms.append(Alarm("leg_" + row["state"], row["leg"]))
        elif row["state"] == "paused":
            alarms.append(Alarm("leg_paused", row["leg"]))
    if unconfirmed >= OUTBOX_ALARM_ROWS or box["oldest_age_s"] >= OUTBOX_ALARM_AGE_S:
        alarms.append(Alarm("outbox_growing", str(unconfirmed)))
    if rates.parked_before is not None and parked > rates.parked_before:
        alarms.append(Alarm("dead_letters_growing", str(parked)))
    elif parked:
        alarms.append(Alarm("dead_letters", str(parked)))
    return alarms
