"""The enricher composes a batch before the write lock and writes it in a short one.

What the batch assumed (the outbox's next id, the lane counts, the change
rows still new, the dictionaries) is checked under the lock; when it no
longer holds, the batch is written the old way, and the rows are those the
old way writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_enricher import (
    SAMPLES,
    add_change,
    add_guardian_part,
    dead_letters,
    outbox,
    settings,
)

from appliance import commands, payloads, store
from appliance import outbox as outbox_rows
from appliance.config import BoxSettings
from appliance.enricher import EnricherLeg

INTEREST_ONLY = [s for s in SAMPLES if s["name"] == "message_interest"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.db"


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    connection = store.connect(db)
    yield connection
    connection.close()


@pytest.fixture
def other(db: Path, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A second connection to the same database: another leg, an operator."""
    connection = store.connect(db, timeout_s=0.5)
    yield connection
    connection.close()


def batch_of(config: BoxSettings, size: int) -> BoxSettings:
    return config.model_copy(
        update={"pipeline": config.pipeline.model_copy(update={"batch": size})}
    )


@pytest.fixture(autouse=True)
def outbox_pack_restored() -> Iterator[None]:
    """``while_composing`` may hook ``outbox.pack``: never past one test."""
    original = outbox_rows.pack
    yield
    outbox_rows.pack = original  # type: ignore[assignment]


def while_composing(
    leg: EnricherLeg,
    action: Callable[[], None],
    method: str = "pack",
    after: bool = False,
) -> Callable[[], list[bool]]:
    """Run ``action`` once, inside the next batch's compose (before its lock):
    before (or ``after``) ``method``: ``pack`` (:func:`appliance.outbox.pack`,
    the payloads are deflated) or the leg's ``_samples`` (they were, the
    dictionaries are read).

    Returns a function giving, per call of the hook, whether the read phase
    was active at that point.
    """
    seen: list[bool] = []
    target: Any = outbox_rows if method == "pack" else leg
    original = getattr(target, method)

    def hooked(*args: Any) -> Any:
        setattr(target, method, original)  # once: the next batch's compose
        seen.append(leg._reads_only.active)
        if not after:
            action()
            return original(*args)
        result = original(*args)
        action()
        return result

    setattr(target, method, hooked)
    return lambda: seen


def drain(leg: EnricherLeg) -> int:
    steps = 0
    while leg.step():
        steps += 1
    return steps


def waiting(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute("SELECT count(*) FROM changes WHERE state = 0").fetchone()[0]
    )


def assert_contiguous(conn: sqlite3.Connection) -> None:
    """Each lane counts 1, 2, 3...; ids follow on; each payload names its row."""
    rows = outbox(conn)
    assert [r["id"] for r in rows] == list(range(1, len(rows) + 1))
    by_lane: dict[int, list[int]] = {}
    for row in rows:
        by_lane.setdefault(row["lane"], []).append(row["lane_seq"])
        message = json.loads(row["payload"])
        assert (message["outbox_id"], message["lane"], message["lane_seq"]) == (
            row["id"],
            row["lane"],
            row["lane_seq"],
        )
    for seqs in by_lane.values():
        assert seqs == list(range(1, len(seqs) + 1))


def test_the_lock_is_free_while_a_batch_is_composed(
    db: Path, conn: sqlite3.Connection, other: sqlite3.Connection
) -> None:
    """Another connection takes the write lock (and commits) mid-compose."""
    add_change(conn, artnum="000001", raw_id=1)
    leg = EnricherLeg(settings(db, INTEREST_ONLY), conn)
    leg.setup()
    try:
        assert leg.step()  # PRIX's first dictionary: written under the lock
        assert leg.under_lock == 1
        add_change(conn, artnum="000002", raw_id=2)
        add_change(conn, artnum="000003", raw_id=3)

        def take_the_lock() -> None:
            with store.transaction(other):
                store.bump(other, "test.lock_taken")

        seen = while_composing(leg, take_the_lock)
        assert leg.step()
        assert not leg.step()
    finally:
        leg.close()

    assert seen() == [True]
    assert leg.under_lock == 1  # the second batch went through composed
    assert store.counters(conn)["test.lock_taken"] == 1
    rows = outbox(conn)
    assert [(r["lane"], r["lane_seq"], r["dict_id"]) for r in rows] == [
        (0, 1, 1),
        (0, 2, 1),
        (0, 3, 1),
    ]
    assert [json.loads(r["payload"])["key"]["ARTNUM"] for r in rows] == [
        "000001",
        "000002",
        "000003",
    ]
    assert_contiguous(conn)
    assert waiting(conn) == 0
    assert store.counters(conn)["enricher.messages"] == 3


