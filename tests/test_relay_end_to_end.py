"""The relay end to end on the real services: emulator -> ... -> ODH.

Ten thousand store changes (inserts, updates, deletes over three tables, some
inside commit cycles, some rolled back) go through the five legs running as
their own processes, against real unixODBC/psqlODBC, a real JVM, a real
Kafka and a real PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devstack import Services, Stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sys.path.insert(0, str(REPO / "scripts"))
    import services

    stack = Stack(
        Services.from_state(services.ensure_up()),
        tmp_path_factory.mktemp("e2e"),
        name="e2e",
        store_id="GP07",
    )
    stack.prepare()
    stack.start_legs()
    yield stack
    stack.close()


def test_ten_thousand_changes_reach_the_odh_exactly_once(relay: Stack) -> None:
    """ODH equals the emulator value for value; all confirmed; none twice."""
    from appliance.emulator import workload

    emulator = relay.emulator()
    workload.seed_store(emulator, articles=300, seed=11)
    written = workload.run(emulator, rate_per_s=5000, changes=10_000, seed=12)
    emulator.inject_bad_image("PRIX")
    relay.wait_drained(timeout_s=600)

    report = relay.compare()
    for table, item in report.items():
        assert item["equal"], f"{table}: {item}"
        assert item["source"] > 0, f"{table} has no rows: the test proves nothing"
    counts = relay.counts()
    assert counts["outbox.confirmed"] == counts["enricher.messages"]
    assert counts["hub.applied"] == counts["hub.applied_distinct"]
    assert counts["hub.applied"] == counts["enricher.messages"]
    # 10,000 row changes written; rolled-back ones and several changes to one
    # key inside a cycle ship as their net effect, so fewer changes come out.
    assert written["changes"] >= 10_000
    assert written["rolled_back"] > 0
    assert written["commits"] > 0 and written["deletes"] > 0
    assert counts["transformer.changes"] > 0.8 * written["changes"]
    assert counts["dead_letters"] == 1


def test_a_bad_record_is_parked_with_its_bytes_and_listed(relay: Stack) -> None:
    """The mis-sized image is in dead letters with table, position and bytes."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "--config",
            str(relay.box_config),
            "dead-letters",
            "list",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    letters = json.loads(out.stdout)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["stage"] == "transformer"
    assert letter["table_name"] == "PRIX"
    receiver, sequence = letter["position"].split(":")
    assert receiver.startswith("QSQJRN") and int(sequence) > 0
    assert letter["field"]
    assert letter["byte_offset"] is not None
    assert letter["bytes_hex"]
    assert "bytes, got" in letter["expected"]


def test_every_leg_stops_cleanly_on_sigterm(relay: Stack) -> None:
    """SIGTERM stops each leg with exit code 0 within the unit's bound."""
    stopped = relay.stop_legs(timeout_s=30)
    assert set(stopped) == {
        "miner",
        "transformer",
        "enricher",
        "shipper",
        "control",
        "sink",
    }
    for leg, (code, seconds) in stopped.items():
        assert code == 0, f"{leg} exited with {code}"
        assert seconds < 30
