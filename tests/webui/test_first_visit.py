"""The first visit on a fresh box: setup first, then login (docs/webui.md).

While no technician account exists, every page sends the browser straight to
the setup form; once the account exists, the setup form is refused and
creates nothing, and the login works as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask
from webui_support import BASE, PASSWORD, csrf, login

PAGES = ("/", "/login", "/guardian", "/dead-letters", "/actions", "/account")


def test_every_page_sends_a_fresh_box_to_the_setup_form(app: Flask) -> None:
    client = app.test_client()
    for path in PAGES:
        reply = client.get(path, base_url=BASE)
        assert reply.status_code == 302, path
        assert reply.headers["Location"] == "/setup", path
    landed = client.get("/", base_url=BASE, follow_redirects=True)
    assert [r.request.path for r in landed.history] == ["/"]
    assert landed.request.path == "/setup"
    assert 'name="code"' in landed.get_data(as_text=True)
    # The API and /metrics still answer 401, never a page.
    assert client.get("/api/v1/state", base_url=BASE).status_code == 401
    assert client.get("/metrics", base_url=BASE).status_code == 401


def test_once_the_account_exists_setup_is_refused_and_login_works(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, code = configured
    state_dir = Path(app.extensions["appliance"]["settings"].webui.state_dir)
    before = json.loads((state_dir / "users.json").read_text())
    client = app.test_client()
    assert client.get("/", base_url=BASE).headers["Location"] == "/login"
    assert client.get("/setup", base_url=BASE).headers["Location"] == "/login"
    token = csrf(client, "/login")
    reply = client.post(
        "/setup",
        base_url=BASE,
        data={
            "csrf_token": token,
            "code": code,
            "user": "intruder",
            "password": "another long password",
            "confirm": "another long password",
        },
    )
    assert reply.status_code == 302
    assert reply.headers["Location"] == "/login"
    after = json.loads((state_dir / "users.json").read_text())
    assert after["users"] == before["users"]
    assert after["tokens"] == before["tokens"]
    assert login(client, "another long password") == 401
    assert login(client, PASSWORD) == 302
    assert client.get("/", base_url=BASE).status_code == 200


def test_a_second_account_is_never_made_even_past_the_form(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Two setup forms racing past the form's check still make one account."""
    app, _, _ = configured
    users = app.extensions["appliance"]["users"]
    assert users.create("late", "a late long password") is None
    assert not users.check("late", "a late long password")
    assert users.check("tech", PASSWORD)
