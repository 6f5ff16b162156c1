"""Checksums and answers to the hub, from the run cache (docs/guardian.md §3-§5).

The cache holds ``(run, table, pk, pk_hash, row_hash)`` for every row a check
read; ``row_hash`` is NULL for a key changed during the read (the hub skips
it). Everything here runs inside the caller's SQLite transaction and writes
``guardian_outbound`` rows, which the enricher turns into ``op: "g"``
messages once the changes before them are in the outbox.

Sums are taken in SQL without overflow: each 64-bit hash is split into its
signed high 32 bits (``h >> 32``, an arithmetic shift in SQLite) and its
unsigned low 32 bits (``h & 0xFFFFFFFF``); a million rows sum to at most
2**51 in each, and ``high * 2**32 + low`` taken mod 2**64 is the sum of the
hashes mod 2**64.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from appliance.guardian import digest

BUCKETS_PER_PART = 1024
KEYS_PER_PART = 2000
ROWS_PER_BUCKET = 1000
MIN_BITS = 4
MAX_BITS = 63  # the SQL prefix arithmetic needs a shift of at least 1


@dataclass(frozen=True)
class RunInfo:
    """What every part of a run repeats."""

    run: str
    table: str
    mode: str
    v_low: int
    rows_read: int
    changed: int


def run_info(conn: sqlite3.Connection, run: str, table: str) -> RunInfo | None:
    """The figures of a check run the hub may still ask about, or None."""
    row = conn.execute(
        "SELECT mode, v_low, rows_read, changed FROM guardian_runs"
        " WHERE run = ? AND table_name = ? AND kind = 'check'"
        " AND state IN ('sent', 'done')",
        (run, table),
    ).fetchone()
    if row is None:
        return None
    return RunInfo(run, table, row[0], int(row[1] or 0), row[2], row[3])


def bits_for(rows: int) -> int:
    """Bits so that a bucket holds about 1,000 rows (at least 4)."""
    if rows <= ROWS_PER_BUCKET * 2**MIN_BITS:
        return MIN_BITS
    return min(MAX_BITS, math.ceil(math.log2(rows / ROWS_PER_BUCKET)))


def _prefix_sql(bits: int) -> str:
    return f"((pk_hash >> {64 - bits}) & {(1 << bits) - 1})"


def bucket_sums(
    conn: sqlite3.Connection,
    run: str,
    table: str,
    bits: int,
    *,
    low: int = digest.bucket_range(0, 0)[0],
    high: int = digest.bucket_range(0, 0)[1],
) -> list[list[Any]]:
    """``[prefix, count, sum]`` of the non-changed cached rows in a hash range."""
    rows = conn.execute(
        f"SELECT {_prefix_sql(bits)} AS p, count(*),"
        " sum(row_hash >> 32), sum(row_hash & 4294967295) FROM guardian_cache"
        " WHERE run = ? AND table_name = ? AND row_hash IS NOT NULL"
        " AND pk_hash BETWEEN ? AND ? GROUP BY p ORDER BY p",
        (run, table, low, high),
    ).fetchall()
    return [
        [int(p), int(count), str((int(hi) * 2**32 + int(lo)) % 2**64)]
        for p, count, hi, lo in rows
    ]


def without_keys(
    conn: sqlite3.Connection,
    run: str,
    table: str,
    sums: list[list[Any]],
    *,
    bits: int,
    pks: list[str],
) -> list[list[Any]]:
    """``sums`` (of :func:`bucket_sums`) less the cached rows of ``pks``.

    Used for keys found changed during the read, before their hashes are
    nulled, so the whole-table sums need not be read again under the write
    lock. Keys not cached, or already null, change nothing.
    """
    by_prefix = {int(p): [int(n), int(total)] for p, n, total in sums}
    for start in range(0, len(pks), 500):
        chunk = pks[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for pk_hash, row_hash in conn.execute(
            "SELECT pk_hash, row_hash FROM guardian_cache WHERE run = ?"
            f" AND table_name = ? AND pk IN ({marks}) AND row_hash IS NOT NULL",
            (run, table, *chunk),
        ):
            prefix = digest.prefix_of(int(pk_hash), bits)
            entry = by_prefix[prefix]
            entry[0] -= 1
            entry[1] = (entry[1] - int(row_hash)) % 2**64
    return [
        [prefix, n, str(total)]
        for prefix, (n, total) in sorted(by_prefix.items())
        if n > 0
    ]


def write_part(
    conn: sqlite3.Connection,
    info: RunInfo,
    after_change_id: int,
    body: dict[str, Any],
) -> int:
    """Queue one part for the enricher; return its size in bytes."""
    full = {
        "run": info.run,
        "table": info.table,
        "mode": info.mode,
        "v_low": info.v_low,
        **body,
        "rows_read": info.rows_read,
        "changed": info.changed,
    }
    text = json.dumps(full, ensure_ascii=False, separators=(",", ":"))
    conn.execute(
        "INSERT INTO guardian_outbound (created_at, after_change_id, table_name,"
        " body, state) VALUES (?, ?, ?, ?, 0)",
        (time.time(), after_change_id, info.table, text),
    )
    return len(text.encode())


def checksum_parts(
    conn: sqlite3.Connection,
    info: RunInfo,
    after_change_id: int,
    sums: list[list[Any]] | None = None,
) -> tuple[int, int]:
    """Queue the bucket checksums of a whole run; return (parts, bytes).

    ``sums`` are the run's bucket sums when the caller made them already.
    """
    bits = bits_for(info.rows_read)
    if sums is None:
        sums = bucket_sums(conn, info.run, info.table, bits)
    buckets = 1 << bits
    parts = max(1, math.ceil(buckets / BUCKETS_PER_PART))
    size = 0
    for part in range(parts):
        first = part * BUCKETS_PER_PART
        last = min(buckets, first + BUCKETS_PER_PART) - 1
        size += write_part(
            conn,
            info,
            after_change_id,
            {
                "kind": "buckets",
                "bits": bits,
                "part": part + 1,
                "parts": parts,
                "prefixes": [[bits, first], [bits, last]],
                "buckets": [b for b in sums if first <= b[0] <= last],
                "keys": None,
                "request": None,
            },
        )
    return parts, size


def narrow_parts(
    conn: sqlite3.Connection,
    info: RunInfo,
    after_change_id: int,
    *,
    request: str,
    narrow: list[list[int]],
    narrow_bits: int,
    keys_at_most: int,
) -> tuple[int, int]:
    """Answer a ``narrow`` request: finer buckets, or keys; return (parts, bytes)."""
    bodies: list[dict[str, Any]] = []
    key_buckets: list[list[int]] = []
    keys: list[list[Any]] = []
    limit = min(keys_at_most, KEYS_PER_PART)
    for bits, prefix in narrow:
        low, high = digest.bucket_range(bits, prefix)
        held = conn.execute(
            "SELECT count(*) FROM guardian_cache WHERE run = ? AND table_name = ?"
            " AND pk_hash BETWEEN ? AND ?",
            (info.run, info.table, low, high),
        ).fetchone()[0]
        finer = bits + narrow_bits
        if held <= limit or finer > MAX_BITS:
            found = conn.execute(
                "SELECT pk, row_hash FROM guardian_cache WHERE run = ?"
                " AND table_name = ? AND pk_hash BETWEEN ? AND ? ORDER BY pk_hash",
                (info.run, info.table, low, high),
            ).fetchall()
            if keys and len(keys) + len(found) > KEYS_PER_PART:
                bodies.append(_keys_body(key_buckets, keys))
                key_buckets, keys = [], []
            key_buckets.append([bits, prefix])
            keys.extend([str(pk), None if h is None else int(h)] for pk, h in found)
            continue
        first = prefix << narrow_bits
        last = first + (1 << narrow_bits) - 1
        bodies.append(
            {
                "kind": "buckets",
                "bits": finer,
                "prefixes": [[finer, first], [finer, last]],
                "buckets": bucket_sums(
                    conn, info.run, info.table, finer, low=low, high=high
                ),
                "keys": None,
            }
        )
    if key_buckets:
        bodies.append(_keys_body(key_buckets, keys))
    size = 0
    for number, body in enumerate(bodies, start=1):
        body.update(part=number, parts=len(bodies), request=request)
        size += write_part(conn, info, after_change_id, body)
    return len(bodies), size


def _keys_body(buckets: list[list[int]], keys: list[list[Any]]) -> dict[str, Any]:
    return {
        "kind": "keys",
        "bits": buckets[0][0],
        "prefixes": buckets,
        "buckets": None,
        "keys": keys,
    }
