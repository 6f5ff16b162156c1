"""The control leg on a real pipeline database and a stand-in source.

The leg is driven step by step against a source whose table read lets the
"transformer" commit changes while it runs: a key changed during the read is
never sent as ``r`` and is "changed" in checksums, and the change itself
carries a larger version than the read's ``r`` rows (docs/guardian.md §1).
Repairs, paged loads cut by a failure, commands, schedules and unreadable
hub requests are here too.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import store
from appliance.config import BoxSettings
from appliance.errors import DecodeError
from appliance.guardian import bracket, digest, leg, reader, records
from appliance.guardian.reader import Head
from appliance.layouts import Column, make_layout

HEAD = Head("MAG", "QSQJRN0001", 10, "2026-12-04T10:00:00.000000")
LAYOUT = make_layout(
    "MAG",
    "PRIX",
    [Column("ARTNUM", "CHAR", 6), Column("PRIX", "DECIMAL", 7, 2)],
    ["ARTNUM"],
)
ROWS = [("000001", "1.00"), ("000002", "2.00"), ("000003", "3.00")]


class Cursor:
    """Returns the table's rows; calls ``during`` once, as a concurrent commit."""

    def __init__(self, during: Callable[[], None]) -> None:
        self.during = during
        self.result: list[tuple[Any, ...]] = []

    def execute(self, sql: str, *params: Any) -> None:
        if "WHERE" in sql:  # a point read by primary key
            self.result = [r for r in ROWS if r[0] == params[0]]
            return
        self.during()
        self.result = list(ROWS)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.result

    def close(self) -> None:
        pass


class Source:
    def __init__(self, during: Callable[[], None]) -> None:
        self.during = during

    def cursor(self) -> Cursor:
        return Cursor(self.during)

    def close(self) -> None:
        pass


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = store.connect(tmp_path / "pipeline.db")
    with store.transaction(connection):
        _raw(connection, 1)
        connection.execute(
            "INSERT INTO bookmark (journal, receiver_library, receiver_name, sequence,"
            " processed, updated_at) VALUES ('MAG/QSQJRN', 'MAG', 'QSQJRN0001', 10,"
            " 1, 0)"
        )
    yield connection
    connection.close()


def _raw(conn: sqlite3.Connection, raw_id: int) -> None:
    conn.execute(
        "INSERT INTO raw_entries (id, journal, receiver_library, receiver_name,"
        " sequence, code, entry_type, entry_ts, mined_at, state)"
        " VALUES (?, 'MAG/QSQJRN', 'MAG', 'QSQJRN0001', ?, 'R', 'UP', '', 0, 1)",
        (raw_id, raw_id),
    )


def _change(conn: sqlite3.Connection, raw_id: int, artnum: str) -> None:
    with store.transaction(conn):
        _raw(conn, raw_id)
        conn.execute(
            "INSERT INTO changes (raw_id, table_name, op, key, after, source,"
            " entry_ts_ms, mined_at) VALUES (?, 'PRIX', 'u', ?, ?, '{}', 0, 0)",
            (
                raw_id,
                digest.canonical_pk({"ARTNUM": artnum}),
                json.dumps({"ARTNUM": artnum, "PRIX": "9.99"}),
            ),
        )


def _hold(conn: sqlite3.Connection, artnum: str) -> None:
    event = {"table": "PRIX", "key": {"ARTNUM": artnum}, "kind": "update"}
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO held_changes (cycle_key, raw_id, change)"
            " VALUES ('cycle:5', 5, ?)",
            (json.dumps([event]),),
        )


def _leg(
    conn: sqlite3.Connection,
    monkeypatch: pytest.MonkeyPatch,
    during: Callable[[], None],
    tables: list[str] | None = None,
) -> leg.ControlLeg:
    settings = BoxSettings(
        store={"id": "MQ01"},
        **({"ibmi": {"tables": tables}} if tables else {}),
        guardian={"initial_load": False, "interval_s": 0, "max_rows_per_s": 1e6},
    )
    monkeypatch.setattr(reader, "connect", lambda ibmi: Source(during))
    monkeypatch.setattr(reader, "load_layout", lambda src, ibmi, table: LAYOUT)
    monkeypatch.setattr(reader, "read_head", lambda src, ibmi: HEAD)
    control = leg.ControlLeg(settings, conn)
    control.setup()
    return control


