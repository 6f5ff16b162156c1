"""The page's security: login everywhere, CSRF, slowed logins, no secret shown.

The Flask test client speaks to the app over an https base URL (the session
cookie is Secure); the real TLS server is exercised by the browser test.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from webui_support import BASE, PASSWORD, csrf, login, settings_for

from appliance.errors import ConfigError
from webui import security
from webui.app import PUBLIC, create_app

# The forms an anonymous visitor must reach, and the stylesheet they use.
EXPECTED_PUBLIC = {"ui.login", "ui.setup", "static"}


def _sample_path(rule: str) -> str:
    return (
        rule.replace("<int:letter_id>", "1")
        .replace("<any(retry, discard):action>", "retry")
        .replace("<any(pause, resume):kind>", "pause")
        .replace("<any(check, load):kind>", "check")
        .replace("<leg>", "miner")
        .replace("<int:command_id>", "1")
        .replace("<path:filename>", "style.css")
    )


def test_every_route_refuses_an_anonymous_request(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    """Each rule of url_map, each method: redirect to login, 401 or 400."""
    app, _, _ = configured
    assert EXPECTED_PUBLIC == PUBLIC
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC:
            continue
        path = _sample_path(rule.rule)
        assert "<" not in path, f"new route {rule.rule}: teach _sample_path"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            reply = client.open(path, method=method, base_url=BASE)
            if method == "GET" and not rule.endpoint.startswith("api."):
                assert reply.status_code == 302, (rule.rule, reply.status_code)
                assert reply.headers["Location"].endswith("/login")
            else:
                assert reply.status_code == 401, (method, rule.rule)
            assert "tech" not in reply.get_data(as_text=True)
            checked += 1
    assert checked >= 20


def test_a_wrong_bearer_token_and_the_metrics_token_are_limited(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, tokens, _ = configured
    client = app.test_client()
    bad = {"Authorization": "Bearer " + "x" * 43}
    assert client.get("/api/v1/state", base_url=BASE, headers=bad).status_code == 401
    metrics = {"Authorization": "Bearer " + tokens["metrics"]}
    reply = client.get("/metrics", base_url=BASE, headers=metrics)
    assert reply.status_code == 200
    assert "appliance_lag_entries" in reply.get_data(as_text=True)
    assert (
        client.get("/api/v1/state", base_url=BASE, headers=metrics).status_code == 403
    )
    api = {"Authorization": "Bearer " + tokens["api"]}
    assert client.get("/api/v1/state", base_url=BASE, headers=api).status_code == 200


def test_a_form_without_its_csrf_token_is_refused(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    assert login(client) == 302
    data = {"table": "PRIX"}
    assert client.post("/actions/resend", base_url=BASE, data=data).status_code == 400
    data["csrf_token"] = "forged"
    assert client.post("/actions/resend", base_url=BASE, data=data).status_code == 400
    data["csrf_token"] = csrf(client, "/actions")
    reply = client.post("/actions/resend", base_url=BASE, data=data)
    assert reply.status_code == 302
    # The session API needs the header as well.
    body = {"leg": "miner", "kind": "pause"}
    assert client.post("/api/v1/commands", base_url=BASE, json=body).status_code == 400
    headers = {"X-CSRF-Token": data["csrf_token"]}
    reply = client.post("/api/v1/commands", base_url=BASE, json=body, headers=headers)
    assert reply.status_code == 202


def test_a_login_form_without_csrf_is_refused(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    reply = client.post(
        "/login", base_url=BASE, data={"user": "tech", "password": PASSWORD}
    )
    assert reply.status_code == 400


def test_wrong_passwords_are_slowed_down_then_refused_with_429(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    app.extensions["appliance"]["limiter"].delay_s = 0.2
    client = app.test_client()
    for failures in range(1, 4):  # login_failures = 3
        started = time.monotonic()
        assert login(client, "wrong password!") == 401
        # Lower bounds only: a loaded machine is slower, never faster.
        assert time.monotonic() - started >= 0.2 * failures
    assert login(client, "wrong password!") == 429
    # Even the right password waits out the lock.
    assert login(client) == 429


def test_session_cookie_flags_and_security_headers(
    configured: tuple[Flask, dict[str, str], str],
) -> None:
    app, _, _ = configured
    client = app.test_client()
    reply = client.get("/login", base_url=BASE)
    cookie = reply.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    headers = reply.headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "http" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert "max-age" in headers["Strict-Transport-Security"]


def test_setup_needs_the_code_and_happens_once(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    client = app.test_client()
    token = csrf(client, "/setup")
    form = {
        "csrf_token": token,
        "code": "000000-000000-000000",
        "user": "tech",
        "password": PASSWORD,
        "confirm": PASSWORD,
    }
    assert client.post("/setup", base_url=BASE, data=form).status_code == 401
    assert not (app.extensions["appliance"]["users"].configured())
    # No account yet: the first visit goes to the setup form, not the login.
    assert client.get("/", base_url=BASE).headers["Location"].endswith("/setup")


def test_no_secret_in_any_page_or_log(
    configured: tuple[Flask, dict[str, str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Password, setup code, session key and tokens never shown (after setup)."""
    app, tokens, code = configured
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    login(client, "a wrong one!")
    assert login(client) == 302
    secret_key = app.config["SECRET_KEY"].decode()
    secrets = [PASSWORD, code, secret_key, tokens["api"], tokens["metrics"]]
    pages = []
    for rule in app.url_map.iter_rules():
        if "GET" in (rule.methods or set()) and "<" not in rule.rule:
            reply = client.get(rule.rule, base_url=BASE, follow_redirects=True)
            assert reply.status_code == 200, rule.rule
            pages.append(reply.get_data(as_text=True))
    assert len(pages) >= 10
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "login" in logged
    for secret in secrets:
        for page in pages:
            assert secret not in page
        assert secret not in logged
    state_dir = app.extensions["appliance"]["settings"].webui.state_dir
    for path in state_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
        content = path.read_bytes()
        for secret in (PASSWORD, tokens["api"], tokens["metrics"]):
            assert secret.encode() not in content, path


