"""The guardian's hub end: compare the store's checksums with the ODH, ask back.

Contract: docs/guardian.md (sections 2, 4 and 6). The sink stores each ``g``
message in ``guardian_pending`` inside its apply transaction; after each
batch it calls :func:`evaluate` then :func:`publish`.

1. :func:`evaluate` takes, in ``id`` order and at most ``limit`` at a time,
   the pending items whose fences are met (for every lane named in
   ``fences``, the watermark of that store and epoch has reached it: every
   change the box emitted before the checksum is in the ODH). For each, in
   ONE transaction: the hub side is computed in SQL over the store's rows
   with ``version <= v_low`` and not deleted, compared, recorded
   (``guardian_mismatches``, ``guardian_keys``), the answer is queued in
   ``guardian_outbox`` and the item is marked evaluated. Then runs with
   nothing outstanding get their ``done`` message the same way.
2. :func:`publish` sends the queued messages on the confirmation topic (key
   = store id, the sink's producer, so the shipper's partition) and marks
   them published once flushed.

Invariants:

- Request ids are deterministic: ``<run>/<lane_seq of the g message>``
  (``.<n>`` for the n-th further chunk of a long repair list) and
  ``<run>/<table>/done``. ``guardian_outbox`` is unique per (store,
  request) and written ``ON CONFLICT DO NOTHING``, so an item evaluated
  twice, or a message published twice after a crash between flush and mark,
  yields the same request again, which the shipper stores once.
- A bucket is compared only over rows at or below ``v_low``: a row changed
  after the read began cannot look like drift (it is "skipped" at key level).
- Mode ``log`` narrows down to keys and records them, never asks a repair.

Worked example (bits 6, v_low 41): store bucket 12 says (15 rows, sum S);
the hub finds (14, S') -> mismatch recorded, narrow [[6, 12]] sent as
request ``R/3``. The store answers ``kind: keys`` for [6, 12] with 15 keys;
the hub lacks one (missing) and one hub row has version 44 > 41 (skipped):
repair [pk] sent as ``R/5``; mismatch (6, 12) resolved. When the ``r`` row
of that pk is applied, its ``guardian_keys`` row gets its outcome; nothing
is outstanding any more, so ``done`` goes out with the summary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from appliance.hub import odh

logger = logging.getLogger(__name__)

MODES = frozenset({"repair", "log"})
KINDS = frozenset({"buckets", "keys"})
MAX_BUCKETS = 1024
MAX_KEYS = 2000
REPAIR_CHUNK = 1000
_TWO64 = 2**64
_TWO63 = 2**63
_FLUSH_S = 10.0


# -- content checks (the sink parks what fails them) ------------------------


def body_problem(body: Any, version: Any) -> str:
    """Why a ``g`` message's ``guardian`` object cannot be evaluated, or ''."""
    if not isinstance(body, dict):
        return "guardian: expected a JSON object"
    for name in ("run", "table"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"guardian.{name}: expected a non-empty string"
    if body.get("mode") not in MODES:
        return f"guardian.mode: expected repair or log (got {_shown(body.get('mode'))})"
    if body.get("kind") not in KINDS:
        return (
            f"guardian.kind: expected buckets or keys (got {_shown(body.get('kind'))})"
        )
    if body.get("v_low", version) != version:
        return "guardian.v_low: expected the message's version"
    if body.get("request") is not None and not isinstance(body["request"], str):
        return "guardian.request: expected a string or null"
    for name in ("part", "parts"):
        if not _is_int(body.get(name)) or body[name] < 1:
            return f"guardian.{name}: expected an integer >= 1"
    fences = body.get("fences")
    if not isinstance(fences, dict) or not all(
        k.isdigit() and _is_int(v) and v >= 0 for k, v in fences.items()
    ):
        return "guardian.fences: expected an object of lane -> lane_seq"
    if body["kind"] == "buckets":
        return _buckets_problem(body)
    return _keys_problem(body)


def _buckets_problem(body: dict[str, Any]) -> str:
    bits = body.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 0 <= bits <= 64:
        return f"guardian.bits: expected an integer 0..64 (got {_shown(bits)})"
    span = body.get("prefixes")
    if (
        not isinstance(span, list)
        or len(span) != 2
        or not all(_is_bucket(b) and b[0] == bits for b in span)
        or span[0][1] > span[1][1]
    ):
        return "guardian.prefixes: expected [[bits, first], [bits, last]]"
    buckets = body.get("buckets")
    if not isinstance(buckets, list) or len(buckets) > MAX_BUCKETS:
        return f"guardian.buckets: expected a list of at most {MAX_BUCKETS}"
    for item in buckets:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not _is_int(item[0])
            or not span[0][1] <= item[0] <= span[1][1]
            or not _is_int(item[1])
            or item[1] < 0
            or not _is_decimal(item[2])
        ):
            return f"guardian.buckets: bad entry {_shown(item)}"
    return ""


