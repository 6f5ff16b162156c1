"""The Guardian page: runs and events from the control leg's records, alarms,
and the two commands it queues for the control leg (docs/guardian.md §5)."""

from __future__ import annotations

import json
import sqlite3
import time

from flask import Flask
from webui_support import BASE, csrf, login

from appliance import store
from appliance.guardian import records


def _conn(app: Flask) -> sqlite3.Connection:
    return store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)


def _runs(conn: sqlite3.Connection) -> None:
    now = time.time()
    rows = [
        # table, mode, state, rows_read, narrowed, repaired, deleted, error
        ("PRIX", "repair", "done", 900, 2, 3, 1, ""),
        ("PRIX", "repair", "done", 989, 0, 0, 0, ""),  # the last PRIX run
        ("STOCK", "log", "done", 5000, 4, 0, 0, ""),
        ("ARTICLE", "repair", "reading", 12, 0, 0, 0, "CPF9801 receiver gone"),
    ]
    with store.transaction(conn):
        for n, row in enumerate(rows):
            conn.execute(
                "INSERT INTO guardian_runs (run, started_at, finished_at,"
                " table_name, mode, state, rows_read, narrowed, repaired, deleted,"
                " error, kind, reason, changed, parts, bytes_sent, dropped)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " 'check', 'interval', 1, 1, 100, 0)",
                (f"7-{n}", now - 60, now - 48.5, *row),
            )
        conn.execute(
            "INSERT INTO guardian_events (at, run, table_name, what, detail)"
            " VALUES (?, '7-2', 'STOCK', 'narrowed', 'buckets [6, 12]')",
            (now,),
        )


