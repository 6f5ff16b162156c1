"""Skipping the journal entry of the miner's unusable-entry alarm from the page.

The alarm row is written here in the shape the miner writes it
(``miner.alarm.bad_entry``: receiver, sequence or null, last_stored, field,
value, expected...). The page only queues ``skip_entry``; what the miner then
does is the miner's tests' business.
"""

from __future__ import annotations

import html
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from webui_support import BASE, csrf, login

from appliance import cli, commands, store
from webui import state

RECEIVER = "MAG/QSQJRN0002"
SEQUENCE_ALARM = {
    "receiver": RECEIVER,
    "sequence": 4711,
    "last_stored": 4700,
    "field": "OBJECT",
    "value": "NULL",
    "expected": "the journaled object on R, D and F entries",
}
NULL_ALARM = {
    "receiver": "MAG/QSQJRN0001",
    "sequence": None,
    "last_stored": 100,
    "field": "SEQUENCE_NUMBER",
    "value": "NULL",
    "expected": "a whole number, DECIMAL(21,0)",
}


def pipeline(app: Flask) -> sqlite3.Connection:
    return store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)


def raise_alarm(conn: sqlite3.Connection, facts: dict[str, Any]) -> None:
    """The miner's meta row for ``facts`` (with the keys the page ignores)."""
    value = facts | {"position": "x", "window_end": None, "attempt": 1, "at": 1.0}
    with store.transaction(conn):
        store.meta_put(conn, state.BAD_ENTRY_KEY, json.dumps(value, sort_keys=True))


def clear_alarm(conn: sqlite3.Connection) -> None:
    with store.transaction(conn):
        conn.execute("DELETE FROM meta WHERE key = ?", (state.BAD_ENTRY_KEY,))


def page(client: FlaskClient, path: str) -> str:
    return html.unescape(client.get(path, base_url=BASE).get_data(as_text=True))


def in_english(client: FlaskClient) -> None:
    token = csrf(client, "/")
    client.post("/lang", base_url=BASE, data={"csrf_token": token, "lang": "en"})


