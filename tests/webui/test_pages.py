"""Pages and API on a prepared pipeline database: what they show and queue."""

from __future__ import annotations

import time

from flask import Flask
from webui_support import BASE, csrf, login

from appliance import commands, store
from appliance.journal import Bookmark
from appliance.miner import save_bookmark
from webui import i18n


def _pipeline(app: Flask) -> object:
    return store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)


def test_every_french_message_has_its_english() -> None:
    assert set(i18n.MESSAGES["fr"]) == set(i18n.MESSAGES["en"])
    assert i18n.translate("de", "nav.audit") == "Journal d'audit"


def test_overview_shows_a_stalled_leg_and_a_dead_letter_with_what_to_do(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)
    store.heartbeat(conn, "miner", 1, "running", "")
    with store.transaction(conn):
        conn.execute("UPDATE heartbeats SET updated_at = ?", (time.time() - 600,))
        store.park(conn, stage="transformer", reason="bad size", data=b"\x01\xab")
    client = app.test_client()
    login(client)
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert "bloquée" in page
    assert "systemctl status appliance-miner" in page
    assert "ouvrez la page Rejets" in page
    state = client.get("/api/v1/state", base_url=BASE).get_json()
    assert state["dead_letters"] == 1
    assert {"code": "leg_stalled", "detail": "miner"} in state["alarms"]
    detail = client.get("/dead-letters/1", base_url=BASE).get_data(as_text=True)
    assert "01 AB" in detail


def test_dead_letter_retry_queues_a_command_for_its_stage(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)
    with store.transaction(conn):
        store.park(conn, stage="enricher", reason="script", payload={"a": 1})
    client = app.test_client()
    login(client)
    token = csrf(client, "/dead-letters/1")
    reply = client.post(
        "/dead-letters/1/retry", base_url=BASE, data={"csrf_token": token}
    )
    assert reply.status_code == 302
    row = conn.execute("SELECT leg, kind, args, requested_by FROM commands").fetchone()
    assert tuple(row) == ("enricher", "retry_dead_letter", '{"id": 1}', "tech")
    # The page itself changed nothing: the letter waits for the enricher.
    assert conn.execute("SELECT state FROM dead_letters").fetchone()[0] == "parked"


def test_rewind_confirmation_states_what_is_sent_again(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)
    mark = Bookmark("JRNLIB", "QSQJRN0003", 500, True, first_sequence=1)
    with store.transaction(conn):
        save_bookmark(conn, "MAG/QSQJRN", mark)
    client = app.test_client()
    login(client)
    page = client.get("/actions/rewind?sequence=451", base_url=BASE)
    text = page.get_data(as_text=True)
    assert "entrées 451 à 500 du récepteur QSQJRN0003 (50 entrées)" in text
    token = csrf(client, "/actions")
    client.post(
        "/actions/rewind",
        base_url=BASE,
        data={"csrf_token": token, "sequence": "451"},
    )
    row = conn.execute("SELECT leg, kind, args FROM commands").fetchone()
    assert tuple(row) == (
        "miner",
        "rewind",
        '{"receiver": "QSQJRN0003", "sequence": 451}',
    )
    moved = commands.rewind(conn, "MAG/QSQJRN", mark, "QSQJRN0003", 451)
    assert (moved.sequence, moved.processed, moved.next_sequence) == (451, False, 451)
    stored = conn.execute("SELECT sequence, processed FROM bookmark").fetchone()
    assert tuple(stored) == (451, 0)


def test_api_token_queues_commands_and_is_audited(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, tokens, _ = configured
    client = app.test_client()
    headers = {"Authorization": "Bearer " + tokens["api"]}
    body = {"leg": "enricher", "kind": "resend", "args": {"table": "prix"}}
    reply = client.post("/api/v1/commands", base_url=BASE, json=body, headers=headers)
    assert reply.status_code == 202
    command = reply.get_json()["id"]
    bad = {"leg": "shipper", "kind": "resend", "args": {"table": "PRIX"}}
    reply = client.post("/api/v1/commands", base_url=BASE, json=bad, headers=headers)
    assert reply.status_code == 400
    audit = client.get("/api/v1/audit", base_url=BASE, headers=headers).get_json()
    assert audit[0]["user_name"] == "token:api"
    assert audit[0]["command_id"] == command
    assert "PRIX" in audit[0]["detail"]


def test_a_refused_catalog_read_is_an_alarm_until_it_clears(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """The transformer's meta row (it retries for ever) shows with what to do."""
    app, _, _ = configured
    conn = store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            ("transformer.alarm.source_denied", '{"error": "CPF2217", "attempt": 3}'),
        )
    client = app.test_client()
    login(client)
    state = client.get("/api/v1/state", base_url=BASE).get_json()
    assert {"code": "source_denied", "detail": ""} in state["alarms"]
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert "le droit *USE sur le journal et les tables relayées" in page
    with store.transaction(conn):
        conn.execute("DELETE FROM meta WHERE key = 'transformer.alarm.source_denied'")
    state = client.get("/api/v1/state", base_url=BASE).get_json()
    assert all(a["code"] != "source_denied" for a in state["alarms"])
    # The miner's refused login raises the same alarm.
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            ("miner.alarm.source_denied", '{"error": "CPF22E2", "attempt": 1}'),
        )
    state = client.get("/api/v1/state", base_url=BASE).get_json()
    assert {"code": "source_denied", "detail": ""} in state["alarms"]
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert "vérifiez le mot de passe du relais" in page
