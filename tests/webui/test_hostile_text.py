"""Store data and typed input that try to fool the technician or the tools.

Breaker run findings, each now an assertion: raw ESC / NUL / U+202E from a
dead letter reached the page and `appliance status`; /metrics printed label
values unescaped; a full-width table name was queued; a time zone typed in
`since` was replaced by UTC.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest
from flask import Flask
from webui_support import BASE, csrf, login

from appliance import cli, store
from webui import display

HOSTILE = "bad\x1b[31mred\x00nul\u202eevil\u2066\x85end"
RAW = ("\x1b", "\x00", "\u202e", "\u2066", "\x85")
SHOWN = ("\\x1b", "\\x00", "\\u202e", "\\u2066", "\\x85")


def _conn(app: Flask) -> sqlite3.Connection:
    return store.connect(app.extensions["appliance"]["settings"].pipeline.db_path)


def _commands(app: Flask) -> list[tuple[str, str, str]]:
    rows = _conn(app).execute("SELECT leg, kind, args FROM commands ORDER BY id")
    return [tuple(r) for r in rows]


def test_control_and_bidi_characters_are_shown_escaped_in_pages(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    conn = _conn(app)
    payload = {"after": {"LIBELLE": HOSTILE}}
    with store.transaction(conn):
        store.park(
            conn, stage="enricher", reason=HOSTILE, table=HOSTILE, payload=payload
        )
    store.heartbeat(conn, "miner", 1, "running", HOSTILE)
    client = app.test_client()
    login(client)
    for path in ("/dead-letters", "/dead-letters/1", "/"):
        page = client.get(path, base_url=BASE).get_data(as_text=True)
        for raw in RAW:
            assert raw not in page, (path, raw)
    detail = client.get("/dead-letters/1", base_url=BASE).get_data(as_text=True)
    for shown in SHOWN:
        assert shown in detail
    # The JSON API escapes them as JSON does (\u001b), never raw.
    api = client.get("/api/v1/dead-letters/1", base_url=BASE).get_data()
    for raw in RAW:
        assert raw.encode() not in api
    assert json.loads(api)["reason"] == HOSTILE


def test_appliance_status_prints_store_text_escaped(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = store.connect(f"{tmp_path}/pipeline.db")
    store.heartbeat(conn, "miner", 1, "running", HOSTILE)
    assert cli._status(conn, as_json=False) == 0
    out = capsys.readouterr().out
    for raw in RAW:
        assert raw not in out
    assert "bad\\x1b[31mred\\x00nul\\u202eevil" in out


def test_metrics_label_values_are_escaped(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, tokens, _ = configured
    conn = _conn(app)
    with store.transaction(conn):
        store.bump(conn, 'odd"name\\with\nnewline')
    client = app.test_client()
    headers = {"Authorization": "Bearer " + tokens["metrics"]}
    text = client.get("/metrics", base_url=BASE, headers=headers).get_data(True)
    assert 'appliance_counter{name="odd\\"name\\\\with\\nnewline"} 1' in text
    for line in text.splitlines():
        assert line.startswith(("# ", "appliance_")), line


FULL_WIDTH_PRIX = "\uff30\uff32\uff29\uff38"


@pytest.mark.parametrize(
    "name", [FULL_WIDTH_PRIX, "PR\u0130X", "prix\u202e", "1PRIX", "PR IX"]
)
def test_table_names_other_than_system_names_are_refused(
    configured: tuple[Flask, dict[str, str], str], name: str
) -> None:
    app, tokens, _ = configured
    client = app.test_client()
    login(client)
    token = csrf(client, "/actions")
    form = {"csrf_token": token, "table": name}
    page = client.post("/actions/resend", base_url=BASE, data=form)
    assert page.status_code == 302
    for kind in ("check", "load"):
        client.post(f"/guardian/{kind}", base_url=BASE, data=form)
    headers = {"Authorization": "Bearer " + tokens["api"]}
    for body in (
        {"leg": "enricher", "kind": "resend", "args": {"table": name}},
        {"leg": "control", "kind": "load", "args": {"table": name}},
    ):
        reply = client.post(
            "/api/v1/commands", base_url=BASE, json=body, headers=headers
        )
        assert reply.status_code == 400
        assert "system name" in reply.get_json()["error"]
    assert _commands(app) == []
    flashed = client.get("/actions", base_url=BASE).get_data(as_text=True)
    assert "system name" in flashed


def test_a_lower_case_ascii_table_name_is_taken_upper_case(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    login(client)
    form = {"csrf_token": csrf(client, "/actions"), "table": "prix"}
    client.post("/actions/resend", base_url=BASE, data=form)
    assert _commands(app) == [("enricher", "resend", '{"table": "PRIX"}')]


def test_resend_keeps_the_time_zone_written_in_the_value(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    login(client)
    form = {
        "csrf_token": csrf(client, "/actions"),
        "since": "2026-12-04T08:00+01:00",
        "until": "2026-12-04 10:30+01:00",
    }
    client.post("/actions/resend", base_url=BASE, data=form)
    (_leg, _kind, args), *_ = _commands(app)
    utc = dt.UTC
    assert json.loads(args) == {
        "since": dt.datetime(2026, 12, 4, 7, 0, tzinfo=utc).timestamp(),
        "until": dt.datetime(2026, 12, 4, 9, 30, tzinfo=utc).timestamp(),
    }
    # Without a zone, UTC as the form says.
    form |= {"since": "2026-12-04 08:00", "until": ""}
    client.post("/actions/resend", base_url=BASE, data=form)
    assert json.loads(_commands(app)[1][2]) == {
        "since": dt.datetime(2026, 12, 4, 8, 0, tzinfo=utc).timestamp()
    }


def test_resend_refuses_a_naive_and_an_aware_time_together(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    login(client)
    form = {
        "csrf_token": csrf(client, "/actions"),
        "since": "2026-12-04T08:00+01:00",
        "until": "2026-12-04 10:00",
    }
    client.post("/actions/resend", base_url=BASE, data=form)
    page = client.get("/actions", base_url=BASE).get_data(as_text=True)
    assert "give a time zone to both or to neither" in page
    assert _commands(app) == []


def test_visible_keeps_ordinary_text_lines_and_indents() -> None:
    """French text, no-break spaces, emoji, newlines and tabs stay as they are."""
    plain = "Événement : prix\u00a012,50 €\n\t👍 ok"
    assert display.visible(plain) == plain
    assert display.visible("a\u2028b\ufeffc\x7f") == "a\\u2028b\\ufeffc\\x7f"
    assert display.label_value("x\x1by") == "x\\\\x1by"
