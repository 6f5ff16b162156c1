"""``appliance bench guardian`` at a tiny size: it still runs, finds and repairs.

The figures themselves are read, not asserted (docs/benchmarks.md); this only
proves the scenario works end to end on the real services.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance import benchguard
from appliance.devstack import Services

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


def test_guardian_bench_finds_and_repairs_its_drift(tmp_path: Path) -> None:
    """5,000 rows: no difference on the first check, all 20 found and repaired."""
    sys.path.insert(0, str(REPO / "scripts"))
    import services

    found = benchguard.run(
        Services.from_state(services.ensure_up()),
        tmp_path,
        rows=5000,
        differences=20,
        name="benchguard_ci",
    )
    verify, repair = found["verify"]["summary"], found["repair"]["summary"]
    assert found["verify"]["rows_read"] == 5000
    assert verify["buckets_differ"] == 0 and verify["repair_asked"] == 0
    drift = found["differences"]
    assert sum(drift.values()) == 20
    assert (repair["missing"], repair["differs"], repair["extra"]) == (
        drift["deleted"],
        drift["changed"],
        drift["added"],
    )
    assert repair["repair_asked"] == 20
    assert repair["inserted"] + repair["changed"] + repair["deleted"] == 20
    assert found["equal_after"] is True
