"""The soak, CI-sized: workload + resets, receiver changes, IPLs, ALTERs."""

from __future__ import annotations

from pathlib import Path

import pytest
from scenario_support import services

from appliance import soak
from appliance.devstack import Stack

pytestmark = pytest.mark.integration


def test_soak_of_five_thousand_changes_ends_with_odh_equal(tmp_path: Path) -> None:
    """Every event kind played; ODH equals the emulator; applied once each."""
    relay = Stack(services(), tmp_path, name="soak_ci", store_id="GF01")
    relay.prepare()
    relay.start_legs()
    try:
        report = soak.run(relay, 5_000, seed=7, articles=150)
    finally:
        relay.close()
    for table, item in report.tables.items():
        assert item["equal"], f"{table}: {item}"
        assert item["source"] > 0
    assert report.changes >= 5_000
    assert report.shipped == report.applied == report.distinct > 0
    assert report.dead_letters == 0
    assert report.receiver_changes >= 3 and report.resets >= 1
    assert report.alters >= 1
    assert report.rollbacks > 0 and report.savepoint_rollbacks > 0