def test_a_tables_first_dictionary_sends_the_batch_under_the_lock(
    db: Path, conn: sqlite3.Connection
) -> None:
    """Composing may not write: a new table's dictionary is made under the lock."""
    add_change(conn, table="PRIX", raw_id=1)
    leg = EnricherLeg(batch_of(settings(db, INTEREST_ONLY), 1), conn)
    leg.setup()
    try:
        assert leg.step()
        add_change(conn, table="PRIX", artnum="000002", raw_id=2)
        assert leg.step()
        add_change(conn, table="STOCK", artnum="000003", raw_id=3)
        assert leg.step()
    finally:
        leg.close()

    assert leg.under_lock == 2  # PRIX's first batch and STOCK's, not PRIX's second
    dicts = conn.execute("SELECT id, table_name FROM outbox_dicts ORDER BY id")
    assert [tuple(r) for r in dicts] == [(1, "PRIX"), (2, "STOCK")]
    stored = conn.execute("SELECT dict_id, typeof(payload) FROM outbox ORDER BY id")
    assert [tuple(r) for r in stored] == [(1, "blob"), (1, "blob"), (2, "blob")]
    assert_contiguous(conn)


def test_a_resend_between_compose_and_write_redoes_the_batch(
    db: Path,
    conn: sqlite3.Connection,
    other: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Outbox rows inserted by someone else mid-compose: the batch is built
    again under the lock, after them, lane counts read again."""
    for i in range(3):
        add_change(conn, table="PRIX", artnum=f"00000{i}", raw_id=10 + i)
    add_change(conn, table="STOCK", artnum="000009", raw_id=19)
    leg = EnricherLeg(settings(db, INTEREST_ONLY), conn)
    leg.setup()
    try:
        assert leg.step()
        with store.transaction(conn):
            outbox_rows.confirm(conn, 0, 3)
            outbox_rows.confirm(conn, 1, 1)
        add_change(conn, table="PRIX", artnum="000100", raw_id=20)
        add_change(conn, table="STOCK", artnum="000101", raw_id=21)
        stale = dict(leg.lane_seqs)

        def resend() -> None:
            count, _ = commands.resend(other, stale, table="PRIX")
            assert count == 3

        seen = while_composing(leg, resend)
        before = leg.under_lock
        with caplog.at_level(logging.WARNING, logger="appliance.enricher"):
            assert leg.step()
    finally:
        leg.close()

    assert seen() == [True]
    assert leg.under_lock == before + 1
    assert "lane counts read again" in caplog.text
    rows = outbox(conn)
    assert [(r["id"], r["lane"], r["lane_seq"], r["version"] % 100) for r in rows][
        4:
    ] == [
        (5, 0, 4, 10),  # the three copies, ids and seqs taken first
        (6, 0, 5, 11),
        (7, 0, 6, 12),
        (8, 0, 7, 20),  # then the batch, after them
        (9, 1, 2, 21),
    ]
    assert_contiguous(conn)
    assert leg.lane_seqs == {0: 7, 1: 2}
    assert store.meta_get(conn, "enricher.lane_seq.0") == "7"


def test_a_change_put_back_meanwhile_redoes_the_batch(
    db: Path, conn: sqlite3.Connection, other: sqlite3.Connection
) -> None:
    """A done change inside the batch's id range put back to new mid-compose:
    the checked mark finds one row too many, the batch is written the old way
    and the change put back is enriched by the next step, once."""
    ids = [add_change(conn, artnum=f"00000{i}", raw_id=30 + i) for i in range(6)]
    leg = EnricherLeg(batch_of(settings(db, INTEREST_ONLY), 2), conn)
    leg.setup()
    try:
        assert leg.step()  # ids 1, 2 (first dictionary: under the lock)
        with store.transaction(conn):  # id 4 done out of turn (another enricher)
            conn.execute("UPDATE changes SET state = 1 WHERE id = ?", (ids[3],))

        def put_back() -> None:
            with store.transaction(other):
                other.execute("UPDATE changes SET state = 0 WHERE id = ?", (ids[3],))

        seen = while_composing(leg, put_back)  # the batch read 3 and 5
        before = leg.under_lock
        assert leg.step()
        assert leg.under_lock == before + 1
        drain(leg)
    finally:
        leg.close()

    assert seen() == [True]
    raws = [r["version"] % 100 for r in outbox(conn)]
    assert raws == [30, 31, 32, 34, 33, 35]
    assert_contiguous(conn)
    assert waiting(conn) == 0


def test_a_dead_letter_retried_meanwhile_waits_for_the_next_step(
    db: Path,
    conn: sqlite3.Connection,
    other: sqlite3.Connection,
    tmp_path: Path,
) -> None:
    """A retry mid-compose adds a change after the batch: the composed batch
    stands, the guardian part behind the retried change waits for it."""
    # Refuses BAD until the flag file says it is fixed (a corrected script).
    flag = tmp_path / "flag"
    path = tmp_path / "interest.py"
    path.write_text(
        "import pathlib\n"
        f"FLAG = pathlib.Path({str(flag)!r})\n"
        "def enrich(change):\n"
        "    bad = change['key']['ARTNUM'] == 'BAD'\n"
        "    return 250 if bad and not FLAG.read_text() else 80\n",
        encoding="utf-8",
    )
    flag.write_text("", encoding="utf-8")
    scripts = [{"name": "message_interest", "language": "python", "path": path}]
    add_change(conn, artnum="000001", raw_id=1)
    add_change(conn, artnum="BAD", raw_id=2)
    leg = EnricherLeg(settings(db, scripts), conn)
    leg.setup()
    try:
        assert leg.step()  # 000001 enriched, BAD parked
        [letter] = dead_letters(conn)
        flag.write_text("fixed", encoding="utf-8")
        add_change(conn, artnum="000003", raw_id=3)
        # A part after every change so far, and the retried one to come.
        add_guardian_part(conn, after_change_id=4, v_low=99)

        def retry() -> None:
            commands.retry_dead_letter(other, letter["id"], "enricher")

        seen = while_composing(leg, retry)
        before = leg.under_lock
        assert leg.step()
        assert leg.under_lock == before  # composed batch written as composed
        assert [r["op"] for r in outbox(conn)] == ["u", "u"]  # the part waits
        drain(leg)
    finally:
        leg.close()

    assert seen() == [True]
    rows = outbox(conn)
    got = [(r["op"], r["lane_seq"], r["version"] % 100) for r in rows]
    assert got == [("u", 1, 1), ("u", 2, 3), ("u", 3, 2), ("g", 4, 99)]
    assert json.loads(rows[-1]["payload"])["guardian"]["fences"]["0"] == 3
    assert_contiguous(conn)


@pytest.mark.parametrize(
    ("method", "after"),
    [("pack", False), ("_samples", False), ("_samples", True)],
    ids=["before-packing", "after-packing", "after-reading-dictionaries"],
)
def test_a_dictionary_gone_meanwhile_redoes_the_batch(
    db: Path,
    conn: sqlite3.Connection,
    other: sqlite3.Connection,
    method: str,
    after: bool,
) -> None:
    """Payloads packed with a dictionary deleted mid-compose are never written,
    whenever it went: the batch is packed again under the lock, with a new
    dictionary."""
    add_change(conn, artnum="000001", raw_id=1)
    leg = EnricherLeg(settings(db, INTEREST_ONLY), conn)
    leg.setup()
    try:
        assert leg.step()
        add_change(conn, artnum="000002", raw_id=2)

        def drop_dictionary() -> None:
            with store.transaction(other):
                other.execute("UPDATE outbox SET payload = '{}', dict_id = NULL")
                other.execute("DELETE FROM outbox_dicts")

        seen = while_composing(leg, drop_dictionary, method, after)
        before = leg.under_lock
        assert leg.step()
    finally:
        leg.close()

    assert seen() == [True]
    assert leg.under_lock == before + 1
    last = conn.execute("SELECT id, dict_id FROM outbox ORDER BY id DESC").fetchone()
    assert tuple(last) == (2, 2)
    [(_, text)] = payloads.messages(conn, "id = 2")
    assert json.loads(text)["key"] == {"ARTNUM": "000002"}


def test_an_outbox_row_inserted_meanwhile_moves_the_batch_after_it(
    db: Path, conn: sqlite3.Connection, other: sqlite3.Connection
) -> None:
    """A row written by hand mid-compose (lane counts untouched): the batch's
    ids, taken before the lock, are taken again after it."""
    add_change(conn, artnum="000001", raw_id=1)
    leg = EnricherLeg(settings(db, INTEREST_ONLY), conn)
    leg.setup()
    try:
        assert leg.step()
        add_change(conn, artnum="000002", raw_id=2)
        add_change(conn, artnum="000003", raw_id=3)

        def insert_by_hand() -> None:
            with store.transaction(other):
                row = (2, 7, 1, 0, 9, "HAND", "u", '{"outbox_id":2}', 0.0, 0.0)
                other.execute(
                    f"INSERT INTO outbox ({outbox_rows.INSERT_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )

        seen = while_composing(leg, insert_by_hand)
        before = leg.under_lock
        assert leg.step()
    finally:
        leg.close()

    assert seen() == [True]
    assert leg.under_lock == before + 1
    rows = outbox(conn)
    assert [(r["id"], r["lane"], r["lane_seq"]) for r in rows] == [
        (1, 0, 1),
        (2, 7, 1),
        (3, 0, 2),
        (4, 0, 3),
    ]
    assert [json.loads(r["payload"])["outbox_id"] for r in rows] == [1, 2, 3, 4]
    assert leg.lane_seqs == {0: 3, 7: 1}


NOTES = 300  # NOTE messages: past one re-pick window (payloads.REPICK_WINDOW)


def _workload(conn: sqlite3.Connection) -> int:
    """Five tables, every lane, deletes, a change that parks, a guardian part,
    and a table whose payloads fit no dictionary (random text): its dictionary
    is picked again after 256 messages. Returns the number of changes."""
    tables = ["PRIX", "STOCK", "ARTICLE", "OTHER", "PROMO"]
    noise = random.Random(5)
    count = 0
    for i in range(230 + NOTES):
        table = tables[(i * 7) % 5] if i < 230 else "NOTE"
        op = "d" if i % 11 == 0 else "u"
        after: dict[str, Any] | None = None
        if op == "u":
            after = {"ARTNUM": f"{i:06d}", "PRIX": f"{i % 97}.10", "PRIX_PROMO": None}
            if i % 13 == 0:
                after["PRIX_PROMO"] = "1.00"
            if table == "NOTE":
                after["TEXT"] = base64.b64encode(noise.randbytes(900)).decode()
        add_change(
            conn, table=table, op=op, artnum=f"{i:06d}", after=after, raw_id=100 + i
        )
        count += 1
        if i == 150:
            add_guardian_part(conn, after_change_id=120, v_low=5)
    broken = 77
    conn.execute("UPDATE changes SET key = '{no' WHERE id = ?", (broken,))
    return count


def _digest(conn: sqlite3.Connection) -> str:
    """Everything the leg wrote, clocks aside."""
    out = hashlib.sha256()
    unpacker = payloads.Unpacker()
    for row in conn.execute(
        "SELECT id, lane, lane_seq, interest, version, table_name, op, state,"
        " mined_at, payload, dict_id FROM outbox ORDER BY id"
    ):
        *head, payload, dict_id = tuple(row)
        message = json.loads(unpacker.value(conn, payload, dict_id))
        if message["op"] == "g":
            message.pop("ts_ms")
            message.pop("mined_at")
            head[-1] = None  # the part's mined_at is the clock too
        out.update(repr((head, dict_id, message)).encode())
    for query in (
        "SELECT id, table_name, sample FROM outbox_dicts ORDER BY id",
        "SELECT id, state FROM changes ORDER BY id",
        "SELECT id, state FROM guardian_outbound ORDER BY id",
        "SELECT id, stage, table_name, position, reason, raw_id, payload"
        " FROM dead_letters ORDER BY id",
        "SELECT name, value FROM counters ORDER BY name",
        "SELECT key, value FROM meta WHERE key LIKE 'enricher.%' ORDER BY key",
    ):
        out.update(repr([tuple(r) for r in conn.execute(query)]).encode())
    return out.hexdigest()


@pytest.mark.parametrize("batch", [1, 7, 50, 500])
def test_composed_batches_write_what_the_old_way_writes(
    tmp_path: Path, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same input through both ways: the same rows, byte for byte."""
    digests = {}
    under_lock = {}
    for way in ("composed", "old"):
        db = tmp_path / way / "pipeline.db"
        conn = store.connect(db)
        try:
            changes = _workload(conn)
            # The same epoch in both databases (it is in every version).
            conn.execute("UPDATE meta SET value = '1000' WHERE key = 'epoch'")
            leg = EnricherLeg(batch_of(settings(db, SAMPLES), batch), conn)
            if way == "old":
                monkeypatch.setattr(leg, "_compose", lambda changes: None)
            leg.setup()
            try:
                drain(leg)
            finally:
                leg.close()
            digests[way] = _digest(conn)
            under_lock[way] = leg.under_lock
            picks = conn.execute(
                "SELECT table_name, count(*) FROM outbox_dicts GROUP BY table_name"
            )
            assert dict(picks.fetchall())["NOTE"] == 2  # picked again once
            assert len(outbox(conn)) == changes  # one parked, the part added
            assert len(dead_letters(conn)) == 1
            assert_contiguous(conn)
        finally:
            conn.close()
    assert digests["composed"] == digests["old"]
    assert under_lock["old"] == -(-changes // batch)
    # Composed unless a dictionary was picked in that batch (7 picks).
    assert under_lock["composed"] <= 7
    assert under_lock["composed"] < under_lock["old"] or batch == 500


def test_lane_counts_moved_meanwhile_redo_the_batch_after_them(
    db: Path, conn: sqlite3.Connection, other: sqlite3.Connection
) -> None:
    """A lane count in ``meta`` moved mid-compose without an outbox row (its
    rows pruned, another writer): the batch is numbered after it."""
    add_change(conn, artnum="000001", raw_id=1)
    leg = EnricherLeg(settings(db, INTEREST_ONLY), conn)
    leg.setup()
    try:
        assert leg.step()
        add_change(conn, artnum="000002", raw_id=2)

        def move_lane_count() -> None:
            with store.transaction(other):
                other.execute(
                    "UPDATE meta SET value = '10' WHERE key = 'enricher.lane_seq.0'"
                )

        seen = while_composing(leg, move_lane_count)
        before = leg.under_lock
        assert leg.step()
    finally:
        leg.close()

    assert seen() == [True]
    assert leg.under_lock == before + 1
    rows = outbox(conn)
    assert [(r["id"], r["lane"], r["lane_seq"]) for r in rows] == [
        (1, 0, 1),
        (2, 0, 11),
    ]
    assert json.loads(rows[1]["payload"])["lane_seq"] == 11
    assert leg.lane_seqs == {0: 11}
