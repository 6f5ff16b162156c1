"""An operator's skip around commit cycles, on the whole relay.

A skipped commit boundary once left its cycle held for ever, so the checks
the skip asked for took its keys as in flight and never repaired them. And
the checks may read a table while a cycle is still open at the source (a
till's sale in progress): a row change whose JOURNAL_CODE reads NULL was
once taken for a boundary and its cycle cut, a C CM of unknown cycle cut
every open cycle, another till's included, and what those cycles did after
the checks was lost (found by testers). Now a skipped boundary leaves a
SKIP_MARK (its cycle parked, repaired by the checks), a skipped row change a
SKIP_ROW_MARK, and the tables are checked again when each open cycle ends.
Each test ends with the ODH equal to the source and nothing held.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    """A running relay on a seeded store, its DISPLAY_JOURNAL able to show NULLs."""
    sys.path.insert(0, str(REPO / "scripts"))
    import services

    stack = Stack(
        Services.from_state(services.ensure_up()),
        tmp_path_factory.mktemp("skipcycles"),
        name="skipcycles",
    )
    stack.prepare()
    stack.start_legs()
    workload.seed_store(stack.emulator(), articles=20, seed=3)
    stack.wait_drained(timeout_s=120)
    wrap_display_journal(site(stack))
    yield stack
    stack.close()


def site(relay: Stack) -> Any:
    """What test_miner_nulls' helpers need of the emulator."""
    return SimpleNamespace(
        admin=relay.services.conninfo(relay.ibmi_db),
        ibmi=SimpleNamespace(user=f"relay_{relay.name}"),
    )


def until(what: str, found: Callable[[], object], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found():
            return
        time.sleep(0.5)
    raise AssertionError(f"never: {what}")


def alarm(relay: Stack) -> dict[str, object] | None:
    with relay.pipeline() as conn:
        row = conn.execute(
            "SELECT value FROM meta WHERE key = 'miner.alarm.bad_entry'"
        ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def prix_runs(relay: Stack) -> list[str]:
    with relay.pipeline() as conn:
        rows = conn.execute(
            "SELECT state FROM guardian_runs WHERE table_name = 'PRIX'"
        ).fetchall()
    return [str(r[0]) for r in rows]


@contextmanager
def miner_stopped(relay: Stack) -> Iterator[None]:
    """The miner stopped (SIGSTOP), so what is written meanwhile is first read
    with the NULL the test shows."""
    miner = next(leg.process.pid for leg in relay.legs if leg.name == "miner")
    os.kill(miner, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(miner, signal.SIGCONT)


def skip_the_alarmed_entry(relay: Stack, sequence: int | None) -> str:
    """Wait for the miner's alarm on ``sequence``; skip it with the CLI."""
    until("the miner's alarm", lambda: alarm(relay) is not None)
    found = alarm(relay)
    assert found is not None and found["sequence"] == sequence
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
    return skip.stdout


def assert_prix_equal_and_nothing_held(relay: Stack) -> None:
    """The repair's r rows go through the shipper and the sink: look again
    until they are in (or a minute passed), then judge."""
    deadline = time.monotonic() + 60
    report = relay.compare(("PRIX",))["PRIX"]
    while not report["equal"] and time.monotonic() < deadline:
        time.sleep(1)
        report = relay.compare(("PRIX",))["PRIX"]
    assert report["equal"], report
    with relay.pipeline() as conn:
        held = [
            tuple(row)
            for row in conn.execute("SELECT cycle_key, raw_id FROM held_changes")
        ]
    assert held == [], held


def test_skipped_commit_is_repaired_by_the_checks_it_queues(relay: Stack) -> None:
    emu = relay.emulator()
    with miner_stopped(relay):
        with emu.job("123456/POS/CAISSE01") as job:
            job.update("PRIX", {"ARTNUM": "000005"}, {"PRIX": "7.77"})
            job.update("PRIX", {"ARTNUM": "000006"}, {"PRIX": "8.88"})
            job.commit()
        head = emu.head()
        assert head.sequence is not None
        null_field(site(relay), head.receiver_name, head.sequence, "journal_entry_type")
    runs = len(prix_runs(relay))
    said = skip_the_alarmed_entry(relay, head.sequence)
    assert "guardian checks ARTICLE, PRIX, STOCK" in said
    null_field(site(relay), head.receiver_name, head.sequence, None)
    until("the PRIX check done", lambda: len(prix_runs(relay)) > runs)
    until("the PRIX check done", lambda: set(prix_runs(relay)) == {"done"})
    assert_prix_equal_and_nothing_held(relay)


@pytest.mark.parametrize(
    ("end", "keys"),
    [("commit", ("000008", "000009")), ("rollback", ("000010", "000011"))],
)
def test_skip_inside_an_open_cycle_then_its_end(
    relay: Stack, end: str, keys: tuple[str, str]
) -> None:
    """A row change whose code reads NULL, skipped while its cycle is open;
    the skip's check done, the till then commits or rolls back."""
    emu = relay.emulator()
    job = emu.job("123457/POS/CAISSE02")
    with miner_stopped(relay):
        job.update("PRIX", {"ARTNUM": keys[0]}, {"PRIX": "7.77"})
        head = emu.head()  # the R UP of the first key
        job.update("PRIX", {"ARTNUM": keys[1]}, {"PRIX": "8.88"})
        null_field(site(relay), head.receiver_name, head.sequence, "journal_code")
    runs = len(prix_runs(relay))
    skip_the_alarmed_entry(relay, head.sequence)
    null_field(site(relay), head.receiver_name, head.sequence, None)
    until("the skip's PRIX check", lambda: len(prix_runs(relay)) > runs)
    until("the skip's PRIX check done", lambda: set(prix_runs(relay)) == {"done"})
    if end == "commit":
        job.commit()
    else:
        job.rollback()
    assert_prix_equal_and_nothing_held(relay)


def test_skip_of_a_cm_of_unknown_cycle_waits_for_another_till_s_cycle(
    relay: Stack,
) -> None:
    """A C CM whose COMMIT_CYCLE reads NULL, skipped: every open cycle is
    cut, another till's still open at the source too; that till then rolls
    back (the emulator's checks see uncommitted rows, docs/guardian.md step
    2; on IBM i at *CS the same case comes with a commit)."""
    emu = relay.emulator()
    other = emu.job("123460/POS/CAISSE04")
    with miner_stopped(relay):
        other.update("PRIX", {"ARTNUM": "000012"}, {"PRIX": "6.66"})
        with emu.job("123459/POS/CAISSE03") as job:
            job.update("PRIX", {"ARTNUM": "000013"}, {"PRIX": "5.55"})
            job.commit()
        head = emu.head()  # the C CM
        null_field(site(relay), head.receiver_name, head.sequence, "commit_cycle")
    runs = len(prix_runs(relay))
    skip_the_alarmed_entry(relay, head.sequence)
    null_field(site(relay), head.receiver_name, head.sequence, None)
    until("the skip's PRIX check", lambda: len(prix_runs(relay)) > runs)
    until("the skip's PRIX check done", lambda: set(prix_runs(relay)) == {"done"})
    other.rollback()
    assert_prix_equal_and_nothing_held(relay)