def test_without_the_guardian_records_the_page_says_it_is_not_running(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, tokens, _ = configured
    client = app.test_client()
    login(client)
    page = client.get("/guardian", base_url=BASE).get_data(as_text=True)
    assert 'id="guardian-not-running"' in page
    assert "Le gardien ne tourne pas encore" in page
    assert 'href="/guardian"' in client.get("/", base_url=BASE).get_data(True)
    headers = {"Authorization": "Bearer " + tokens["api"]}
    facts = client.get("/api/v1/guardian", base_url=BASE, headers=headers).get_json()
    assert facts == {"running": False, "runs": [], "events": []}
    metrics = {"Authorization": "Bearer " + tokens["metrics"]}
    text = client.get("/metrics", base_url=BASE, headers=metrics).get_data(True)
    assert "appliance_guardian_up 0" in text
    # A database older than the guardian has no such tables at all.
    conn = _conn(app)
    conn.executescript("DROP TABLE guardian_runs; DROP TABLE guardian_events;")
    page = client.get("/guardian", base_url=BASE).get_data(as_text=True)
    assert 'id="guardian-not-running"' in page
    assert client.get("/", base_url=BASE).status_code == 200


def test_last_run_per_table_events_alarms_api_and_metrics(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, tokens, _ = configured
    _runs(_conn(app))
    client = app.test_client()
    login(client)
    client.post(
        "/lang", base_url=BASE, data={"csrf_token": csrf(client, "/"), "lang": "en"}
    )
    page = client.get("/guardian", base_url=BASE).get_data(as_text=True)
    assert "not running yet" not in page
    assert page.count('<tr data-table="PRIX"') == 1
    assert '<td class="narrowed">4</td>' in page  # STOCK
    assert "CPF9801 receiver gone" in page
    assert "11.5" in page  # the duration in seconds
    assert "buckets [6, 12]" in page
    overview = client.get("/", base_url=BASE).get_data(as_text=True)
    assert "The guardian found differences in table STOCK" in overview
    assert "last run on table ARTICLE failed" in overview

    headers = {"Authorization": "Bearer " + tokens["api"]}
    facts = client.get("/api/v1/guardian", base_url=BASE, headers=headers).get_json()
    last = {r["table_name"]: r for r in facts["runs"]}
    assert last["PRIX"]["rows_read"] == 989
    assert (last["ARTICLE"]["failed"], last["STOCK"]["failed"]) == (True, False)
    state = client.get("/api/v1/state", base_url=BASE, headers=headers).get_json()
    assert {"code": "guardian_differences", "detail": "STOCK"} in state["alarms"]
    assert {"code": "guardian_failed", "detail": "ARTICLE"} in state["alarms"]
    assert not any(a["detail"] == "PRIX" for a in state["alarms"])

    metrics = {"Authorization": "Bearer " + tokens["metrics"]}
    text = client.get("/metrics", base_url=BASE, headers=metrics).get_data(True)
    assert "appliance_guardian_up 1" in text
    assert 'appliance_guardian_last_run_rows_read{table="PRIX"} 989' in text
    assert 'appliance_guardian_last_run_narrowed{table="STOCK"} 4' in text
    assert 'appliance_guardian_last_run_failed{table="ARTICLE"} 1' in text


def test_check_and_load_are_confirmed_then_queued_for_the_control_leg(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, tokens, _ = configured
    conn = _conn(app)
    client = app.test_client()
    login(client)
    confirm = client.get("/guardian/load?table=prix", base_url=BASE)
    text = confirm.get_data(as_text=True)
    assert "relire toute la table PRIX" in text
    assert not conn.execute("SELECT count(*) FROM commands").fetchone()[0]
    token = csrf(client, "/guardian")
    # Without its CSRF token the form is refused.
    refused = client.post("/guardian/load", base_url=BASE, data={"table": "PRIX"})
    assert refused.status_code == 400
    form = {"csrf_token": token, "table": "PRIX"}
    assert client.post("/guardian/load", base_url=BASE, data=form).status_code == 302
    form = {"csrf_token": token, "table": "STOCK", "mode": "log"}
    client.post("/guardian/check", base_url=BASE, data=form)
    client.post("/guardian/check", base_url=BASE, data={"csrf_token": token})
    bad = {"csrf_token": token, "mode": "wipe"}
    client.post("/guardian/check", base_url=BASE, data=bad)
    client.post("/guardian/load", base_url=BASE, data={"csrf_token": token})
    headers = {"Authorization": "Bearer " + tokens["api"]}
    body = {"leg": "control", "kind": "check", "args": {"table": "article"}}
    reply = client.post("/api/v1/commands", base_url=BASE, json=body, headers=headers)
    assert reply.status_code == 202

    rows = conn.execute(
        "SELECT c.leg, c.kind, c.args, c.requested_by, a.action FROM commands c"
        " JOIN audit a ON a.command_id = c.id ORDER BY c.id"
    ).fetchall()
    assert [(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows] == [
        ("control", "load", {"table": "PRIX"}, "tech", "load"),
        ("control", "check", {"table": "STOCK", "mode": "log"}, "tech", "check"),
        ("control", "check", {}, "tech", "check"),
        ("control", "check", {"table": "ARTICLE"}, "token:api", "check"),
    ]
    page = client.get("/guardian", base_url=BASE).get_data(as_text=True)
    assert "repair or log" in page
    assert "needs its name" in page


def test_odd_values_in_the_guardian_records_fail_no_page(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Breaker run 2: SQLite keeps whatever was written. Text or a blob in a
    figure, an infinite or out-of-calendar time made the overview, the page,
    the API and /metrics answer 500 (or a bogus 404); the API wrote
    ``Infinity``, which is not JSON; huge texts went out whole."""
    app, tokens, _ = configured
    conn = _conn(app)
    huge = "E" * 1_000_000
    with store.transaction(conn):
        for n, (column, value) in enumerate(
            [
                ("rows_read", "many"),
                ("narrowed", b"\x00\xff"),
                ("repaired", float("inf")),
                ("started_at", 1e20),
                ("finished_at", float("-inf")),
                ("error", huge),
            ]
        ):
            conn.execute(
                "INSERT INTO guardian_runs (run, table_name, kind, mode,"
                " started_at, finished_at) VALUES (?, ?, 'check', 'log', 1, 2)",
                (f"9-{n}", f"T{n}"),
            )
            conn.execute(
                f"UPDATE guardian_runs SET {column} = ? WHERE run = ?",
                (value, f"9-{n}"),
            )
        conn.execute(
            "INSERT INTO guardian_events (at, run, table_name, what, detail)"
            " VALUES (?, '9-0', ?, 'narrowed', ?)",
            (-1e18, b"\x1b", huge),
        )
    client = app.test_client()
    login(client)
    for path in ("/", "/guardian"):
        reply = client.get(path, base_url=BASE)
        assert reply.status_code == 200, path
        assert len(reply.get_data()) < 100_000, path
    headers = {"Authorization": "Bearer " + tokens["api"]}
    reply = client.get("/api/v1/guardian", base_url=BASE, headers=headers)
    assert reply.status_code == 200
    facts = json.loads(reply.get_data(as_text=True), parse_constant=_not_json)
    last = {r["table_name"]: r for r in facts["runs"]}
    assert (last["T0"]["rows_read"], last["T1"]["narrowed"]) == (0, 0)
    assert (last["T2"]["repaired"], last["T4"]["finished_at"]) == (0, None)
    assert last["T4"]["duration_s"] is None
    assert len(last["T5"]["error"]) < 10_000
    assert facts["events"][0]["table_name"] == "\x1b"
    headers = {"Authorization": "Bearer " + tokens["api"]}
    assert (
        client.get("/api/v1/state", base_url=BASE, headers=headers).status_code == 200
    )
    metrics = {"Authorization": "Bearer " + tokens["metrics"]}
    text = client.get("/metrics", base_url=BASE, headers=metrics).get_data(True)
    assert 'appliance_guardian_last_run_rows_read{table="T0"} 0' in text
    assert "inf" not in text.lower()


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_a_command_still_pending_is_not_queued_twice(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Breaker run 2: a loop of POSTs queued one full re-read of the table per
    request; the same command is now queued once until its leg takes it."""
    app, tokens, _ = configured
    conn = _conn(app)
    client = app.test_client()
    login(client)
    token = csrf(client, "/guardian")
    for _ in range(5):
        form = {"csrf_token": token, "table": "PRIX"}
        assert (
            client.post("/guardian/load", base_url=BASE, data=form).status_code == 302
        )
    page = client.get("/guardian", base_url=BASE).get_data(as_text=True)
    assert "Déjà demandé : la commande 1, identique" in page
    headers = {"Authorization": "Bearer " + tokens["api"]}
    body = {"leg": "control", "kind": "load", "args": {"table": "prix"}}
    reply = client.post("/api/v1/commands", base_url=BASE, json=body, headers=headers)
    assert reply.status_code == 409
    first = reply.get_json()["id"]
    # Another table, or the same one once its leg took it, is queued.
    body["args"] = {"table": "STOCK"}
    reply = client.post("/api/v1/commands", base_url=BASE, json=body, headers=headers)
    assert reply.status_code == 202
    with store.transaction(conn):
        conn.execute("UPDATE commands SET state = 'running' WHERE id = ?", (first,))
    form = {"csrf_token": token, "table": "PRIX"}
    client.post("/guardian/load", base_url=BASE, data=form)
    rows = conn.execute("SELECT kind, args, state FROM commands ORDER BY id")
    assert [(r[0], json.loads(r[1]), r[2]) for r in rows] == [
        ("load", {"table": "PRIX"}, "running"),
        ("load", {"table": "STOCK"}, "pending"),
        ("load", {"table": "PRIX"}, "pending"),
    ]


def test_a_guardian_table_of_another_schema_fails_no_page(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Breaker run 2: a guardian_runs without id or table_name (another
    schema) made the overview and /metrics answer 500."""
    app, tokens, _ = configured
    conn = _conn(app)
    conn.executescript(
        "DROP TABLE guardian_runs; CREATE TABLE guardian_runs (run TEXT);"
        " INSERT INTO guardian_runs VALUES ('1');"
        " DROP TABLE guardian_events; CREATE TABLE guardian_events (at REAL);"
    )
    client = app.test_client()
    login(client)
    for path in ("/", "/guardian"):
        assert client.get(path, base_url=BASE).status_code == 200, path
    metrics = {"Authorization": "Bearer " + tokens["metrics"]}
    reply = client.get("/metrics", base_url=BASE, headers=metrics)
    assert reply.status_code == 200
    assert "appliance_guardian_up 0" in reply.get_data(as_text=True)


def test_table_names_that_escape_alike_make_one_series(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Breaker run 2: "A<ESC>" and "A\\x1b" (a backslash, x, 1, b) both
    print as A\\\\x1b: the same series twice fails the whole scrape."""
    app, tokens, _ = configured
    conn = _conn(app)
    with store.transaction(conn):
        for n, table in enumerate(("A\x1b", "A\\x1b")):
            conn.execute(
                "INSERT INTO guardian_runs (run, table_name, kind, mode,"
                " started_at, finished_at) VALUES (?, ?, 'check', 'log', 1, 2)",
                (f"8-{n}", table),
            )
    client = app.test_client()
    metrics = {"Authorization": "Bearer " + tokens["metrics"]}
    text = client.get("/metrics", base_url=BASE, headers=metrics).get_data(True)
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line[:1] != "#"]
    assert "appliance_guardian_last_run_rows_read{table=" in text
    assert len(series) == len(set(series))


def test_rows_a_load_sent_show_as_loaded_not_repaired(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Page, API and /metrics show ``loaded`` apart; a load of a log-mode
    table is no difference found (docs/guardian.md §5)."""
    app, tokens, _ = configured
    conn = _conn(app)
    headers = {"Authorization": "Bearer " + tokens["api"]}
    client = app.test_client()
    login(client)
    # A database from before the column (new ones have it from the start):
    # the figure reads 0 until the control leg adds it.
    with store.transaction(conn):
        conn.execute("ALTER TABLE guardian_runs DROP COLUMN loaded")
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at,"
            " state, rows_read, repaired) VALUES ('1-1', 'STOCK', 'check', 'log',"
            " 0, 'done', 40, 0)"
        )
    facts = client.get("/api/v1/guardian", base_url=BASE, headers=headers).get_json()
    assert [(r["loaded"], r["repaired"]) for r in facts["runs"]] == [(0, 0)]

    assert records.ensure_schema(conn) == ["loaded"]
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, started_at,"
            " finished_at, state, rows_read, loaded) VALUES ('1-2', 'PRIX',"
            " 'load', 'log', 0, 5, 'loaded', 989, 989)"
        )
    page = client.get("/guardian", base_url=BASE).get_data(as_text=True)
    assert "Chargées (renvoi)" in page
    assert '<td class="loaded">989</td><td class="narrowed">0</td>' in page
    assert '<td class="repaired">0</td>' in page
    facts = client.get("/api/v1/guardian", base_url=BASE, headers=headers).get_json()
    last = {r["table_name"]: r for r in facts["runs"]}
    assert (last["PRIX"]["loaded"], last["PRIX"]["repaired"]) == (989, 0)
    assert last["PRIX"]["differences"] == 0
    state = client.get("/api/v1/state", base_url=BASE, headers=headers).get_json()
    assert not any(a["code"].startswith("guardian") for a in state["alarms"])
    metrics = {"Authorization": "Bearer " + tokens["metrics"]}
    text = client.get("/metrics", base_url=BASE, headers=metrics).get_data(True)
    assert 'appliance_guardian_last_run_loaded{table="PRIX"} 989' in text
    assert 'appliance_guardian_last_run_repaired{table="PRIX"} 0' in text