def test_a_burst_of_parallel_tries_gets_only_the_limit() -> None:
    """Breaker run: 20 parallel wrong passwords were all checked, none refused.

    Tries are now reserved before the slow check, so a burst gets the limit.
    """
    limiter = security.LoginLimiter(limit=3, delay_s=0.0)
    barrier = threading.Barrier(20)
    results: list[float | None] = []

    def one() -> None:
        barrier.wait()
        results.append(limiter.attempt("127.0.0.2"))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sum(r is not None for r in results) == 3


def test_many_addresses_share_the_account_budget() -> None:
    """Breaker run: each new LAN address got a fresh set of guesses."""
    limiter = security.LoginLimiter(limit=3, delay_s=0.0)
    allowed = sum(
        limiter.attempt(f"10.0.0.{n}") is not None for n in range(40) for _ in range(3)
    )
    assert allowed == 3 * security.ACCOUNT_FACTOR


def test_the_session_key_file_is_private_long_and_never_replaced_blindly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Breaker run 2: a key file left 0644 stayed readable by all, an empty
    one broke every login (no session), a short one was used as is."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    state = tmp_path / "webui"
    state.mkdir()
    key = state / "secret-key"
    key.write_text("x" * 64)
    key.chmod(0o644)
    assert create_app(settings_for(tmp_path)).secret_key == b"x" * 64
    assert key.stat().st_mode & 0o777 == 0o600
    for weak in ("", "short"):
        key.write_text(weak)
        made = create_app(settings_for(tmp_path)).secret_key
        assert isinstance(made, bytes)
        assert len(made) >= security.MIN_KEY
        assert key.read_bytes().strip() == made
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "webui-secret").write_text("too short")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with pytest.raises(ConfigError):
        create_app(settings_for(tmp_path))
    capsys.readouterr()