def _keys_problem(body: dict[str, Any]) -> str:
    buckets = body.get("prefixes")
    if not isinstance(buckets, list) or not all(_is_bucket(b) for b in buckets):
        return "guardian.prefixes: expected a list of [bits, prefix]"
    if len(buckets) > MAX_BUCKETS:
        return f"guardian.prefixes: expected at most {MAX_BUCKETS} buckets"
    keys = body.get("keys")
    if not isinstance(keys, list) or len(keys) > MAX_KEYS:
        return f"guardian.keys: expected a list of at most {MAX_KEYS}"
    for item in keys:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not (item[1] is None or _is_int(item[1]) or _is_decimal(item[1]))
        ):
            return f"guardian.keys: bad entry {_shown(item)}"
    return ""


def _is_bucket(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and _is_int(value[0])
        and 0 <= value[0] <= 64
        and _is_int(value[1])
        and 0 <= value[1] < 2 ** value[0]
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_decimal(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 40


def _shown(value: Any) -> str:
    return repr(value)[:40]


# -- bucket arithmetic (docs/guardian.md section 2) --------------------------


def signed_ranges(buckets: Sequence[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Signed ``pk_hash`` ranges of buckets given as (bits, first, last)."""
    ranges: list[tuple[int, int]] = []
    for bits, first, last in buckets:
        shift = 64 - bits
        low, high = first << shift, ((last + 1) << shift) - 1
        if high < _TWO63:
            ranges.append((low, high))
        elif low >= _TWO63:
            ranges.append((low - _TWO64, high - _TWO64))
        else:
            ranges.append((low, _TWO63 - 1))
            ranges.append((-_TWO63, high - _TWO64))
    return ranges


def prefix_of(pk_hash: int, bits: int) -> int:
    """The bucket of a signed ``pk_hash`` at ``bits``."""
    return (pk_hash % _TWO64) >> (64 - bits) if bits else 0


# -- the hub side, in SQL ----------------------------------------------------


def _table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s)", (f'"{schema}"."{table.lower()}"',)
    ).fetchone()
    return bool(row and row[0])


def hub_buckets(
    conn: psycopg.Connection[Any],
    schema: str,
    store_id: str,
    table: str,
    *,
    v_low: int,
    bits: int,
    first: int,
    last: int,
) -> dict[int, tuple[int, int]]:
    """prefix -> (count, sum of row_hash mod 2**64) of rows at or below v_low."""
    if not _table_exists(conn, schema, table):
        return {}
    prefix: sql.Composable
    if bits == 0:
        prefix = sql.SQL("0::bigint")
    else:
        mask = (1 << bits) - 1 if bits < 64 else -1
        prefix = sql.SQL("(pk_hash >> {}) & {}").format(
            sql.Literal(64 - bits), sql.Literal(mask)
        )
    lows, highs = zip(*signed_ranges([(bits, first, last)]), strict=True)
    rows = conn.execute(
        sql.SQL(
            "SELECT {prefix} AS prefix, count(*), sum(" + odh.ROW_HASH_SQL + ")"
            " FROM {t} JOIN unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi)"
            " ON pk_hash BETWEEN r.lo AND r.hi"
            " WHERE store_id = %s AND NOT deleted AND version <= %s GROUP BY 1"
        ).format(prefix=prefix, t=odh.table_ident(schema, table)),
        (list(lows), list(highs), store_id, v_low),
    ).fetchall()
    return {int(r[0]) % _TWO64: (int(r[1]), int(r[2] or 0) % _TWO64) for r in rows}


def hub_keys(
    conn: psycopg.Connection[Any],
    schema: str,
    store_id: str,
    table: str,
    buckets: Sequence[tuple[int, int]],
) -> dict[str, tuple[int | None, int, bool]]:
    """pk -> (row_hash, version, deleted) of every row in the buckets."""
    if not buckets or not _table_exists(conn, schema, table):
        return {}
    ranges = signed_ranges([(bits, prefix, prefix) for bits, prefix in buckets])
    lows, highs = zip(*ranges, strict=True)
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT pk, " + odh.ROW_HASH_SQL + ", version, deleted"
            " FROM {t} JOIN unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi)"
            " ON pk_hash BETWEEN r.lo AND r.hi WHERE store_id = %s"
        ).format(t=odh.table_ident(schema, table)),
        (list(lows), list(highs), store_id),
    ).fetchall()
    return {r[0]: (r[1], int(r[2]), bool(r[3])) for r in rows}


def compare_keys(
    store: dict[str, int | None],
    hub: dict[str, tuple[int | None, int, bool]],
    v_low: int,
) -> dict[str, tuple[str, int | None, int | None, int | None, bool | None]]:
    """pk -> (what, store hash, hub hash, hub version, hub deleted) per difference.

    ``what`` is ``missing`` (the hub has no live row), ``differs``, ``extra``
    (the hub has a live row the store lacks) or ``skipped`` (changed after
    the read began, on either side: the next run sees it settled).
    """
    found: dict[str, tuple[str, int | None, int | None, int | None, bool | None]] = {}
    for pk in store.keys() | hub.keys():
        mine = store.get(pk)
        theirs = hub.get(pk)
        h_hash, h_version, h_deleted = theirs if theirs else (None, None, None)
        if (pk in store and mine is None) or (h_version or 0) > v_low:
            what = "skipped"
        elif pk not in store:
            if h_deleted:
                continue
            what = "extra"
        elif theirs is None or h_deleted:
            what = "missing"
        elif h_hash != mine:
            what = "differs"
        else:
            continue
        found[pk] = (what, mine, h_hash, h_version, h_deleted)
    return found


# -- evaluation --------------------------------------------------------------

_READY = (
    "SELECT p.id, p.store_id, p.epoch, p.lane_seq, p.run, p.table_name, p.mode,"
    " p.kind, p.request, p.v_low, p.body FROM {s}.guardian_pending p"
    " WHERE p.state = 0 AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(p.fences) f"
    " LEFT JOIN {s}.watermarks w ON w.store_id = p.store_id AND w.epoch = p.epoch"
    " AND w.lane = f.key::int WHERE coalesce(w.upto, 0) < f.value::bigint)"
    " ORDER BY p.id LIMIT %s FOR UPDATE OF p SKIP LOCKED"
)


def evaluate(conn: psycopg.Connection[Any], schema: str, limit: int) -> int:
    """Evaluate up to ``limit`` ready items, then close finished runs; return work.

    One transaction; the caller's connection must be in autocommit mode.
    """
    ident = odh.schema_ident(schema)
    with conn.transaction():
        items = conn.execute(sql.SQL(_READY).format(s=ident), (limit,)).fetchall()
        for item in items:
            _evaluate_one(conn, schema, item)
        finished = _finish_runs(conn, schema, limit)
    if items or finished:
        logger.debug("guardian evaluated count=%d runs_done=%d", len(items), finished)
    return len(items) + finished


def _evaluate_one(conn: psycopg.Connection[Any], schema: str, item: Any) -> None:
    pid, store_id, epoch, lane_seq, run, table, mode, kind, request, v_low, body = item
    ident = odh.schema_ident(schema)
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.guardian_runs (store_id, epoch, run, table_name, mode,"
            " v_low) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (store_id, run, table_name) DO UPDATE SET updated_at = now()"
        ).format(ident),
        (store_id, epoch, run, table, mode, v_low),
    )
    if request is None:
        conn.execute(
            sql.SQL(
                "UPDATE {}.guardian_runs SET parts = %s, rows_read = %s"
                " WHERE store_id = %s AND run = %s AND table_name = %s"
            ).format(ident),
            (body["parts"], _int_or_zero(body.get("rows_read")), store_id, run, table),
        )
    ask = f"{run}/{lane_seq}"
    reply: dict[str, Any] = {"narrow": [], "repair": []}
    if kind == "buckets":
        reply["narrow"] = _compare_buckets(conn, schema, item, ask)
    else:
        reply["repair"] = _compare_key_list(conn, schema, item, ask)
    if request is not None:
        _resolve(conn, schema, item)
    chunks = [
        reply["repair"][i : i + REPAIR_CHUNK]
        for i in range(0, len(reply["repair"]), REPAIR_CHUNK)
    ]
    for n, chunk in enumerate(chunks or [[]]):
        if not chunk and not reply["narrow"]:
            break
        rid = ask if n == 0 else f"{ask}.{n}"
        message = _message(store_id, epoch, run, table, rid)
        message["narrow"] = reply["narrow"] if n == 0 else []
        message["repair"] = chunk
        _queue(conn, schema, store_id, rid, message)
    conn.execute(
        sql.SQL(
            "UPDATE {}.guardian_pending SET state = 1, evaluated_at = now()"
            " WHERE id = %s"
        ).format(ident),
        (pid,),
    )


def _compare_buckets(
    conn: psycopg.Connection[Any], schema: str, item: Any, ask: str
) -> list[list[int]]:
    """Bucket sums of one part against the hub; the buckets to narrow."""
    _pid, store_id, _e, _seq, run, table, _mode, _kind, _req, v_low, body = item
    bits = body["bits"]
    first, last = body["prefixes"][0][1], body["prefixes"][1][1]
    theirs = {b[0]: (b[1], int(b[2]) % _TWO64) for b in body["buckets"]}
    mine = hub_buckets(
        conn, schema, store_id, table, v_low=v_low, bits=bits, first=first, last=last
    )
    differ = sorted(
        p for p in theirs.keys() | mine.keys() if theirs.get(p) != mine.get(p)
    )
    if differ:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {}.guardian_mismatches (store_id, run, table_name,"
                    " bits, prefix, store_count, store_sum, hub_count, hub_sum,"
                    " request) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING"
                ).format(odh.schema_ident(schema)),
                [
                    (
                        store_id,
                        run,
                        table,
                        bits,
                        p,
                        *theirs.get(p, (0, 0)),
                        *mine.get(p, (0, 0)),
                        ask,
                    )
                    for p in differ
                ],
            )
    return [[bits, p] for p in differ]


def _compare_key_list(
    conn: psycopg.Connection[Any], schema: str, item: Any, ask: str
) -> list[str]:
    """Keys of listed buckets against the hub; the pks to repair."""
    _pid, store_id, _e, _seq, run, table, mode, _kind, _req, v_low, body = item
    store = {
        pk: None if value is None else _signed(int(value)) for pk, value in body["keys"]
    }
    hub = hub_keys(conn, schema, store_id, table, [tuple(b) for b in body["prefixes"]])
    found = compare_keys(store, hub, v_low)
    repair = sorted(pk for pk, f in found.items() if f[0] != "skipped")
    if mode != "repair":
        repair = []
    chunk_of = {pk: i // REPAIR_CHUNK for i, pk in enumerate(repair)}
    rows = []
    for pk, (what, mine, theirs, version, deleted) in sorted(found.items()):
        rid = None
        if pk in chunk_of:
            n = chunk_of[pk]
            rid = ask if n == 0 else f"{ask}.{n}"
        rows.append(
            (store_id, run, table, pk, what, mine, theirs, version, deleted, v_low, rid)
        )
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {}.guardian_keys (store_id, run, table_name, pk,"
                    " what, store_hash, hub_hash, hub_version, hub_deleted, v_low,"
                    " request) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING"
                ).format(odh.schema_ident(schema)),
                rows,
            )
    return repair


def _resolve(conn: psycopg.Connection[Any], schema: str, item: Any) -> None:
    """Mark the narrowed buckets this answer part completes.

    A narrowed bucket is answered when a part covers its last sub-bucket (the
    store sends the parts of one answer in order, so the earlier ones are in)
    or, for ``kind: keys``, lists the bucket or one inside it.
    """
    _pid, store_id, _e, _seq, run, table, _mode, _kind, request, _v, body = item
    if body["kind"] == "buckets":
        bits = body["bits"]
        covered = [(bits, body["prefixes"][0][1], body["prefixes"][1][1])]
    else:
        covered = [(b[0], b[1], b[1]) for b in body["prefixes"]]
    open_rows = conn.execute(
        sql.SQL(
            "SELECT bits, prefix FROM {}.guardian_mismatches WHERE store_id = %s"
            " AND run = %s AND table_name = %s AND request = %s AND NOT resolved"
        ).format(odh.schema_ident(schema)),
        (store_id, run, table, request),
    ).fetchall()
    done = []
    for bits, value in open_rows:
        prefix = int(value)
        for c_bits, first, last in covered:
            if c_bits < bits:
                continue
            shift = c_bits - bits
            end = ((prefix + 1) << shift) - 1
            inside = prefix << shift <= last and first <= end
            if inside and (body["kind"] == "keys" or first <= end <= last):
                done.append((store_id, run, table, bits, prefix))
                break
    if done:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "UPDATE {}.guardian_mismatches SET resolved = true"
                    " WHERE store_id = %s AND run = %s AND table_name = %s"
                    " AND bits = %s AND prefix = %s"
                ).format(odh.schema_ident(schema)),
                done,
            )


_FINISHED = (
    "SELECT r.store_id, r.epoch, r.run, r.table_name, r.mode, r.parts, r.rows_read"
    " FROM {s}.guardian_runs r WHERE r.state = 'open' AND r.parts IS NOT NULL"
    " AND r.parts <= (SELECT count(DISTINCT p.body->>'part')"
    " FROM {s}.guardian_pending p WHERE p.store_id = r.store_id AND p.run = r.run"
    " AND p.table_name = r.table_name AND p.request IS NULL AND p.state = 1)"
    " AND NOT EXISTS (SELECT 1 FROM {s}.guardian_pending p"
    " WHERE p.store_id = r.store_id AND p.run = r.run"
    " AND p.table_name = r.table_name AND p.state = 0)"
    " AND NOT EXISTS (SELECT 1 FROM {s}.guardian_mismatches m"
    " WHERE m.store_id = r.store_id AND m.run = r.run"
    " AND m.table_name = r.table_name AND NOT m.resolved)"
    " AND NOT EXISTS (SELECT 1 FROM {s}.guardian_keys k"
    " WHERE k.store_id = r.store_id AND k.run = r.run"
    " AND k.table_name = r.table_name AND k.request IS NOT NULL"
    " AND k.outcome IS NULL)"
    " ORDER BY r.started_at LIMIT %s FOR UPDATE OF r SKIP LOCKED"
)


def _settle_superseded(conn: psycopg.Connection[Any], schema: str, limit: int) -> None:
    """Asked repairs overtaken by a newer change count as answered.

    The store drops a key that changed while it re-read it (section 1): no
    ``r`` comes for it, the change itself does, with a version above the
    check's ``v_low``. Once the ODH row carries such a version, the key is
    settled (outcome ``superseded``); the next run checks it anyway.
    """
    ident = odh.schema_ident(schema)
    waiting = conn.execute(
        sql.SQL(
            "SELECT DISTINCT store_id, run, table_name FROM {}.guardian_keys"
            " WHERE request IS NOT NULL AND outcome IS NULL LIMIT %s"
        ).format(ident),
        (limit,),
    ).fetchall()
    for store_id, run, table in waiting:
        if not _table_exists(conn, schema, table):
            continue
        conn.execute(
            sql.SQL(
                "UPDATE {s}.guardian_keys k SET outcome = 'superseded' FROM {t} t"
                " WHERE t.store_id = k.store_id AND t.pk = k.pk AND t.version > k.v_low"
                " AND k.store_id = %s AND k.run = %s AND k.table_name = %s"
                " AND k.request IS NOT NULL AND k.outcome IS NULL"
            ).format(s=ident, t=odh.table_ident(schema, table)),
            (store_id, run, table),
        )


def _finish_runs(conn: psycopg.Connection[Any], schema: str, limit: int) -> int:
    """Send ``done`` for runs and tables with nothing outstanding."""
    ident = odh.schema_ident(schema)
    _settle_superseded(conn, schema, limit)
    runs = conn.execute(sql.SQL(_FINISHED).format(s=ident), (limit,)).fetchall()
    for store_id, epoch, run, table, mode, parts, rows_read in runs:
        summary = run_summary(conn, schema, store_id, run, table)
        summary.update({"mode": mode, "parts": parts, "rows_read": rows_read})
        conn.execute(
            sql.SQL(
                "UPDATE {}.guardian_runs SET state = 'done', finished_at = now(),"
                " updated_at = now(), summary = %s"
                " WHERE store_id = %s AND run = %s AND table_name = %s"
            ).format(ident),
            (Jsonb(summary), store_id, run, table),
        )
        logger.info(
            "guardian run done store=%s run=%s table=%s missing=%d differs=%d"
            " extra=%d skipped=%d",
            store_id,
            run,
            table,
            summary["missing"],
            summary["differs"],
            summary["extra"],
            summary["skipped"],
        )
        rid = f"{run}/{table}/done"
        message = _message(store_id, epoch, run, table, rid)
        message.update({"done": True, "summary": summary})
        _queue(conn, schema, store_id, rid, message)
    return len(runs)


def run_summary(
    conn: psycopg.Connection[Any], schema: str, store_id: str, run: str, table: str
) -> dict[str, int]:
    """Counts of one run and table: buckets differing, keys by kind, repairs."""
    ident = odh.schema_ident(schema)
    where = "WHERE store_id = %s AND run = %s AND table_name = %s"
    args = (store_id, run, table)
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.guardian_mismatches " + where).format(ident),
        args,
    ).fetchone()
    summary = {"buckets_differ": int(row[0]) if row else 0}
    for what in ("missing", "differs", "extra", "skipped"):
        summary[what] = 0
    for outcome in ("inserted", "changed", "same", "refused_newer", "deleted"):
        summary[outcome] = 0
    summary["absent"] = 0
    summary["superseded"] = 0
    summary["repair_asked"] = 0
    for what, asked, outcome, count in conn.execute(
        sql.SQL(
            "SELECT what, request IS NOT NULL, outcome, count(*)"
            " FROM {}.guardian_keys " + where + " GROUP BY 1, 2, 3"
        ).format(ident),
        args,
    ).fetchall():
        summary[what] += count
        if asked:
            summary["repair_asked"] += count
        if outcome:
            summary[outcome] += count
    return summary


def _message(
    store_id: str, epoch: int, run: str, table: str, request: str
) -> dict[str, Any]:
    return {
        "store": store_id,
        "epoch": epoch,
        "type": "guardian",
        "run": run,
        "table": table,
        "request": request,
        "narrow": [],
        "repair": [],
        "done": False,
    }


def _queue(
    conn: psycopg.Connection[Any],
    schema: str,
    store_id: str,
    request: str,
    message: dict[str, Any],
) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {}.guardian_outbox (store_id, request, body)"
            " VALUES (%s, %s, %s) ON CONFLICT (store_id, request) DO NOTHING"
        ).format(odh.schema_ident(schema)),
        (store_id, request, Jsonb(message)),
    )


def _int_or_zero(value: Any) -> int:
    return value if _is_int(value) else 0


def _signed(value: int) -> int:
    """A hash sent unsigned (or as any integer) as the signed 64-bit value."""
    value %= _TWO64
    return value - _TWO64 if value >= _TWO63 else value


# -- publishing ----------------------------------------------------------------


def publish(
    conn: psycopg.Connection[Any], schema: str, producer: Any, topic: str, limit: int
) -> int:
    """Send queued hub -> store messages; mark them once flushed; return sent.

    A message sent but not marked (crash, flush timeout) is sent again next
    time with the same request id, which the shipper stores once.
    """
    ident = odh.schema_ident(schema)
    rows = conn.execute(
        sql.SQL(
            "SELECT id, store_id, body FROM {}.guardian_outbox"
            " WHERE published_at IS NULL ORDER BY id LIMIT %s"
        ).format(ident),
        (limit,),
    ).fetchall()
    if not rows:
        return 0
    for _id, store_id, body in rows:
        while True:
            try:
                producer.produce(topic, value=json.dumps(body).encode(), key=store_id)
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(_FLUSH_S)
    if left:
        logger.warning("guardian messages not flushed topic=%s count=%d", topic, left)
        return 0
    conn.execute(
        sql.SQL(
            "UPDATE {}.guardian_outbox SET published_at = now() WHERE id = ANY(%s)"
        ).format(ident),
        ([r[0] for r in rows],),
    )
    return len(rows)