def _drive(control: leg.ControlLeg) -> None:
    for _ in range(200):
        for queued in control.queue:
            queued.not_before = 0.0  # the retry delays pass at once
        control.step()
        if control.job is None and not control.queue:
            return
    raise AssertionError(f"job not finished: {control.status()}")


def _r_rows(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    rows = conn.execute("SELECT * FROM changes WHERE op = 'r'").fetchall()
    return {json.loads(r["key"])["ARTNUM"]: r for r in rows}


def test_a_key_changed_during_the_read_is_never_sent(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key 2 changes mid-read and key 3 sits in an open cycle: only key 1 goes
    with the read; key 2 goes with a read of its own in a later bracket, key 3
    never while its cycle stays open (the reads give up, the load ends)."""

    def during() -> None:
        _change(conn, 2, "000002")
        _hold(conn, "000003")

    control = _leg(conn, monkeypatch, during)
    control.handle_command("load", {"table": "PRIX"})
    _drive(control)

    sent = _r_rows(conn)
    assert sorted(sent) == ["000001", "000002"]
    assert sent["000001"]["raw_id"] == 1  # r_low: taken before the read
    assert json.loads(sent["000001"]["after"]) == {"ARTNUM": "000001", "PRIX": "1.00"}
    # Key 2 again, in a bracket opened after its change: above its version.
    change = conn.execute("SELECT raw_id FROM changes WHERE op = 'u'").fetchone()
    assert sent["000002"]["raw_id"] >= change[0]
    run = conn.execute("SELECT * FROM guardian_runs").fetchone()
    figures = (run["state"], run["loaded"], run["repaired"])
    assert figures == ("loaded", 2, 0)
    assert run["dropped"] >= 1  # key 3, at every read of it
    gave_up = conn.execute(
        "SELECT count(*) FROM guardian_events WHERE what = 'repair_gave_up'"
    ).fetchone()[0]
    assert gave_up == 1


def test_a_change_committed_during_the_read_wins(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The concurrent change's version is above every r row of the read."""
    control = _leg(conn, monkeypatch, lambda: _change(conn, 2, "000002"))
    control.handle_command("load", {"table": "PRIX"})
    _drive(control)

    epoch = store.epoch(conn)
    change = conn.execute("SELECT raw_id FROM changes WHERE op = 'u'").fetchone()
    rows = _r_rows(conn)
    versions = {store.version_of(epoch, r["raw_id"]) for r in rows.values()}
    first = {v for v in versions if v < store.version_of(epoch, change[0])}
    assert len(first) == 1 and "000002" in rows  # key 2 only in a later read
    assert store.version_of(epoch, rows["000002"]["raw_id"]) > max(first)


def test_a_check_marks_changed_keys_and_leaves_them_out_of_the_sums(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checksums count keys 1 and 3; key 2 is cached with a NULL hash."""
    control = _leg(conn, monkeypatch, lambda: _change(conn, 2, "000002"))
    control.handle_command("check", {"table": "PRIX"})
    _drive(control)

    [part] = conn.execute("SELECT body FROM guardian_outbound").fetchall()
    body = json.loads(part[0])
    assert (body["kind"], body["bits"], body["rows_read"], body["changed"]) == (
        "buckets",
        4,
        3,
        1,
    )
    assert body["v_low"] == store.version_of(store.epoch(conn), 1)
    hashes = []
    for artnum, price in (ROWS[0], ROWS[2]):
        pk = digest.canonical_pk({"ARTNUM": artnum})
        hashes.append(digest.row_hash(pk, {"ARTNUM": artnum, "PRIX": price}))
    assert sum(b[1] for b in body["buckets"]) == 2
    total = sum(int(b[2]) for b in body["buckets"]) % 2**64
    assert total == int(digest.add_hashes(hashes)[1])
    cached = conn.execute("SELECT pk FROM guardian_cache WHERE row_hash IS NULL")
    assert [r[0] for r in cached] == [digest.canonical_pk({"ARTNUM": "000002"})]


def test_changed_keys_ignore_r_rows_and_older_changes(conn: sqlite3.Connection) -> None:
    """Only journal changes after c_low, and held cycles, count as changed."""
    _change(conn, 2, "000002")
    marks = bracket.low_marks(conn)
    _change(conn, 3, "000003")
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO changes (raw_id, table_name, op, key, source, entry_ts_ms,"
            " mined_at) VALUES (3, 'PRIX', 'r', ?, '{}', 0, 0)",
            (digest.canonical_pk({"ARTNUM": "000004"}),),
        )
    _hold(conn, "000005")
    changed = bracket.changed_keys(conn, "PRIX", marks.c_low)
    assert changed == {
        digest.canonical_pk({"ARTNUM": "000003"}),
        digest.canonical_pk({"ARTNUM": "000005"}),
    }
    assert bracket.changed_keys(conn, "STOCK", marks.c_low) == set()


def test_a_read_waits_until_the_pipeline_passed_its_end(
    conn: sqlite3.Connection,
) -> None:
    """Caught up only with the bookmark past the head and no raw backlog."""
    assert bracket.caught_up(conn, "MAG/QSQJRN", HEAD)
    later = Head("MAG", "QSQJRN0001", 11, HEAD.attach_ts)
    assert not bracket.caught_up(conn, "MAG/QSQJRN", later)
    with store.transaction(conn):
        conn.execute("UPDATE raw_entries SET state = 0")
    assert not bracket.caught_up(conn, "MAG/QSQJRN", HEAD)


def test_a_repair_reads_a_key_that_changed_again_until_it_can_send_it(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key 2 changes during the first read: it goes later; key 9 goes as NULL."""
    control = _leg(conn, monkeypatch, lambda: None)
    pk2 = digest.canonical_pk({"ARTNUM": "000002"})
    pk9 = digest.canonical_pk({"ARTNUM": "000009"})
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at,"
            " state, v_low) VALUES ('1-1', 'PRIX', 'check', 'repair', 0, 'sent', 1)"
        )
        body = {"type": "guardian", "run": "1-1", "table": "PRIX", "request": "1-1/4"}
        body["repair"] = [pk2, pk9]
        conn.execute(
            "INSERT INTO guardian_requests (request, received_at, run, table_name,"
            " body, state) VALUES ('1-1/4', 0, '1-1', 'PRIX', ?, 0)",
            (json.dumps(body),),
        )
    first = True

    def by_key(self: reader.TableReader, src: Any, key: dict[str, Any]) -> Any:
        nonlocal first
        if key["ARTNUM"] == "000002" and first:
            first = False
            _change(conn, 2, "000002")  # committed while the read runs
        found = [r for r in ROWS if r[0] == key["ARTNUM"]]
        return {"ARTNUM": found[0][0], "PRIX": found[0][1]} if found else None

    monkeypatch.setattr(reader.TableReader, "by_key", by_key)
    monkeypatch.setattr(leg, "RETRY_FIRST_S", 0.0)
    _drive(control)

    sent = conn.execute(
        "SELECT id, key, after, raw_id, source FROM changes WHERE op = 'r' ORDER BY id"
    ).fetchall()
    assert [json.loads(r["key"])["ARTNUM"] for r in sent] == ["000009", "000002"]
    assert sent[0]["after"] is None
    assert sent[1]["raw_id"] == 2  # the second read's r_low, after the change
    assert json.loads(sent[1]["source"])["guardian"]["request"] == "1-1/4"
    state = conn.execute("SELECT state FROM guardian_requests").fetchone()[0]
    assert state == 1
    run = conn.execute(
        "SELECT loaded, repaired, deleted, dropped FROM guardian_runs"
    ).fetchone()
    assert tuple(run) == (0, 1, 1, 1)


def test_keys_of_a_cycle_rolled_back_after_the_read_began_count_as_changed(
    conn: sqlite3.Connection,
) -> None:
    """A cycle open during the read then rolled back: its keys are dropped."""
    marks = bracket.low_marks(conn)
    obj = f"{'PRIX':<10}{'MAG':<10}"
    entries = [
        (5, "C", "SC", 0, 20, "", None),  # opened before the read: sequence 20
        (6, "R", "UP", 20, 21, obj + "PRIX", b"000007"),
        (7, "R", "PT", 21, 22, obj + "PRIX", b"000008"),  # another cycle
        (8, "R", "UP", 20, 23, f"{'STOCK':<10}{'MAG':<10}STOCK", b"000009"),
        (9, "C", "RB", 20, 24, "", None),
    ]
    with store.transaction(conn):
        for raw_id, code, kind, cycle, seq, obj_name, data in entries:
            conn.execute(
                "INSERT INTO raw_entries (id, journal, receiver_library,"
                " receiver_name, sequence, code, entry_type, entry_ts, commit_cycle,"
                " object, data, mined_at, state) VALUES (?, 'MAG/QSQJRN', 'MAG',"
                " 'QSQJRN0001', ?, ?, ?, '', ?, ?, ?, 0, 1)",
                (raw_id, seq, code, kind, cycle, obj_name, data),
            )

    def key_of(image: bytes, null_map: bytes | None) -> dict[str, Any]:
        return {"ARTNUM": image.decode()}

    found = bracket.rolled_back_keys(conn, marks.r_low, obj, key_of)
    assert found == {digest.canonical_pk({"ARTNUM": "000007"})}
    assert bracket.rolled_back_keys(conn, 9, obj, key_of) == set()


def test_check_and_load_commands_queue_jobs_and_refuse_unknown_tables(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control leg carries out check/load; a bad table or mode fails the command."""
    from appliance import commands

    control = _leg(conn, monkeypatch, lambda: None)
    runner = commands.Runner(
        conn, control, "control", clock=iter(range(0, 100, 5)).__next__
    )
    args = {"table": "PRIX", "mode": "log", "reason": "EJ gap"}
    ok = commands.request(conn, "control", "check", args, "tech")
    bad = commands.request(conn, "control", "load", {"table": "NOPE"}, "tech")
    worse = commands.request(conn, "control", "check", {"mode": "fix"}, "tech")
    runner.run_pending()
    states = {
        r["id"]: (r["state"], r["result"])
        for r in conn.execute("SELECT id, state, result FROM commands")
    }
    assert states[ok][0] == "done" and states[ok][1].startswith("check queued run=")
    assert states[bad][0] == "failed" and "NOPE" in states[bad][1]
    assert states[worse][0] == "failed" and "fix" in states[worse][1]
    [job] = control.queue
    assert (job.kind, job.table, job.mode, job.reason) == (
        "check",
        "PRIX",
        "log",
        "EJ gap",
    )
    with pytest.raises(commands.CommandError):
        commands.request(conn, "enricher", "check", {}, "tech")


class PagingCursor:
    """Pages of ``MANY`` by key after the last one; fails the read it is told to."""

    def __init__(self, fail_on: list[int], reads: list[int]) -> None:
        self.fail_on, self.reads = fail_on, reads
        self.result: list[tuple[Any, ...]] = []

    def execute(self, sql: str, *params: Any) -> None:
        import pyodbc

        self.reads.append(1)
        if len(self.reads) in self.fail_on:
            raise pyodbc.OperationalError("08S01", "link to the IBM i dropped")
        limit = int(re.search(r"FETCH FIRST (\d+)", sql).group(1))  # type: ignore[union-attr]
        after = params[-1] if params else ""
        self.result = [r for r in MANY if r[0] > after][:limit]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.result

    def close(self) -> None:
        pass


MANY = [(f"{n:06d}", f"{n}.00") for n in range(1, 26)]


def test_a_load_cut_by_a_source_failure_resumes_without_loss_or_repeat(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of 10, one per bracket; the second page's read fails once."""
    reads: list[int] = []
    control = _leg(conn, monkeypatch, lambda: None)
    control.section = control.section.model_copy(update={"read_chunk_rows": 10})
    source = type("S", (), {"cursor": lambda self: PagingCursor([2], reads)})()
    source.close = lambda: None
    monkeypatch.setattr(reader, "connect", lambda ibmi: source)
    monkeypatch.setattr(leg, "LOAD_PAGES", 1)
    monkeypatch.setattr(leg, "RETRY_FIRST_S", 0.0)
    control.handle_command("load", {"table": "PRIX"})
    _drive(control)

    keys = [json.loads(r["key"])["ARTNUM"] for r in _r_rows(conn).values()]
    count = conn.execute("SELECT count(*) FROM changes WHERE op = 'r'").fetchone()[0]
    assert sorted(keys) == [r[0] for r in MANY] and count == len(MANY)
    events = [r[0] for r in conn.execute("SELECT what FROM guardian_events")]
    assert "retry" in events and "loaded" in events
    run = conn.execute("SELECT state, loaded, repaired FROM guardian_runs")
    # Every row counted once as loaded, the retried page's too; none repaired.
    assert tuple(run.fetchone()) == ("loaded", len(MANY), 0)


def test_scheduled_checks_cover_every_table_once_due(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pass only sets the due time; once due, each table gets a check."""
    control = _leg(conn, monkeypatch, lambda: None)
    control.section = control.section.model_copy(update={"interval_s": 3600.0})
    control._schedule()
    assert not control.queue
    with store.transaction(conn):
        conn.execute("UPDATE meta SET value = '0' WHERE key = ?", (leg.NEXT_CHECK,))
    control._schedule()
    control._schedule()  # not due again, and no table queued twice
    assert sorted(j.table for j in control.queue) == ["ARTICLE", "PRIX", "STOCK"]
    assert {(j.kind, j.reason) for j in control.queue} == {("check", "scheduled")}
    assert len({j.run for j in control.queue}) == 1


def test_a_request_the_store_cannot_read_is_parked_not_fatal(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed narrow list goes to dead letters; the leg keeps stepping."""
    control = _leg(conn, monkeypatch, lambda: None)
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at,"
            " state, v_low) VALUES ('1-1', 'PRIX', 'check', 'repair', 0, 'sent', 1)"
        )
        conn.execute(
            "INSERT INTO guardian_requests (request, received_at, run, table_name,"
            " body, state) VALUES ('1-1/2', 0, '1-1', 'PRIX', ?, 0)",
            (json.dumps({"narrow": [[6]]}),),
        )
    control.step()
    [letter] = conn.execute("SELECT stage, reason, position FROM dead_letters")
    assert letter[0] == "control" and "bad guardian request" in letter[1]
    assert letter[2] == "1-1/2"
    assert conn.execute("SELECT state FROM guardian_requests").fetchone()[0] == 1


def test_a_repair_pk_of_another_key_is_parked_and_the_rest_answered(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pk that is not this table's key is parked; the good pk still goes."""
    control = _leg(conn, monkeypatch, lambda: None)
    good = digest.canonical_pk({"ARTNUM": "000001"})
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at,"
            " state, v_low) VALUES ('1-1', 'PRIX', 'check', 'repair', 0, 'sent', 1)"
        )
        body = {"repair": [good, '{"MAGASIN":"7"}', "not json"]}
        conn.execute(
            "INSERT INTO guardian_requests (request, received_at, run, table_name,"
            " body, state) VALUES ('1-1/3', 0, '1-1', 'PRIX', ?, 0)",
            (json.dumps(body),),
        )
    _drive(control)
    assert sorted(_r_rows(conn)) == ["000001"]
    letters = conn.execute("SELECT reason FROM dead_letters").fetchall()
    assert len(letters) == 2
    assert all("repair pk unreadable" in r[0] for r in letters)
    assert conn.execute("SELECT state FROM guardian_requests").fetchone()[0] == 1


def _repair_request(conn: sqlite3.Connection, table: str, pks: list[str]) -> None:
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at,"
            " state, v_low) VALUES ('1-1', ?, 'check', 'repair', 0, 'sent', 1)",
            (table,),
        )
        body = {"type": "guardian", "run": "1-1", "table": table, "repair": pks}
        conn.execute(
            "INSERT INTO guardian_requests (request, received_at, run, table_name,"
            " body, state) VALUES ('1-1/7', 0, '1-1', ?, ?, 0)",
            (table, json.dumps(body)),
        )


def test_a_repair_pk_the_source_only_matches_after_padding_is_sent_absent(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ODH pk with a padded CHAR key is not the source row's pk.

    The database compares CHAR values blank-padded, so a point read for
    ``"000001 "`` finds row ``000001``; sending that row under the padded pk
    would write a second ODH row with its data, and every check would find
    it again. The source has no row of that pk: the answer is NULL.
    """
    control = _leg(conn, monkeypatch, lambda: None)
    padded = '{"ARTNUM":"000001 "}'
    exact = digest.canonical_pk({"ARTNUM": "000002"})
    _repair_request(conn, "PRIX", [padded, exact])

    def by_key(self: reader.TableReader, src: Any, key: dict[str, Any]) -> Any:
        wanted = str(key["ARTNUM"]).rstrip(" ")  # CHAR comparison semantics
        found = [r for r in ROWS if r[0] == wanted]
        return {"ARTNUM": found[0][0], "PRIX": found[0][1]} if found else None

    monkeypatch.setattr(reader.TableReader, "by_key", by_key)
    _drive(control)

    sent = {
        r["key"]: r["after"]
        for r in conn.execute("SELECT key, after FROM changes WHERE op = 'r'")
    }
    assert sent == {
        padded: None,
        exact: json.dumps({"ARTNUM": "000002", "PRIX": "2.00"}, separators=(",", ":")),
    }
    assert conn.execute("SELECT state FROM guardian_requests").fetchone()[0] == 1


def test_a_repair_pk_with_columns_beyond_the_key_is_parked(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extra names in a pk would be ignored by the point read: parked instead."""
    control = _leg(conn, monkeypatch, lambda: None)
    _repair_request(conn, "PRIX", ['{"ARTNUM":"000001","PRIX":"1.00"}'])
    _drive(control)
    assert _r_rows(conn) == {}
    [reason] = conn.execute("SELECT reason FROM dead_letters").fetchone()
    assert "repair pk unreadable" in reason
    assert conn.execute("SELECT state FROM guardian_requests").fetchone()[0] == 1


def test_a_repair_after_a_restart_finds_a_table_by_its_sql_name(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs and hub requests name a table by its SQL name; the catalog by its
    system name. A leg that has not read the table since it started must
    still find it, not retry a catalog read of the SQL name forever."""
    long = make_layout(
        "MAG",
        "PRIXV00001",
        [Column("ARTNUM", "CHAR", 6), Column("PRIX", "DECIMAL", 7, 2)],
        ["ARTNUM"],
        sql_schema="MAG",
        sql_name="PRIX_DE_VENTE",
    )
    control = _leg(conn, monkeypatch, lambda: None, ["PRIXV00001"])

    def load_layout(src: Any, ibmi: Any, table: str) -> Any:
        if table != "PRIXV00001":
            raise DecodeError("table not found in catalog", table=table)
        return long

    monkeypatch.setattr(reader, "load_layout", load_layout)
    _repair_request(conn, "PRIX_DE_VENTE", [digest.canonical_pk({"ARTNUM": "000001"})])
    _drive(control)
    [row] = conn.execute("SELECT table_name, key FROM changes WHERE op = 'r'")
    assert row["table_name"] == "PRIX_DE_VENTE"
    assert conn.execute("SELECT state FROM guardian_requests").fetchone()[0] == 1


def test_a_row_a_cycle_made_and_undid_during_the_read_is_never_sent(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle open during the read inserts key 3, rolls back to a savepoint
    (DR compensates the PT) and commits. Its net effect is nothing, so no
    change and no held row name key 3, yet a reader that does not wait on
    record locks saw the row. Sent as ``r``, it would put in ODH a row the
    source never had: the key is dropped like a changed one."""
    obj = f"{'PRIX':<10}{'MAG':<10}PRIX"
    entries = [
        (10, "C", "SC", 0, 30, "", None),
        (11, "R", "PT", 30, 31, obj, b"000003"),
        (12, "R", "DR", 30, 32, obj, b"000003"),
        (13, "C", "CM", 30, 33, "", None),
    ]

    def during() -> None:
        with store.transaction(conn):
            for raw_id, code, kind, cycle, seq, obj_name, data in entries:
                conn.execute(
                    "INSERT INTO raw_entries (id, journal, receiver_library,"
                    " receiver_name, sequence, code, entry_type, entry_ts,"
                    " commit_cycle, object, data, mined_at, state) VALUES (?,"
                    " 'MAG/QSQJRN', 'MAG', 'QSQJRN0001', ?, ?, ?, '', ?, ?, ?, 0, 1)",
                    (raw_id, seq, code, kind, cycle, obj_name, data),
                )

    def image_key(
        self: reader.TableReader, image: bytes, null_map: bytes | None
    ) -> dict[str, Any]:
        return {"ARTNUM": image.decode()}

    monkeypatch.setattr(reader.TableReader, "image_key", image_key)
    control = _leg(conn, monkeypatch, during)
    control.handle_command("load", {"table": "PRIX"})
    _drive(control)
    sent = _r_rows(conn)
    # Not from the read the cycle ran across: from a point read of its own
    # in a later bracket (this fake table still holds the key then).
    assert sent["000001"]["raw_id"] == sent["000002"]["raw_id"]
    assert sent["000003"]["raw_id"] > sent["000001"]["raw_id"]


@pytest.mark.parametrize(
    "body",
    [
        {"repair": [digest.canonical_pk({"ARTNUM": f"{n:06d}"}) for n in range(1001)]},
        {"narrow": [[12, n] for n in range(1025)]},
    ],
    ids=["pks", "buckets"],
)
def test_a_request_larger_than_the_hub_ever_asks_is_parked(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]
) -> None:
    """A hub splits its asks (1,000 pks, one part's 1,024 buckets); a bigger
    list would hold the pipeline's write lock for its whole answer: parked."""
    control = _leg(conn, monkeypatch, lambda: None)
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at,"
            " state, v_low) VALUES ('1-1', 'PRIX', 'check', 'repair', 0, 'sent', 1)"
        )
        conn.execute(
            "INSERT INTO guardian_requests (request, received_at, run, table_name,"
            " body, state) VALUES ('1-1/9', 0, '1-1', 'PRIX', ?, 0)",
            (json.dumps(body),),
        )
    _drive(control)
    [reason] = conn.execute("SELECT reason FROM dead_letters").fetchone()
    assert "the hub asks at most" in reason
    assert _r_rows(conn) == {}
    assert conn.execute("SELECT count(*) FROM guardian_outbound").fetchone()[0] == 0
    assert conn.execute("SELECT state FROM guardian_requests").fetchone()[0] == 1


def test_a_check_read_again_keeps_its_cache_from_the_old_attempt_purge(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check read voided (here: the table cleared meanwhile) is read again
    under the same run, while the first attempt's cache is deleted a batch
    per step. Those deletes must not take the new attempt's rows: the sums
    handed over cover every row read."""
    cleared = False

    def during() -> None:
        nonlocal cleared
        if cleared:
            return
        cleared = True
        with store.transaction(conn):
            _raw(conn, 2)
            conn.execute(
                "INSERT INTO changes (raw_id, table_name, op, key, source,"
                " entry_ts_ms, mined_at) VALUES (2, 'PRIX', 't', '{}', '{}', 0, 0)"
            )

    monkeypatch.setattr(leg, "PURGE_ROWS", 1)
    monkeypatch.setattr(leg, "RETRY_FIRST_S", 0.0)
    control = _leg(conn, monkeypatch, during)
    control.handle_command("check", {"table": "PRIX"})
    _drive(control)
    [body] = [
        json.loads(r[0]) for r in conn.execute("SELECT body FROM guardian_outbound")
    ]
    assert body["rows_read"] == 3
    assert sum(count for _prefix, count, _sum in body["buckets"]) == 3
    cached = conn.execute("SELECT count(*) FROM guardian_cache").fetchone()[0]
    assert cached == 3


def test_a_load_counts_its_rows_loaded_and_a_repair_counts_them_repaired(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N rows of a load are ``loaded``; k rows a check had repaired are
    ``repaired`` (docs/guardian.md §5, appliance.guardian.records)."""
    monkeypatch.setattr(leg, "HOUSEKEEP_EVERY_S", 0.0)  # requests read each step
    control = _leg(conn, monkeypatch, lambda: None)
    control.handle_command("load", {"table": "PRIX"})
    _drive(control)
    load = conn.execute(
        "SELECT kind, state, rows_read, loaded, repaired, deleted, dropped"
        " FROM guardian_runs"
    ).fetchone()
    assert tuple(load) == ("load", "loaded", len(ROWS), len(ROWS), 0, 0, 0)

    asked = [digest.canonical_pk({"ARTNUM": r[0]}) for r in ROWS[:2]]
    _repair_request(conn, "PRIX", asked)
    _drive(control)
    check = conn.execute(
        "SELECT kind, loaded, repaired, deleted, dropped FROM guardian_runs"
        " WHERE run = '1-1'"
    ).fetchone()
    assert tuple(check) == ("check", 0, len(asked), 0, 0)
    assert len(_r_rows(conn)) == len(ROWS)  # the load's 3 then the repair's 2
    sent = conn.execute("SELECT count(*) FROM changes WHERE op = 'r'").fetchone()
    assert sent[0] == len(ROWS) + len(asked)


def test_an_older_database_gets_the_loaded_figure_and_its_loads_move_to_it(
    tmp_path: Path,
) -> None:
    """A guardian_runs made before ``loaded``: the column is added once, the
    old load runs' rows move from repaired to loaded, checks keep theirs."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE guardian_runs (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " run TEXT NOT NULL, table_name TEXT NOT NULL, kind TEXT NOT NULL,"
        " mode TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
        " started_at REAL NOT NULL, finished_at REAL,"
        " state TEXT NOT NULL DEFAULT 'reading',"
        " rows_read INTEGER NOT NULL DEFAULT 0, changed INTEGER NOT NULL DEFAULT 0,"
        " parts INTEGER NOT NULL DEFAULT 0, bytes_sent INTEGER NOT NULL DEFAULT 0,"
        " narrowed INTEGER NOT NULL DEFAULT 0, repaired INTEGER NOT NULL DEFAULT 0,"
        " deleted INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,"
        " error TEXT NOT NULL DEFAULT '', v_low INTEGER, UNIQUE (run, table_name));"
        "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at, state,"
        " rows_read, repaired) VALUES ('1-1', 'PRIX', 'load', 'repair', 0,"
        " 'loaded', 989, 989), ('1-2', 'PRIX', 'check', 'repair', 1, 'done',"
        " 989, 3);"
    )
    old.close()
    upgraded = store.connect(path)
    try:
        assert "loaded" not in records.columns(upgraded)
        assert records.ensure_schema(upgraded) == ["loaded"]
        assert records.ensure_schema(upgraded) == []  # once only
        rows = upgraded.execute(
            "SELECT run, loaded, repaired FROM guardian_runs ORDER BY run"
        ).fetchall()
        assert [tuple(r) for r in rows] == [("1-1", 989, 0), ("1-2", 0, 3)]
    finally:
        upgraded.close()
