"""A deleted bookmarked receiver: a typed, visible, alarmed DATA GAP, never silent.

Domain brief §7 case 9 (Popsink #14, jhc #23): the receiver holding the
bookmark and unread entries is deleted while the miner is down. The miner
must not restart from the oldest receiver; with ``on_data_gap = "stop"`` it
records the gap (counter, ``meta`` row, heartbeat state, ERROR log) and
stops, so systemd's restart limit leaves the unit failed for an operator.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import scenario_support as support

from appliance.devstack import Stack
from appliance.emulator import workload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    found = support.stack(tmp_path_factory.mktemp("gap"), "datagap")
    yield found
    found.close()


def test_deleted_bookmarked_receiver_is_a_visible_data_gap(relay: Stack) -> None:
    """Miner stops with DataGapError; status shows state, counter and reason."""
    emu = relay.emulator()
    workload.seed_store(emu, articles=30, seed=5)
    workload.run(emu, 0, changes=100, seed=6)
    support.drained(relay)
    delivered = relay.compare()

    support.stop_leg(relay, "miner")
    workload.run(emu, 0, changes=50, seed=7)
    emu.change_receiver()
    emu.delete_receiver("QSQJRN0001")
    miner = support.start_leg(relay, "miner")
    assert miner.wait(timeout=60) != 0

    report = support.status(relay)
    legs = {leg["leg"]: leg for leg in report["legs"]}
    assert legs["miner"]["state"] == "data_gap"
    assert "QSQJRN0001" in legs["miner"]["status"]
    assert report["counters"]["miner.data_gaps"] >= 1
    gap = report["journal"]["data_gap"]
    assert gap["recovery"] == "stop" and gap["cpf"] == "CPF9801"
    assert gap["receiver"] == "MAG/QSQJRN0001"
    log = (relay.workdir / "logs" / "miner.log").read_text()
    assert "data gap, entries lost at the source" in log
    # Nothing after the gap was read: no silent restart at another receiver.
    with relay.pipeline() as conn:
        mark = conn.execute("SELECT receiver_name FROM bookmark").fetchone()
    assert mark is not None and mark[0] == "QSQJRN0001"
    assert all(item["equal"] for item in delivered.values())