def queued(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    rows = conn.execute("SELECT leg, kind, args, requested_by FROM commands")
    return [tuple(r) for r in rows]


def signed_in(
    configured: tuple[Flask, dict[str, str], str],
    alarm: dict[str, Any] | None = None,
) -> tuple[sqlite3.Connection, FlaskClient]:
    """The pipeline (with the miner's alarm ``alarm`` when given) and a
    logged-in technician's client."""
    app, _, _ = configured
    conn = pipeline(app)
    if alarm is not None:
        raise_alarm(conn, alarm)
    client = app.test_client()
    login(client)
    return conn, client


def post_skip(client: FlaskClient, entry: str, **extra: str) -> Any:
    """The confirmation's POST; ``field`` defaults to the fixture alarms'."""
    token = csrf(client, "/")
    field = "SEQUENCE_NUMBER" if "null-after" in entry else "OBJECT"
    data = {"csrf_token": token, "entry": entry, "field": field} | extra
    return client.post("/actions/skip-entry", base_url=BASE, data=data)


def test_without_an_alarm_the_confirmation_sends_back_with_a_message(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured)
    reply = client.get("/actions/skip-entry", base_url=BASE)
    assert reply.status_code == 302
    assert reply.headers["Location"].endswith("/")
    shown = page(client, "/")
    assert "Aucune alarme d'entrée inutilisable : rien à sauter." in shown
    assert 'id="skip-entry"' not in shown
    assert queued(conn) == []


def test_the_confirmation_names_the_entry_its_fault_and_what_follows(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    overview = page(client, "/")
    assert '<a href="/actions/skip-entry" id="skip-entry"' in overview
    assert "Sauter cette entrée" in overview
    assert 'id="skip-cli"' not in overview

    shown = page(client, "/actions/skip-entry")
    assert (
        "Le mineur va passer l'entrée 4711 du récepteur MAG/QSQJRN0002, qu'il ne"
        " peut pas utiliser : colonne OBJECT = NULL, attendu : the journaled"
        " object on R, D and F entries."
    ) in shown
    assert "comme rejet de l'étape miner (page Rejets)" in shown
    assert "elle n'est pas relayée vers le hub central" in shown
    assert "Un contrôle du gardien est demandé pour chaque table" in shown
    assert "C'est définitif" in shown
    assert 'name="entry" value="MAG/QSQJRN0002:4711"' in shown
    # The form carries the entry's name only, never the command's arguments.
    assert 'name="sequence"' not in shown and 'name="receiver"' not in shown
    assert queued(conn) == []


def test_the_confirmation_of_a_row_without_a_sequence_names_the_one_before(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    raise_alarm(pipeline(app), NULL_ALARM)
    client = app.test_client()
    login(client)
    in_english(client)
    shown = page(client, "/actions/skip-entry")
    assert (
        "The miner will pass over the row with no sequence after entry 100 of"
        " receiver MAG/QSQJRN0001, which it cannot use: column SEQUENCE_NUMBER ="
        " NULL, expected: a whole number, DECIMAL(21,0)."
    ) in shown
    assert "parks this row whole (every column) as a dead letter of stage" in shown
    assert "it is not relayed to the central hub" in shown
    assert "A guardian check is queued for each table the row touches" in shown
    assert "This cannot be undone" in shown
    assert 'name="entry" value="MAG/QSQJRN0001:null-after-100"' in shown
    assert "Skip this entry" in page(client, "/")


def test_confirming_queues_one_skip_with_the_alarm_s_own_arguments(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Fields the browser adds (another sequence, receiver) change nothing."""
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    reply = post_skip(
        client, "MAG/QSQJRN0002:4711", sequence="1", receiver="X/Y", null_after="3"
    )
    assert reply.status_code == 302
    assert reply.headers["Location"].endswith("/audit")
    assert queued(conn) == [
        (
            "miner",
            "skip_entry",
            '{"receiver": "MAG/QSQJRN0002", "sequence": 4711}',
            "tech",
        )
    ]
    assert "Demande enregistrée (commande 1)" in page(client, "/audit")


def test_confirming_a_row_without_a_sequence_queues_null_after(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured, NULL_ALARM)
    assert post_skip(client, "MAG/QSQJRN0001:null-after-100").status_code == 302
    assert queued(conn) == [
        (
            "miner",
            "skip_entry",
            '{"null_after": 100, "receiver": "MAG/QSQJRN0001"}',
            "tech",
        )
    ]


def test_the_skip_and_the_miner_s_answer_show_in_the_audit_log(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    post_skip(client, "MAG/QSQJRN0002:4711")
    [row] = list(
        conn.execute(
            "SELECT user_name, action, detail, command_id FROM audit"
            " WHERE action != 'setup'"
        )
    )
    assert tuple(row) == (
        "tech",
        "skip_entry",
        'leg=miner {"receiver": "MAG/QSQJRN0002", "sequence": 4711}',
        1,
    )
    assert '<td class="outcome">pending' in page(client, "/audit")
    # The miner's answer, as its Runner records it.
    [taken] = commands.take(conn, "miner")
    assert (taken.kind, taken.args) == (
        "skip_entry",
        {"receiver": "MAG/QSQJRN0002", "sequence": 4711},
    )
    commands.finish(conn, taken.id, True, "skipped MAG/QSQJRN0002:4711: dead letter 1")
    audit = page(client, "/audit")
    assert '<tr data-command="1">' in audit
    assert "done skipped MAG/QSQJRN0002:4711: dead letter 1" in audit


def test_an_alarm_that_changed_or_cleared_since_the_confirmation_is_refused(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    confirmed = "MAG/QSQJRN0002:4711"
    assert confirmed in page(client, "/actions/skip-entry")

    # The miner went on and met another entry of the same receiver.
    raise_alarm(conn, SEQUENCE_ALARM | {"sequence": 4712})
    reply = post_skip(client, confirmed)
    assert reply.headers["Location"].endswith("/")
    assert (
        "L'alarme nomme maintenant une autre entrée (l'entrée 4712 du récepteur"
        " MAG/QSQJRN0002) que celle confirmée : rien n'a été demandé."
    ) in page(client, "/")
    # Now a row without a sequence after the same 4711: another entry too.
    raise_alarm(conn, NULL_ALARM | {"receiver": RECEIVER, "last_stored": 4711})
    post_skip(client, confirmed)
    assert "rien n'a été demandé" in page(client, "/")
    assert queued(conn) == []

    clear_alarm(conn)
    reply = post_skip(client, confirmed)
    assert reply.headers["Location"].endswith("/")
    assert "L'alarme a disparu depuis votre confirmation" in page(client, "/")
    assert queued(conn) == []


def test_a_skip_without_its_csrf_token_is_refused(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    data = {"entry": "MAG/QSQJRN0002:4711"}
    assert (
        client.post("/actions/skip-entry", base_url=BASE, data=data).status_code == 400
    )
    data["csrf_token"] = "forged"
    assert (
        client.post("/actions/skip-entry", base_url=BASE, data=data).status_code == 400
    )
    assert queued(conn) == []


def test_a_skip_needs_a_logged_in_technician(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, tokens, _ = configured
    conn = pipeline(app)
    raise_alarm(conn, SEQUENCE_ALARM)
    client = app.test_client()
    reply = client.get("/actions/skip-entry", base_url=BASE)
    assert reply.status_code == 302
    assert reply.headers["Location"].endswith("/login")
    data = {"entry": "MAG/QSQJRN0002:4711", "csrf_token": csrf(client, "/login")}
    assert (
        client.post("/actions/skip-entry", base_url=BASE, data=data).status_code == 401
    )
    # A bearer token is for the API, not for a page.
    headers = {"Authorization": "Bearer " + tokens["api"]}
    reply = client.post(
        "/actions/skip-entry", base_url=BASE, data=data, headers=headers
    )
    assert reply.status_code == 401
    assert queued(conn) == []


def test_the_same_skip_still_pending_is_not_queued_twice(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    post_skip(client, "MAG/QSQJRN0002:4711")
    reply = post_skip(client, "MAG/QSQJRN0002:4711")
    assert reply.headers["Location"].endswith("/audit")
    assert "Déjà demandé : la commande 1, identique" in page(client, "/audit")
    assert len(queued(conn)) == 1
    skips = "SELECT count(*) FROM audit WHERE action = 'skip_entry'"
    assert conn.execute(skips).fetchone()[0] == 1


def test_an_alarm_without_its_facts_offers_no_skip_but_the_command_line(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = pipeline(app)
    with store.transaction(conn):
        store.meta_put(conn, state.BAD_ENTRY_KEY, '{"field": "OBJECT"}')
    client = app.test_client()
    login(client)
    overview = page(client, "/")
    assert "séquence ?" in overview
    assert 'id="skip-entry"' not in overview
    assert (
        '<span id="skip-cli">Les faits de cette alarme sont incomplets : cette page'
        " ne peut pas dire quelle entrée sauter."
    ) in overview
    assert "appliance skip-entry --receiver LIB/NOM --sequence N" in overview
    reply = client.get("/actions/skip-entry", base_url=BASE)
    assert reply.headers["Location"].endswith("/")
    assert post_skip(client, "?:?").headers["Location"].endswith("/")
    assert queued(conn) == []


def test_only_the_miner_s_shape_names_an_entry_to_skip() -> None:
    """What :func:`state.bad_entry` shows as ``?`` (or the command would
    rewrite) gives no skip arguments; the miner's shape gives the CLI's."""
    assert state.skip_args(json.dumps(SEQUENCE_ALARM)) == {
        "receiver": RECEIVER,
        "sequence": 4711,
    }
    assert state.skip_args(json.dumps(NULL_ALARM)) == {
        "receiver": "MAG/QSQJRN0001",
        "null_after": 100,
    }
    odd = [
        None,
        "not json",
        b"\xff",
        "[1, 2]",
        json.dumps({k: v for k, v in SEQUENCE_ALARM.items() if k != "sequence"}),
        json.dumps(SEQUENCE_ALARM | {"sequence": "4711"}),
        json.dumps(SEQUENCE_ALARM | {"sequence": True}),
        json.dumps(SEQUENCE_ALARM | {"sequence": 4711.0}),
        json.dumps(SEQUENCE_ALARM | {"sequence": 0}),
        json.dumps(SEQUENCE_ALARM | {"sequence": 2**70}),
        json.dumps(SEQUENCE_ALARM | {"receiver": "mag/qsqjrn0002"}),
        json.dumps(SEQUENCE_ALARM | {"receiver": "QSQJRN0002"}),
        json.dumps(SEQUENCE_ALARM | {"receiver": None}),
        json.dumps(NULL_ALARM | {"last_stored": None}),
        json.dumps(NULL_ALARM | {"last_stored": -1}),
    ]
    assert [state.skip_args(stored) for stored in odd] == [None] * len(odd)
    assert state.skip_key({"receiver": "A/B", "sequence": 7}) == "A/B:7"
    assert state.skip_key({"receiver": "A/B", "null_after": 0}) == "A/B:null-after-0"


def test_the_page_names_the_entry_as_the_command_line_does(tmp_path: Path) -> None:
    """The CLI's own check of the alarm takes the page's arguments as its own."""
    conn = store.connect(tmp_path / "pipeline.db")
    for facts in (SEQUENCE_ALARM, NULL_ALARM):
        raise_alarm(conn, facts)
        args = state.skip_args(state.bad_entry_row(conn))
        assert args is not None
        cli._alarm_names(conn, args)  # raises CommandError on another entry
        other = args | {"receiver": "MAG/QSQJRN0009"}
        with pytest.raises(commands.CommandError, match="the alarm names"):
            cli._alarm_names(conn, other)


def test_the_same_entry_unusable_for_another_column_is_not_taken_as_confirmed(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Confirmed for OBJECT, the alarm names entry 4711 for COMMIT_CYCLE by
    the POST (found by a tester): another decision, nothing is queued."""
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    assert 'name="field" value="OBJECT"' in page(client, "/actions/skip-entry")
    raise_alarm(
        conn,
        SEQUENCE_ALARM
        | {"field": "COMMIT_CYCLE", "expected": "a cycle number (0: none)"},
    )
    reply = post_skip(client, "MAG/QSQJRN0002:4711", field="OBJECT")
    assert reply.headers["Location"].endswith("/")
    assert queued(conn) == []
    assert "pour une autre raison (colonne COMMIT_CYCLE)" in page(client, "/")


def test_a_forged_non_ascii_csrf_token_is_a_400_not_a_500(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    conn, client = signed_in(configured, SEQUENCE_ALARM)
    page(client, "/actions/skip-entry")  # the session has its token
    data = {"csrf_token": "\u00e9t\u00e9", "entry": "MAG/QSQJRN0002:4711"}
    reply = client.post("/actions/skip-entry", base_url=BASE, data=data)
    assert reply.status_code == 400
    assert queued(conn) == []
