"""A refused login is an alarm, not a WARNING retried for ever (newcomer report).

With a wrong IBM i password the miner used to log one WARNING per attempt
and nothing else: the web page showed no alarm, `appliance status` said
running. Now the first refusal is an ERROR, the ``meta`` row
``miner.alarm.source_denied`` holds it (the page's alarm) until a call goes
through, and each attempt is counted.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_miner_leg import FakeConnection, FakeJournal, settings

from appliance import miner, store
from appliance.config import IbmiSection
from appliance.errors import SourceError

REFUSED = (
    "source failed while connecting sqlstate=08001: connection to server failed:"
    ' FATAL:  password authentication failed for user "relay"'
)


class Login:
    """Refuses the first ``refusals`` logins, then lets the relay in."""

    def __init__(self, fake: FakeJournal, refusals: int) -> None:
        self.fake = fake
        self.refusals = refusals

    def __call__(self, ibmi: IbmiSection) -> Any:
        if self.refusals:
            self.refusals -= 1
            raise SourceError(REFUSED)
        return FakeConnection(self.fake)


def alarm(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(
        "SELECT value FROM meta WHERE key = ?", (miner.DENIED_KEY,)
    ).fetchone()
    return None if row is None else str(row[0])


def count(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT value FROM counters WHERE name = 'miner.source_denied'"
    ).fetchone()
    return 0 if row is None else int(row[0])


def test_wrong_password_raises_the_alarm_until_let_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(miner, "BACKOFF_FIRST_S", 0.0)
    monkeypatch.setattr(miner, "BACKOFF_MAX_S", 0.0)
    fake = FakeJournal()
    fake.add("QSQJRN0001", 30, reset=True)
    conn = store.connect(tmp_path / "pipeline.db")
    leg = miner.MinerLeg(settings(tmp_path), conn, Login(fake, refusals=3))
    with caplog.at_level(logging.WARNING, logger="appliance.miner"):
        leg.setup()  # first refusal
        assert leg.step() is False
        assert leg.step() is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "refused the relay's user" in errors[0].getMessage()
    assert count(conn) == 3
    held = alarm(conn)
    assert held is not None and "password authentication failed" in held
    # The password is fixed: the next call goes through and clears it.
    for _ in range(5):
        leg.step()
    assert alarm(conn) is None
    assert conn.execute("SELECT count(*) FROM raw_entries").fetchone()[0] > 0


def test_an_alarm_from_before_a_restart_is_cleared_by_a_good_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(miner, "BACKOFF_FIRST_S", 0.0)
    fake = FakeJournal()
    fake.add("QSQJRN0001", 10, reset=True)
    conn = store.connect(tmp_path / "pipeline.db")
    first = miner.MinerLeg(settings(tmp_path), conn, Login(fake, refusals=1))
    first.setup()
    assert alarm(conn) is not None
    again = miner.MinerLeg(settings(tmp_path), conn, Login(fake, refusals=0))
    again.setup()
    again.step()
    assert alarm(conn) is None


def test_a_passing_failure_raises_no_alarm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(miner, "BACKOFF_FIRST_S", 0.0)

    def down(ibmi: IbmiSection) -> Any:
        raise SourceError("source failed while connecting sqlstate=08001: refused")

    conn = store.connect(tmp_path / "pipeline.db")
    leg = miner.MinerLeg(settings(tmp_path), conn, down)
    leg.setup()
    leg.step()
    assert alarm(conn) is None
    assert count(conn) == 0
