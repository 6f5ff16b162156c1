"""A rollback to a release that reads outbox payloads as text: the downgrade
writes them back, and a release refuses a database newer than it knows."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from appliance import cli, outbox, store
from appliance.errors import SchemaError


def message(table: str, n: int) -> str:
    body = {
        "schema": "store-relay/1",
        "store": "MQ01",
        "lane": 0,
        "lane_seq": n,
        "table": table,
        "key": {"ARTNUM": f"{n:06d}"},
        "after": {"ARTNUM": f"{n:06d}", "LIBELLE": "Pâté «maison»", "PRIX": "6.90"},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def fill(conn: sqlite3.Connection, count: int) -> list[str]:
    """``count`` rows, PRIX and STOCK, the first one written as text (old row)."""
    texts = [message("PRIX" if n % 2 else "STOCK", n) for n in range(1, count + 1)]
    rows = [
        (n, 0, n, 50, 1000 + n, json.loads(t)["table"], "u", t, 0.0, 0.0)
        for n, t in enumerate(texts, 1)
    ]
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO outbox (id, lane, lane_seq, interest, version, table_name,"
            " op, payload, created_at, mined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows[0],
        )
        outbox.insert(conn, rows[1:])
    return texts


def test_downgrade_writes_every_payload_back_as_its_text(tmp_path: Path) -> None:
    db = tmp_path / "pipeline.db"
    conn = store.connect(db)
    texts = fill(conn, 23)
    assert conn.execute("SELECT count(*) FROM outbox_dicts").fetchone()[0] == 2

    # Small chunks: several commits, as on a box with a long outbox.
    assert outbox.downgrade(conn, 1, chunk=5) == 22
    stored = conn.execute(
        "SELECT payload, typeof(payload), dict_id FROM outbox ORDER BY id"
    ).fetchall()
    # What a schema-1 release does with a row: payload.encode().
    assert [r[0].encode() for r in stored] == [t.encode() for t in texts]
    assert {(r[1], r[2]) for r in stored} == {("text", None)}
    assert conn.execute("SELECT count(*) FROM outbox_dicts").fetchone()[0] == 0
    assert store.schema_version(conn) == 1
    conn.close()

    # Upgraded again (the next roll forward): old rows read, new rows deflate.
    again = store.connect(db)
    assert store.schema_version(again) == 2
    more = [message("PRIX", n) for n in (24, 25)]
    with store.transaction(again):
        outbox.insert(
            again,
            [
                (n, 0, n, 50, n, "PRIX", "u", t, 0.0, 0.0)
                for n, t in zip((24, 25), more, strict=True)
            ],
        )
    batch = outbox.next_batch(again, 100)
    assert [r.value for r in batch] == [t.encode() for t in [*texts, *more]]
    assert (
        again.execute(
            "SELECT count(*) FROM outbox WHERE dict_id IS NOT NULL"
        ).fetchone()[0]
        == 2
    )


def test_downgrade_to_this_schema_changes_nothing(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "pipeline.db")
    fill(conn, 4)
    assert outbox.downgrade(conn, store.SCHEMA_VERSION) == 0
    assert (
        conn.execute(
            "SELECT count(*) FROM outbox WHERE dict_id IS NOT NULL"
        ).fetchone()[0]
        == 3
    )
    with pytest.raises(ValueError, match="schema 0"):
        outbox.downgrade(conn, 0)


def test_an_unreadable_row_is_named_and_the_others_still_go_back(
    tmp_path: Path,
) -> None:
    conn = store.connect(tmp_path / "pipeline.db")
    texts = fill(conn, 12)
    with store.transaction(conn):
        conn.execute("UPDATE outbox SET payload = X'789C00' WHERE id = 9")
    with pytest.raises(outbox.DowngradeError) as caught:
        outbox.downgrade(conn, 1, chunk=4)
    assert str(caught.value) == (
        "10 rows written back as text, 1 cannot be read and stay deflated, schema"
        " unchanged: payload does not inflate: Error -3 while decompressing data:"
        " invalid window size table=PRIX position=outbox_id=9 lane=0 lane_seq=9"
        " field=payload bytes=78 9C 00 expected=zlib stream with dictionary 2"
    )
    # Every other row is text now; row 9, its dictionary and the schema stay.
    done = conn.execute("SELECT id, payload FROM outbox WHERE dict_id IS NULL")
    assert {i: p for i, p in done} == {n: texts[n - 1] for n in range(1, 13) if n != 9}
    assert conn.execute("SELECT count(*) FROM outbox_dicts").fetchone()[0] == 2
    assert store.schema_version(conn) == 2


def test_the_downgrade_waits_for_the_legs_to_stop(tmp_path: Path) -> None:
    """A running enricher would deflate again behind it."""
    conn = store.connect(tmp_path / "pipeline.db")
    fill(conn, 3)
    store.heartbeat(conn, "enricher", os.getpid(), "running")
    store.heartbeat(conn, "miner", 2**22 + 12345, "running")  # no such process
    with pytest.raises(outbox.DowngradeError) as caught:
        outbox.downgrade(conn, 1)
    assert str(caught.value) == (
        f"legs still running, stop them first: enricher (pid {os.getpid()}, running)"
    )
    assert store.schema_version(conn) == 2
    store.heartbeat(conn, "enricher", os.getpid(), "stopped")
    assert outbox.downgrade(conn, 1) == 2


def test_a_database_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "pipeline.db"
    conn = store.connect(db)
    with store.transaction(conn):
        store.meta_put(conn, "schema_version", str(store.SCHEMA_VERSION + 1))
    conn.close()
    newer = store.SCHEMA_VERSION + 1
    with pytest.raises(SchemaError) as caught:
        store.connect(db)
    assert str(caught.value) == (
        f"pipeline database {db} is schema {newer}, newer than this release's"
        f" {store.SCHEMA_VERSION}: run the newer release's"
        f" `appliance pipeline-downgrade --to {store.SCHEMA_VERSION}` first"
    )
    # Refused without writing: the newer release still finds its own number.
    raw = sqlite3.connect(db)
    assert raw.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'"
    ).fetchone() == (str(newer),)


def test_a_refused_database_is_left_byte_for_byte(tmp_path: Path) -> None:
    """Not even switched to WAL; and the command exits 78 (no restart loop)."""
    db = tmp_path / "pipeline.db"
    store.connect(db).close()
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA journal_mode=DELETE")
    with raw:
        raw.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    raw.close()
    before = db.read_bytes()
    settings = tmp_path / "box.toml"
    settings.write_text(f'[store]\nid = "MQ01"\n[pipeline]\ndb_path = "{db}"\n')
    for _ in range(3):
        with pytest.raises(SchemaError):
            store.connect(db)
    assert (
        cli.main(["pipeline-downgrade", "--to", "1", "--config", str(settings)]) == 78
    )
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.toml", "pipeline.db"]


def test_the_command_downgrades_the_configured_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "pipeline.db"
    fill(store.connect(db), 6)
    settings = tmp_path / "box.toml"
    settings.write_text(f'[store]\nid = "MQ01"\n[pipeline]\ndb_path = "{db}"\n')
    assert cli.main(["pipeline-downgrade", "--to", "1", "--config", str(settings)]) == 0
    assert capsys.readouterr().out.strip() == (
        "pipeline database at schema 1: 5 outbox rows back as text"
    )
    with pytest.raises(SystemExit):
        cli.main(["pipeline-downgrade", "--to", "9", "--config", str(settings)])
