"""The CI-sized fault run: the whole relay broken at random moments, then checked.

Its own Kafka and PostgreSQL (so they can be stopped and killed), a fault
proxy between the shipper and the broker, the pipeline database on a small
tmpfs of its own; a few thousand store changes; every fault kind at least
once and a dozen leg kills; then the checker and the reflash scenario.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.faults import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> harness.Outcome:
    plan = harness.Plan(
        seconds=60, rate=40, writers=2, seed=4, leg_kills=12, down_s=3, one_way_s=10
    )
    work: Path = tmp_path_factory.mktemp("faults")
    result = harness.Harness(work, plan).run()
    print("\n".join(result.lines() + result.notes))
    return result


def test_every_fault_kind_was_injected(outcome: harness.Outcome) -> None:
    """At least ten leg kills, each leg killed, and every other kind once."""
    kills = {k: v for k, v in outcome.injected.items() if k.startswith("kill")}
    assert sum(kills.values()) >= 10
    killed = {k.split(":")[1] for k in kills if ":" in k}
    assert killed == {"miner", "transformer", "enricher", "shipper", "sink"}
    for kind in harness.OTHER_KINDS:
        assert outcome.injected[kind] == 1, kind
    assert outcome.injected["kill_checkpoint"] == 1
    assert sum(v for k, v in kills.items() if k.startswith("kill_in_tx")) == 2


def test_nothing_lost_nothing_doubled_nothing_backwards(
    outcome: harness.Outcome,
) -> None:
    """ODH equals the source; every journal entry accounted for; zero everywhere."""
    report = outcome.report
    assert report.tables_equal, report.table_detail
    assert report.lost == 0, report.lost_detail[:10]
    assert report.applied_twice == 0
    assert not report.doubled_detail, report.doubled_detail[:10]
    assert report.moved_backwards == 0
    assert outcome.written["changes"] >= 2000
    assert report.changes_checked > 1000
    assert report.accounted["shipped"] == report.changes_checked
    assert report.accounted["rolled_back"] > 0
    assert report.history_rows >= report.changes_checked


def test_outages_are_retried_not_dead_lettered(outcome: harness.Outcome) -> None:
    """PostgreSQL down, disk full and a failing statement park nothing."""
    assert outcome.report.hub_dead_letters == 0
    assert outcome.report.box_dead_letters == 0
    assert 0 <= outcome.drain_s < 240


def test_lost_confirmations_and_outages_made_the_shipper_send_again(
    outcome: harness.Outcome,
) -> None:
    """One-way loss and broker outages were real: resends happened, none doubled."""
    assert outcome.counters.get("shipper.resends", 0) > 0
    assert outcome.report.applied_twice == 0


def test_a_reflashed_box_wins_and_the_old_box_cannot_go_back(
    outcome: harness.Outcome,
) -> None:
    """New epoch applied; the old box's late image is refused by the version guard."""
    reflash = outcome.reflash
    assert reflash["new_epoch"] == reflash["old_epoch"] + 1
    assert reflash["new_box_applied"] > 0
    assert reflash["late_old_message"].startswith("refused"), reflash
    assert reflash["odh_equals_source"]
    assert reflash["moved_backwards"] == 0
