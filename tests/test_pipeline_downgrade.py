"""A rollback to a release that reads outbox payloads as text: the downgrade
writes them back, and a release refuses a database newer than it knows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from appliance import cli, outbox, payloads, store
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


def test_an_unreadable_row_stops_the_downgrade_naming_it(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "pipeline.db")
    texts = fill(conn, 12)
    with store.transaction(conn):
        conn.execute("UPDATE outbox SET payload = X'789C00' WHERE id = 9")
    with pytest.raises(payloads.PayloadError) as caught:
        outbox.downgrade(conn, 1, chunk=4)
    assert caught.value.position == "outbox_id=9 lane=0 lane_seq=9"
    assert caught.value.table == "PRIX"
    # The chunks before it are committed as text; the schema is unchanged.
    done = conn.execute("SELECT id, payload FROM outbox WHERE dict_id IS NULL")
    assert {i: p for i, p in done} == {n: texts[n - 1] for n in range(1, 6)}
    assert store.schema_version(conn) == 2


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
