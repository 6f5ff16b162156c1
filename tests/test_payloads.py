"""Outbox payloads stored deflated against a per-table dictionary, read back exact."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from appliance import outbox, payloads, store


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return store.connect(tmp_path / "pipeline.db")


def message(table: str, n: int, **extra: object) -> str:
    """A message shaped like the enricher's (contracts.md §3), in its encoding."""
    body = {
        "schema": "store-relay/1",
        "store": "MQ01",
        "lane": 0,
        "lane_seq": n,
        "outbox_id": n,
        "version": 2185704000000000000 + n,
        "op": "u",
        "ts_ms": 1796450286469 + n,
        "table": table,
        "key": {"ARTNUM": f"{n:06d}"},
        "after": {"ARTNUM": f"{n:06d}", "LIBELLE": "Crème brûlée ☕", "PRIX": "6.90"},
        "source": {"journal": "MAG/QSQJRN", "sequence": 1598 + n, "rrn": n},
        **extra,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def row(n: int, table: str, text: str, lane: int = 0) -> tuple[object, ...]:
    """An outbox row tuple in ``outbox.INSERT_COLUMNS`` order."""
    return (n, lane, n, 50, 1000 + n, table, "u", text, 0.0, 0.0)


def insert(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    with store.transaction(conn):
        outbox.insert(conn, rows)


def test_payload_round_trips_byte_for_byte_and_is_stored_small(
    conn: sqlite3.Connection,
) -> None:
    """next_batch gives back the exact UTF-8 of each JSON text, non-ASCII included."""
    texts = [message("PRIX" if n % 2 else "STOCK", n) for n in range(1, 41)]
    insert(conn, [row(n, json.loads(t)["table"], t) for n, t in enumerate(texts, 1)])
    batch = outbox.next_batch(conn, 100)
    assert [r.value for r in batch] == [t.encode() for t in texts]
    assert all(r.error == "" for r in batch)
    stored = conn.execute(
        "SELECT typeof(payload), max(length(payload)), count(DISTINCT dict_id)"
        " FROM outbox"
    ).fetchone()
    # Two tables, two dictionaries; each later message is a small BLOB.
    assert stored[0] == "blob"
    assert stored[1] < 0.4 * min(len(t.encode()) for t in texts)
    assert stored[2] == 2
    tables = conn.execute("SELECT table_name FROM outbox_dicts ORDER BY id")
    assert [r[0] for r in tables] == ["PRIX", "STOCK"]


def test_rows_stored_as_text_before_the_upgrade_still_read(
    conn: sqlite3.Connection,
) -> None:
    """dict_id NULL: the payload is the JSON text itself, sent as its UTF-8."""
    old = message("PRIX", 1)
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO outbox (lane, lane_seq, interest, version, table_name, op,"
            " payload, created_at, mined_at) VALUES (0, 1, 50, 1, 'PRIX', 'u', ?,"
            " 0, 0)",
            (old,),
        )
    insert(conn, [row(2, "PRIX", message("PRIX", 2))])
    batch = outbox.next_batch(conn, 10)
    assert [r.value for r in batch] == [old.encode(), message("PRIX", 2).encode()]
    dicts = [r[0] for r in conn.execute("SELECT dict_id FROM outbox ORDER BY id")]
    assert dicts[0] is None and isinstance(dicts[1], int)
    assert payloads.read_text(conn, old, None) == old


def test_a_table_that_changed_layout_gets_a_new_dictionary(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages that stop fitting the sample make the next message the sample."""
    monkeypatch.setattr(payloads, "REPICK_WINDOW", 4)
    first = [message("PRIX", n) for n in range(1, 5)]
    # A layout change: new, hash-like columns the old sample knows nothing of.
    wide = [
        message(
            "PRIX",
            n,
            **{
                f"COL{i}": hashlib.sha256(f"{n}:{i}".encode()).hexdigest()
                for i in range(8)
            },
        )
        for n in range(5, 11)
    ]
    texts = first + wide
    insert(conn, [row(n, "PRIX", t) for n, t in enumerate(texts, 1)])
    used = [r[0] for r in conn.execute("SELECT dict_id FROM outbox ORDER BY id")]
    # 4 fitting messages keep dictionary 1; after 4 wide ones the ratio is
    # checked, and the 9th message becomes dictionary 2.
    assert used == [1] * 8 + [2] * 2
    sample = conn.execute("SELECT sample FROM outbox_dicts WHERE id = 2").fetchone()
    assert bytes(sample[0]) == wide[4].encode()
    assert [r.value for r in outbox.next_batch(conn, 20)] == [t.encode() for t in texts]


def test_fitting_messages_keep_their_dictionary(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ratio under REPICK_RATIO never adds a dictionary."""
    monkeypatch.setattr(payloads, "REPICK_WINDOW", 4)
    insert(conn, [row(n, "PRIX", message("PRIX", n)) for n in range(1, 21)])
    assert conn.execute("SELECT count(*) FROM outbox_dicts").fetchone()[0] == 1


def test_a_rolled_back_dictionary_is_never_referenced(
    conn: sqlite3.Connection,
) -> None:
    """The writer checks its cached sample in the database before each use."""
    with pytest.raises(RuntimeError), store.transaction(conn):
        outbox.insert(conn, [row(1, "PRIX", message("PRIX", 1))])
        raise RuntimeError("enricher step failed after the insert")
    # Another table's writer now takes id 1 with its own sample.
    with store.transaction(conn):
        outbox.payloads.Packer().pack(conn, [("STOCK", message("STOCK", 9))])
    insert(conn, [row(2, "PRIX", message("PRIX", 2))])
    dict_id = conn.execute("SELECT dict_id FROM outbox WHERE id = 2").fetchone()[0]
    table = conn.execute(
        "SELECT table_name FROM outbox_dicts WHERE id = ?", (dict_id,)
    ).fetchone()[0]
    assert (dict_id, table) == (2, "PRIX")
    assert outbox.next_batch(conn, 5)[0].value == message("PRIX", 2).encode()


def confirm_all(conn: sqlite3.Connection, upto: int) -> None:
    with store.transaction(conn):
        outbox.confirm(conn, 0, upto, now=0.0)


def test_prune_keeps_dictionaries_rows_still_name(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dictionary goes with the last row naming it; the newest per table stays."""
    monkeypatch.setattr(payloads, "REPICK_WINDOW", 2)
    noise = {f"C{i}": hashlib.sha256(str(i).encode()).hexdigest() for i in range(8)}
    texts = [message("PRIX", 1), message("PRIX", 2)]
    texts += [message("PRIX", n, **noise) for n in (3, 4, 5, 6)]
    insert(conn, [row(n, "PRIX", t) for n, t in enumerate(texts, 1)])
    used = [r[0] for r in conn.execute("SELECT dict_id FROM outbox ORDER BY id")]
    assert used == [1, 1, 1, 1, 2, 2]
    confirm_all(conn, 3)
    with store.transaction(conn):
        assert outbox.prune(conn, window_h=1.0, now=7200.0) == 3
    # Rows 4 (dictionary 1), 5 and 6 (dictionary 2) are left: both stay.
    assert [r[0] for r in conn.execute("SELECT id FROM outbox_dicts")] == [1, 2]
    confirm_all(conn, 4)
    with store.transaction(conn):
        assert outbox.prune(conn, window_h=1.0, now=7200.0) == 1
    assert [r[0] for r in conn.execute("SELECT id FROM outbox_dicts")] == [2]
    confirm_all(conn, 6)
    with store.transaction(conn):
        assert outbox.prune(conn, window_h=1.0, now=7200.0) == 2
    # No row names dictionary 2 now, but it is PRIX's newest: the writer's next.
    assert [r[0] for r in conn.execute("SELECT id FROM outbox_dicts")] == [2]


def test_dictionary_prune_seeks_the_dict_id_index(conn: sqlite3.Connection) -> None:
    """Deciding a dictionary is unused never scans the outbox."""
    plan = " ".join(
        str(r[3])
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT 1 FROM outbox WHERE dict_id = 1"
        )
    )
    assert "USING COVERING INDEX outbox_dict" in plan


def test_corrupt_payload_stops_its_lane_in_the_batch_only(
    conn: sqlite3.Connection,
) -> None:
    """The unreadable row comes with its error; later rows of its lane wait."""
    rows = [row(n, "PRIX", message("PRIX", n)) for n in (1, 2, 3)]
    rows.append(row(4, "PRIX", message("PRIX", 4), lane=1))
    insert(conn, rows)
    with store.transaction(conn):
        conn.execute("UPDATE outbox SET payload = X'00FF00FF' WHERE id = 2")
    batch = outbox.next_batch(conn, 10)
    assert [(r.id, bool(r.error)) for r in batch] == [(1, False), (2, True), (4, False)]
    bad = batch[1]
    assert bad.value == b""
    assert "outbox_id=2 lane=0 lane_seq=2" in bad.error
    assert "payload does not inflate" in bad.error
    assert bad.table == "PRIX"


def test_changed_byte_never_reads_as_other_json(conn: sqlite3.Connection) -> None:
    """Each byte of a stream changed in turn: an error, or the same JSON (a flip
    in the padding bits after the last block changes nothing)."""
    insert(conn, [row(n, "PRIX", message("PRIX", n)) for n in (1, 2)])
    stored = conn.execute("SELECT payload FROM outbox WHERE id = 2").fetchone()[0]
    outcomes = []
    for at in range(len(stored)):
        copy = bytearray(stored)
        copy[at] ^= 0x10
        try:
            value = payloads.Unpacker().value(conn, bytes(copy), 1)
        except payloads.PayloadError:
            outcomes.append("error")
        else:
            outcomes.append("same" if value == message("PRIX", 2).encode() else "other")
    assert "other" not in outcomes
    assert outcomes.count("error") >= len(stored) - 2


def test_missing_dictionary_names_it(conn: sqlite3.Connection) -> None:
    """A row whose dictionary is gone fails with the dictionary's id."""
    insert(conn, [row(1, "PRIX", message("PRIX", 1))])
    with store.transaction(conn):
        conn.execute("DELETE FROM outbox_dicts")
    (bad,) = outbox.next_batch(conn, 10)
    assert "dictionary 1 is missing" in bad.error
    assert "lane_seq=1" in bad.error


OLD_OUTBOX = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    lane_seq INTEGER NOT NULL,
    interest INTEGER NOT NULL,
    version INTEGER NOT NULL,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'in_flight', 'sent', 'confirmed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    mined_at REAL NOT NULL,
    sent_at REAL,
    partition INTEGER,
    kafka_offset INTEGER,
    confirmed_at REAL,
    UNIQUE (lane, lane_seq)
)
"""


def test_upgrade_of_a_version_1_database(tmp_path: Path) -> None:
    """An old box's outbox gains dict_id (NULL) and the dictionary table."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(OLD_OUTBOX)
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    old.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('epoch', '7')")
    text = message("PRIX", 1)
    old.execute(
        "INSERT INTO outbox (lane, lane_seq, interest, version, table_name, op,"
        " payload, created_at, mined_at) VALUES (0, 1, 50, 1, 'PRIX', 'u', ?, 0, 0)",
        (text,),
    )
    old.commit()
    old.close()

    conn = store.connect(path)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}
    assert "dict_id" in columns
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(outbox)")}
    assert "outbox_dict" in indexes
    assert store.meta_get(conn, "schema_version") == str(store.SCHEMA_VERSION) == "2"
    assert store.epoch(conn) == 7
    insert(conn, [row(2, "PRIX", message("PRIX", 2))])
    assert [r.value for r in outbox.next_batch(conn, 5)] == [
        text.encode(),
        message("PRIX", 2).encode(),
    ]
    # Opening it again changes nothing more.
    with store.transaction(conn):
        assert store.upgrade(conn) == []
