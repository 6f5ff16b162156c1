"""Helpers of the web page tests: settings on a temporary state dir, setup, login."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.config import BoxSettings
from webui.app import create_app

BASE = "https://127.0.0.1"
PASSWORD = "correct horse battery"


def settings_for(tmp: Path, db: Path | None = None) -> BoxSettings:
    return BoxSettings.model_validate(
        {
            "store": {"id": "MQ01"},
            "pipeline": {"db_path": str(db or tmp / "pipeline.db")},
            "webui": {"state_dir": str(tmp / "webui"), "login_failures": 3},
        }
    )


def setup_code(stderr: str) -> str:
    found = re.findall(r"setup code: (\S+)", stderr)
    assert found, "no setup code printed"
    return found[-1]


def csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path, base_url=BASE).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, f"no CSRF token in {path}"
    return found.group(1)


@pytest.fixture
def app(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Flask:
    del capsys  # active first, so the setup code printed at start is captured
    return create_app(settings_for(tmp_path), login_delay_s=0.05)


@pytest.fixture
def configured(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[Flask, dict[str, str], str]]:
    """An app with its technician 'tech' set up; yields app, tokens, code."""
    code = setup_code(capsys.readouterr().err)
    client = app.test_client()
    token = csrf(client, "/setup")
    page = client.post(
        "/setup",
        base_url=BASE,
        data={
            "csrf_token": token,
            "code": code,
            "user": "tech",
            "password": PASSWORD,
            "confirm": PASSWORD,
        },
    )
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    tokens = {
        role: re.search(rf'id="{role}-token">([^<]+)<', text).group(1)  # type: ignore[union-attr]
        for role in ("api", "metrics")
    }
    yield app, tokens, code


def login(client: FlaskClient, password: str = PASSWORD) -> int:
    token = csrf(client, "/login")
    return client.post(
        "/login",
        base_url=BASE,
        data={"csrf_token": token, "user": "tech", "password": password},
    ).status_code
