"""Log lines: stamped on a terminal, unstamped under systemd (journald stamps)."""

from __future__ import annotations

import logging

import pytest

from appliance import logs


def _format(monkeypatch: pytest.MonkeyPatch, under_systemd: bool) -> str:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    if under_systemd:
        monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.setup("INFO", "miner")
        record = logging.LogRecord(
            "appliance.miner", logging.INFO, "x", 1, "hi", (), None
        )
        formatter = root.handlers[0].formatter
        assert formatter is not None
        return formatter.format(record)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_terminal_lines_carry_their_time(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _format(monkeypatch, under_systemd=False)
    assert line.endswith(" INFO appliance.miner: hi")
    assert line[:4].isdigit()  # 2026-...


def test_journal_lines_carry_no_time_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _format(monkeypatch, under_systemd=True) == "INFO appliance.miner: hi"
