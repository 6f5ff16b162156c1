"""The miner's ``miner.alarm.bad_entry`` row is an alarm on the page and the API.

The row is written by the miner itself (``MinerLeg._unusable``, the code a
refused window runs), so the page reads the shape the miner writes.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from flask import Flask
from webui_support import BASE, csrf, login

from appliance import journalrows, miner, store
from appliance.config import BoxSettings
from webui import state

HOSTILE = "<b>x</b>\x1b[31m\u202e"


def raise_alarm(
    settings: BoxSettings, exc: journalrows.EntryError
) -> sqlite3.Connection:
    """The miner's meta row for ``exc``, written as a refused window writes it."""
    conn = store.connect(settings.pipeline.db_path)
    leg = miner.MinerLeg(settings, store.connect(settings.pipeline.db_path))
    leg._unusable(exc)
    leg.conn.close()
    return conn


def null_sequence() -> journalrows.EntryError:
    return journalrows.EntryError(
        receiver="MAG/QSQJRN0001",
        sequence=None,
        after=100,
        end=600,
        field="SEQUENCE_NUMBER",
        value=None,
        expected="a whole number, DECIMAL(21,0)",
    )


def test_a_bad_journal_entry_is_an_alarm_naming_it_until_it_clears(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = raise_alarm(app.extensions["appliance"]["settings"], null_sequence())
    client = app.test_client()
    login(client)

    alarms = client.get("/api/v1/state", base_url=BASE).get_json()["alarms"]
    assert {
        "code": "bad_entry",
        "detail": "MAG/QSQJRN0001:?",
        "facts": {
            "receiver": "MAG/QSQJRN0001",
            "sequence": "?",
            "last_stored": "100",
            "field": "SEQUENCE_NUMBER",
            "value": "NULL",
            "expected": "a whole number, DECIMAL(21,0)",
        },
    } in alarms
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert (
        "récepteur MAG/QSQJRN0001, séquence ? (enregistré jusqu'à 100),"
        " colonne SEQUENCE_NUMBER = NULL, attendu : a whole number, DECIMAL(21,0)"
    ) in page.replace("&#39;", "'")
    assert "DSPJRN sur ce récepteur" in page
    # Other alarms keep their shape: no facts.
    assert all("facts" not in a for a in alarms if a["code"] != "bad_entry")

    with store.transaction(conn):
        conn.execute("DELETE FROM meta WHERE key = ?", (miner.BAD_ENTRY_KEY,))
    alarms = client.get("/api/v1/state", base_url=BASE).get_json()["alarms"]
    assert all(a["code"] != "bad_entry" for a in alarms)


def test_the_alarm_in_english_names_the_sequence_and_column(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    exc = journalrows.EntryError(
        receiver="MAG/QSQJRN0002",
        sequence=4711,
        after=4700,
        end=None,
        field="OBJECT",
        value=None,
        expected="the journaled object on R, D and F entries",
    )
    raise_alarm(app.extensions["appliance"]["settings"], exc)
    client = app.test_client()
    login(client)
    token = csrf(client, "/")
    client.post("/lang", base_url=BASE, data={"csrf_token": token, "lang": "en"})
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert (
        "receiver MAG/QSQJRN0002, sequence 4711 (stored up to 4700), column"
        " OBJECT = NULL, expected: the journaled object on R, D and F entries"
    ) in page


def test_store_text_in_the_alarm_is_escaped(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """HTML is escaped and control or bidi characters shown as escapes."""
    app, _, _ = configured
    conn = store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)
    value = {
        "receiver": HOSTILE,
        "sequence": 7,
        "last_stored": 6,
        "field": "OBJECT",
        "value": HOSTILE,
        "expected": "x",
    }
    with store.transaction(conn):
        store.meta_put(conn, miner.BAD_ENTRY_KEY, json.dumps(value))
    client = app.test_client()
    login(client)
    page = client.get("/", base_url=BASE).get_data(as_text=True)
    assert "<b>x</b>" not in page
    assert "\x1b" not in page and "\u202e" not in page
    assert "&lt;b&gt;x&lt;/b&gt;\\x1b[31m\\u202e" in page


def test_an_odd_meta_value_still_raises_the_alarm(tmp_path: Path) -> None:
    """Not the miner's shape: the alarm stays, unknown facts read ``?``."""
    assert state.bad_entry(None) is None
    for stored in ("not json", "[1, 2]", '{"sequence": {"a": 1}}', b"\xff"):
        alarm = state.bad_entry(stored)
        assert alarm is not None
        assert alarm.code == "bad_entry"
        assert set(alarm.facts.values()) == {"?"}
    long = state.bad_entry(json.dumps({"value": "v" * 5000}))
    assert long is not None and len(long.facts["value"]) == state.FACT_SHOWN
