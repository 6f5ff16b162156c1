"""Dead-letter actions speak the page's language (docs/webui.md, Rejets).

A guardian letter (stage ``control``) cannot be retried: the page says so in
French by default and in English on request, never with the command
check's English, and queues nothing.
"""

from __future__ import annotations

import sqlite3

import pytest
from flask import Flask
from flask.testing import FlaskClient
from webui_support import BASE, csrf, login

from appliance import store

# Sentences the English page and the command check would show.
ENGLISH = (
    "cannot be retried",
    "not for leg",
    "Request refused",
    "expected (",
)


def _letter(app: Flask, stage: str) -> sqlite3.Connection:
    conn = store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)
    with store.transaction(conn):
        store.park(
            conn,
            stage=stage,
            reason="bad guardian request: KeyError: 'run'",
            table="PRIX",
            position="9-1/4",
            data=b'{"type": "guardian"}',
        )
    return conn


def _retry(client: FlaskClient) -> str:
    token = csrf(client, "/dead-letters/1")
    reply = client.post(
        "/dead-letters/1/retry",
        base_url=BASE,
        data={"csrf_token": token},
        follow_redirects=True,
    )
    assert reply.status_code == 200
    return reply.get_data(as_text=True)


def test_retrying_a_guardian_letter_is_refused_in_french(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = _letter(app, "control")
    client = app.test_client()
    login(client)
    detail = client.get("/dead-letters/1", base_url=BASE).get_data(as_text=True)
    assert "Un rejet du gardien ne peut pas être relancé" in detail
    assert "/dead-letters/1/retry" not in detail  # no button that cannot work
    assert "/dead-letters/1/discard" in detail

    page = _retry(client)
    assert 'class="flash error">Un rejet du gardien ne peut pas' in page
    assert "« Contrôler maintenant »" in page
    for sentence in ENGLISH:
        assert sentence not in page, sentence
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 0
    assert conn.execute("SELECT state FROM dead_letters").fetchone()[0] == "parked"


def test_the_same_refusal_in_english_and_for_other_stages(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = _letter(app, "control")
    client = app.test_client()
    login(client)
    token = csrf(client, "/")
    client.post("/lang", base_url=BASE, data={"csrf_token": token, "lang": "en"})
    page = _retry(client)
    assert 'class="flash error">A guardian dead letter cannot be retried' in page
    assert "not for leg" not in page

    with store.transaction(conn):
        conn.execute("UPDATE dead_letters SET stage = 'shipper'")
    page = _retry(client)
    assert "A dead letter of the shipper stage cannot be retried" in page
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 0


@pytest.mark.parametrize("action", ["retry", "discard"])
def test_a_letter_no_longer_parked_is_refused_in_french(
    configured: tuple[Flask, dict[str, str], str], action: str
) -> None:
    app, _, _ = configured
    conn = _letter(app, "enricher")
    with store.transaction(conn):
        conn.execute("UPDATE dead_letters SET state = 'retried'")
    client = app.test_client()
    login(client)
    token = csrf(client, "/dead-letters")
    reply = client.post(
        f"/dead-letters/1/{action}",
        base_url=BASE,
        data={"csrf_token": token},
        follow_redirects=True,
    )
    page = reply.get_data(as_text=True)
    assert "Le rejet 1 n&#39;est plus en attente : rien n&#39;a été demandé." in page
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 0


def test_discarding_a_guardian_letter_is_queued_in_french(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = _letter(app, "control")
    client = app.test_client()
    login(client)
    token = csrf(client, "/dead-letters/1")
    reply = client.post(
        "/dead-letters/1/discard",
        base_url=BASE,
        data={"csrf_token": token},
        follow_redirects=True,
    )
    assert "Demande enregistrée (commande 1)" in reply.get_data(as_text=True)
    row = conn.execute("SELECT leg, kind, args FROM commands").fetchone()
    assert tuple(row) == ("control", "discard_dead_letter", '{"id": 1}')
