"""Sessions: a copied cookie dies at logout or password change; no endless slide.

Breaker run: a cookie copied before logout still opened every page (the
session lived only in the signed cookie), and a session used every few
hours never ended. The account's session nonce is now kept server side and
checked on every request, and a session ends ``webui.session_max_h`` after
its login whatever its activity.
"""

from __future__ import annotations

import time
import unicodedata
from types import SimpleNamespace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from webui_support import BASE, PASSWORD, csrf, login

import webui.app

COOKIE = "__Host-appliance"
NEW_PASSWORD = "another long passphrase"


def _copy_of(client: FlaskClient, app: Flask) -> FlaskClient:
    """A second browser holding a copy of ``client``'s session cookie."""
    cookie = client.get_cookie(COOKIE, domain="127.0.0.1")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie(COOKIE, cookie.value, domain=cookie.domain)
    return thief


def _in(client: FlaskClient) -> bool:
    """True when the client's session opens the overview."""
    return client.get("/", base_url=BASE).status_code == 200


def test_logout_ends_a_copied_cookie(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    assert login(client) == 302
    thief = _copy_of(client, app)
    assert _in(thief)
    token = csrf(client, "/")
    reply = client.post("/logout", base_url=BASE, data={"csrf_token": token})
    assert reply.status_code == 302
    assert not _in(client)
    assert not _in(thief)
    assert thief.get("/api/v1/state", base_url=BASE).status_code == 401
    # Logging in again makes a new session that works.
    assert login(client) == 302
    assert _in(client)
    assert not _in(thief)


def test_a_password_change_ends_the_other_sessions_only(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    login(client)
    other = _copy_of(client, app)
    token = csrf(client, "/account")
    form = {"csrf_token": token, "current": "not it at all", "password": NEW_PASSWORD}
    assert client.post("/account", base_url=BASE, data=form).status_code == 401
    assert _in(other)
    form |= {"current": PASSWORD, "confirm": NEW_PASSWORD}
    reply = client.post("/account", base_url=BASE, data=form)
    assert reply.status_code == 302
    assert _in(client)
    assert not _in(other)
    fresh = app.test_client()
    assert login(fresh) == 401
    assert login(fresh, NEW_PASSWORD) == 302
    audit = client.get("/api/v1/audit", base_url=BASE, headers={}).get_json()
    assert audit[0]["action"] == "password"


def test_a_session_ends_after_its_absolute_lifetime_even_when_used(
    configured: tuple[Flask, dict[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, _, _ = configured
    assert app.extensions["appliance"]["settings"].webui.session_max_h == 12
    client = app.test_client()
    login(client)
    started = time.time()
    for hours in (4, 8, 11.9):
        clock = SimpleNamespace(time=lambda h=hours: started + h * 3600)
        monkeypatch.setattr(webui.app, "time", clock)
        assert _in(client), hours
    clock = SimpleNamespace(time=lambda: started + 12.1 * 3600)
    monkeypatch.setattr(webui.app, "time", clock)
    reply = client.get("/", base_url=BASE)
    assert reply.status_code == 302
    assert reply.headers["Location"].endswith("/login")
    monkeypatch.undo()
    assert not _in(client)  # the cookie was cleared, not just refused once


def test_a_new_password_equal_to_the_current_one_is_refused(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Breaker run 2: "changing" the password to itself was taken."""
    app, _, _ = configured
    client = app.test_client()
    login(client)
    token = csrf(client, "/account")
    form = {
        "csrf_token": token,
        "current": PASSWORD,
        "password": PASSWORD,
        "confirm": PASSWORD,
    }
    reply = client.post("/account", base_url=BASE, data=form)
    assert reply.status_code == 400
    assert "doit différer" in reply.get_data(as_text=True)
    assert _in(client)


def test_a_password_is_the_same_whatever_its_unicode_form(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Breaker run 2: a password chosen with "é" as "e" + combining accent
    (NFD, as some systems type it) was refused when typed as one "é"."""
    app, _, _ = configured
    client = app.test_client()
    login(client)
    decomposed = "pa\u0301tisserie cre\u0300me"
    composed = unicodedata.normalize("NFC", decomposed)
    assert decomposed != composed
    form = {
        "csrf_token": csrf(client, "/account"),
        "current": PASSWORD,
        "password": decomposed,
        "confirm": decomposed,
    }
    assert client.post("/account", base_url=BASE, data=form).status_code == 302
    assert login(app.test_client(), composed) == 302
    assert login(app.test_client(), decomposed) == 302
