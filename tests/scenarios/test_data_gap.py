"""A deleted bookmarked receiver: a typed, visible, alarmed DATA GAP, never silent.

Domain brief §7 case 9 (Popsink #14, jhc #23): the receiver holding the
bookmark and unread entries is deleted while the miner is down. The miner
must not restart from the oldest receiver; with ``on_data_gap = "stop"`` it
records the gap (counter, ``meta`` row, heartbeat state, ERROR log) and
stops, so systemd's restart limit leaves the unit failed for an operator.
With ``"resend"`` it records the gap the same way, resumes at the oldest
entry still available and asks the guardian for one repair check per table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import scenario_support as support

from appliance.devstack import STORE_TABLES, Stack
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


def _resend(relay: Stack) -> None:
    """``ibmi.on_data_gap = "resend"`` in the box settings, before the legs start."""
    text = relay.box_config.read_text()
    text = re.sub(r"(\[ibmi\]\n)", r'\1on_data_gap = "resend"\n', text, count=1)
    relay.box_config.write_text(text)


def test_data_gap_with_resend_goes_on_and_asks_one_check_per_table(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Gap recorded, miner resumes at the oldest entry left, checks asked once."""
    relay = support.stack(
        tmp_path_factory.mktemp("gap_resend"), "datagap_resend", before_start=_resend
    )
    try:
        emu = relay.emulator()
        workload.seed_store(emu, articles=30, seed=5)
        workload.run(emu, 0, changes=100, seed=6)
        support.drained(relay)

        support.stop_leg(relay, "miner")
        workload.run(emu, 0, changes=50, seed=7)  # lost with QSQJRN0001
        after = emu.change_receiver()
        workload.run(emu, 0, changes=50, seed=8)  # in the next receiver
        emu.delete_receiver("QSQJRN0001")
        support.start_leg(relay, "miner")
        support.drained(relay)  # the miner is alive and at the head

        report = support.status(relay)
        assert report["counters"]["miner.data_gaps"] == 1
        gap = report["journal"]["data_gap"]
        assert gap["recovery"] == "resend" and gap["receiver"] == "MAG/QSQJRN0001"
        assert gap["resumed_at"].startswith(f"MAG/{after}:")
        assert support.checks_asked(relay) == [
            (table, "data_gap") for table in sorted(STORE_TABLES)
        ]
        with relay.pipeline() as conn:
            read = conn.execute(
                "SELECT receiver_name, sequence, count(*) FROM raw_entries"
                " GROUP BY receiver_name, sequence HAVING count(*) > 1"
            ).fetchall()
            mark = conn.execute("SELECT receiver_name FROM bookmark").fetchone()
        assert read == []  # nothing read twice
        assert mark is not None and mark[0] == after

        # The relay goes on: later changes reach ODH; no second gap, no re-ask.
        first = emu.rows("PRIX")[0]
        with emu.job("000400/TEST/GAP", autocommit=True) as job:
            job.update("PRIX", {"ARTNUM": first["ARTNUM"]}, {"PRIX": "1.23"})
        support.drained(relay)
        prices = {r["ARTNUM"]: r["PRIX"] for r in support.live(relay, "PRIX")}
        assert prices[first["ARTNUM"]] == "1.23"
        assert support.counters(relay)["miner.data_gaps"] == 1
        assert len(support.checks_asked(relay)) == len(STORE_TABLES)
        support.repaired(relay, STORE_TABLES)  # the checks ran: nothing lost
    finally:
        relay.close()
