"""Checksum parts and narrow answers from the run cache (docs/guardian.md §3-§4)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import store
from appliance.guardian import digest, parts

INFO = parts.RunInfo("9-1", "PRIX", "repair", 42, 300, 1)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = store.connect(tmp_path / "pipeline.db")
    rows = []
    for n in range(300):
        pk = digest.canonical_pk({"ARTNUM": f"{n:06d}"})
        data = {"ARTNUM": f"{n:06d}", "PRIX": f"{n}.00"}
        row_hash = None if n == 7 else digest.row_hash(pk, data)
        rows.append(("9-1", "PRIX", pk, digest.pk_hash(pk), row_hash))
    with store.transaction(connection):
        connection.executemany(
            "INSERT INTO guardian_cache VALUES (?, ?, ?, ?, ?)", rows
        )
    yield connection
    connection.close()


def expected(conn: sqlite3.Connection, bits: int) -> dict[int, tuple[int, str]]:
    """Per bucket, (count, sum) computed in Python from the cache."""
    found: dict[int, list[int]] = {}
    for pk_hash, row_hash in conn.execute(
        "SELECT pk_hash, row_hash FROM guardian_cache WHERE row_hash IS NOT NULL"
    ):
        found.setdefault(digest.prefix_of(pk_hash, bits), []).append(row_hash)
    return {p: digest.add_hashes(h) for p, h in found.items()}


def bodies(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT body FROM guardian_outbound ORDER BY id").fetchall()
    return [json.loads(r[0]) for r in rows]


def test_checksums_in_sql_equal_the_sums_computed_in_python(
    conn: sqlite3.Connection,
) -> None:
    """One part at 4 bits; the changed row is out of every sum."""
    with store.transaction(conn):
        assert parts.checksum_parts(conn, INFO, after_change_id=5)[0] == 1
    [body] = bodies(conn)
    assert (body["kind"], body["bits"], body["prefixes"]) == (
        "buckets",
        4,
        [[4, 0], [4, 15]],
    )
    assert {b[0]: (b[1], b[2]) for b in body["buckets"]} == expected(conn, 4)
    assert sum(b[1] for b in body["buckets"]) == 299
    assert (body["v_low"], body["request"], body["part"], body["parts"]) == (
        42,
        None,
        1,
        1,
    )


def test_a_full_bucket_is_split_and_a_small_one_listed_key_by_key(
    conn: sqlite3.Connection,
) -> None:
    """keys_at_most decides: sub-buckets at bits + narrow_bits, or the keys."""
    with store.transaction(conn):
        parts.narrow_parts(
            conn,
            INFO,
            5,
            request="9-1/3",
            narrow=[[1, 0]],
            narrow_bits=6,
            keys_at_most=10,
        )
    [split] = bodies(conn)
    assert (split["kind"], split["bits"], split["request"]) == ("buckets", 7, "9-1/3")
    assert split["prefixes"] == [[7, 0], [7, 63]]
    assert {b[0]: (b[1], b[2]) for b in split["buckets"]} == {
        p: v for p, v in expected(conn, 7).items() if p < 64
    }

    bucket = digest.prefix_of(
        digest.pk_hash(digest.canonical_pk({"ARTNUM": "000007"})), 4
    )
    with store.transaction(conn):
        conn.execute("DELETE FROM guardian_outbound")
        parts.narrow_parts(
            conn,
            INFO,
            5,
            request="9-1/4",
            narrow=[[4, bucket]],
            narrow_bits=6,
            keys_at_most=64,
        )
    [listing] = bodies(conn)
    assert (listing["kind"], listing["prefixes"], listing["buckets"]) == (
        "keys",
        [[4, bucket]],
        None,
    )
    keys = dict((pk, h) for pk, h in listing["keys"])
    assert keys[digest.canonical_pk({"ARTNUM": "000007"})] is None
    low, high = digest.bucket_range(4, bucket)
    inside = conn.execute(
        "SELECT count(*) FROM guardian_cache WHERE pk_hash BETWEEN ? AND ?", (low, high)
    ).fetchone()[0]
    assert len(keys) == inside


def test_bits_give_about_a_thousand_rows_a_bucket() -> None:
    """At least 4 bits; 1,000,000 rows give 10 bits (977 rows a bucket)."""
    assert [parts.bits_for(n) for n in (0, 16_000, 16_001, 1_000_000)] == [4, 4, 5, 10]


def test_sums_made_before_the_lock_less_the_changed_keys_equal_a_fresh_read(
    conn: sqlite3.Connection,
) -> None:
    """The hand-off corrects whole-table sums for changed keys without a re-read."""
    bits = 4
    before = parts.bucket_sums(conn, "9-1", "PRIX", bits)
    changed = [digest.canonical_pk({"ARTNUM": f"{n:06d}"}) for n in (3, 7, 150, 299)]
    changed.append(digest.canonical_pk({"ARTNUM": "999999"}))  # not in the cache
    corrected = parts.without_keys(conn, "9-1", "PRIX", before, bits=bits, pks=changed)
    with store.transaction(conn):
        conn.executemany(
            "UPDATE guardian_cache SET row_hash = NULL WHERE pk = ?",
            [(pk,) for pk in changed],
        )
    assert corrected == parts.bucket_sums(conn, "9-1", "PRIX", bits)
    assert sum(n for _p, n, _s in corrected) == 300 - 4  # 7 was already changed
