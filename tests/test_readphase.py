"""ReadPhase: reads go through, every write is refused and noted, even one
whose statement was prepared and cached before the phase began."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance import store
from appliance.readphase import ReadPhase


def test_reads_pass_writes_are_refused_and_noted(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "pipeline.db")
    insert = "INSERT INTO meta (key, value) VALUES (?, ?)"
    conn.execute(insert, ("a", "1"))  # prepared now, kept in the statement cache
    phase = ReadPhase(conn)
    with phase:
        # A recursive CTE and a function: still reads.
        got = conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
            " WHERE i < 3) SELECT count(*), max(length(value))"
            " FROM n, meta WHERE key = 'a'"
        ).fetchone()
        assert tuple(got) == (3, 1)
        assert not phase.wanted_write
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            conn.execute(insert, ("b", "2"))
        assert phase.wanted_write
        # Whatever the code that got the error does next, the flag stays.
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("DELETE FROM meta")
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute("BEGIN IMMEDIATE")
    assert phase.wanted_write and phase.refused.startswith("action ")
    keys = conn.execute("SELECT key FROM meta WHERE key IN ('a', 'b')")
    assert [r[0] for r in keys] == ["a"]
    # After the phase the same cached statement writes again.
    conn.execute(insert, ("b", "2"))
    with phase:
        assert not phase.wanted_write
    assert conn.execute("SELECT value FROM meta WHERE key = 'b'").fetchone()[0] == "2"
