"""Skipping an unusable commit boundary must not lose its cycle for good.

``appliance skip-entry`` on a C CM whose JOURNAL_ENTRY_TYPE reads NULL
queues a guardian repair check of every relayed table. The cycle's changes
once stayed in ``held_changes`` (no CM or RB would ever come for them), and
the guardian's bracket (``appliance/guardian/bracket.py`` ``changed_keys``)
takes every key held there as in flight: each check skipped exactly the keys
the skip lost (found by a tester on an emulator stack: PRIX at 7.77/8.88 in
the store, 0.99/12.50 in the ODH after the check). Now the skip stores a
``SKIP_MARK`` with the cycle, the transformer parks what the cycle held, and
the check repairs those rows from the source.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_miner_nulls import null_field, wrap_display_journal

from appliance.devstack import Services, Stack
from appliance.emulator import workload

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sys.path.insert(0, str(REPO / "scripts"))
    import services

    stack = Stack(
        Services.from_state(services.ensure_up()),
        tmp_path_factory.mktemp("skipcm"),
        name="skipcm",
    )
    stack.prepare()
    stack.start_legs()
    yield stack
    stack.close()


def until(what: str, found: Callable[[], object], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found():
            return
        time.sleep(0.5)
    raise AssertionError(f"never: {what}")


def test_skipped_commit_is_repaired_by_the_checks_it_queues(relay: Stack) -> None:
    emu = relay.emulator()
    workload.seed_store(emu, articles=20, seed=3)
    relay.wait_drained(timeout_s=120)
    site: Any = SimpleNamespace(
        admin=relay.services.conninfo(relay.ibmi_db),
        ibmi=SimpleNamespace(user=f"relay_{relay.name}"),
    )
    wrap_display_journal(site)
    miner = next(leg.process.pid for leg in relay.legs if leg.name == "miner")
    os.kill(miner, signal.SIGSTOP)  # so the CM is shown NULL on first read
    try:
        with emu.job("123456/POS/CAISSE01") as job:
            job.update("PRIX", {"ARTNUM": "000005"}, {"PRIX": "7.77"})
            job.update("PRIX", {"ARTNUM": "000006"}, {"PRIX": "8.88"})
            job.commit()
        head = emu.head()
        assert head.sequence is not None
        null_field(site, head.receiver_name, head.sequence, "journal_entry_type")
    finally:
        os.kill(miner, signal.SIGCONT)

    def alarm() -> dict[str, object] | None:
        with relay.pipeline() as conn:
            row = conn.execute(
                "SELECT value FROM meta WHERE key = 'miner.alarm.bad_entry'"
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    until("the miner's alarm", lambda: alarm() is not None)
    found = alarm()
    assert found is not None and found["sequence"] == head.sequence
    skip = subprocess.run(
        [
            str(Path(sys.executable).parent / "appliance"),
            "--config",
            str(relay.box_config),
            "skip-entry",
            "--receiver",
            str(found["receiver"]),
            "--sequence",
            str(found["sequence"]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert skip.returncode == 0, skip.stdout + skip.stderr
    assert "guardian checks ARTICLE, PRIX, STOCK" in skip.stdout

    def checked() -> bool:
        with relay.pipeline() as conn:
            rows = conn.execute(
                "SELECT state FROM guardian_runs WHERE table_name = 'PRIX'"
            ).fetchall()
        return bool(rows) and all(r[0] == "done" for r in rows)

    until("the PRIX check done", checked)
    # The repair's r rows go through the shipper and the sink: look again
    # until they are in (or a minute passed), then judge.
    deadline = time.monotonic() + 60
    report = relay.compare(("PRIX",))["PRIX"]
    while not report["equal"] and time.monotonic() < deadline:
        time.sleep(1)
        report = relay.compare(("PRIX",))["PRIX"]
    assert report["equal"], report
    with relay.pipeline() as conn:
        held = conn.execute(
            "SELECT count(*) FROM held_changes WHERE cycle_key LIKE 'cycle:%'"
        ).fetchone()[0]
    assert held == 0
