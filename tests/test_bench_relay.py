"""``appliance bench`` (relay) at a tiny size: every row is there, ODH is right.

The figures themselves are read, not asserted (docs/benchmarks.md): nothing
here is about speed. It proves that each scenario still runs end to end on
the real services, that the fast backlog generator writes a journal the
relay decodes into exactly the source's rows, and that the table has one
row per scenario with a positive figure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance import benchrelay, benchtable
from appliance.devstack import Services

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent

SCENARIOS = (
    "catch-up, start-up included",
    "catch-up, first to last confirmation",
    "catch-up, CPU per change (machine)",
    "sustained, relay confirmed",
    "sustained, store writers",
    "sustained, fast source, relay",
    "sustained, fast source, written",
    "latency p99, polling read",
    "latency p99, waiting read",
    "memory, all legs peak RSS",
    "outbox bytes per pending message",
    "outbox table alone, per message",
    "IBM i: miner entries/s at 50 ms/call",
    "IBM i: round trips/s",
    "IBM i: rows per round trip",
    "raw: SQLite insert, fsync per 500",
    "raw: Kafka produce, acks=all",
    "raw: Kafka consume",
    "raw: PostgreSQL upsert, 500/commit",
    "raw: decode, one process",
    "raw: one message through all, p99",
)


def test_relay_bench_runs_every_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2,000 changes, 3 s paced, a 5,000-entry journal: every row, ODH equal."""
    sys.path.insert(0, str(REPO / "scripts"))
    import services

    sizes = benchrelay.Sizes(
        changes=2000,
        sustained_s=3,
        paced_rate=100,
        paced_seconds=3,
        writers=2,
        miner_entries=5000,
        raw_rows=2000,
    )
    found = benchrelay.run(
        Services.from_state(services.ensure_up()),
        tmp_path,
        sizes,
        name="benchrelay_ci",
    )
    catch = found["catch_up"]
    assert catch["odh_equals_source"] is True
    # The seed's rows plus the backlog's, less updates that changed nothing.
    assert found["backlog"]["changes"] == 2000
    assert 2000 < catch["changes"] <= 2000 + 3 * benchrelay.SEED_ARTICLES
    assert catch["messages"] == catch["applied_distinct"] == catch["changes"]
    rows = {row["scenario"]: row for row in found["rows"]}
    assert tuple(rows) == SCENARIOS
    waiting_absent = not benchrelay.waiting_read_available()
    for name, row in rows.items():
        if name == "latency p99, waiting read" and waiting_absent:
            assert row["figure"] is None
            assert row["note"].startswith("not available")
            continue
        assert row["figure"] > 0, name
    assert found["outbox"]["pending"] > 0
    # CPU went to the legs and the services, and the machine saw it.
    cpu = catch["cpu"]
    assert {"miner", "transformer", "enricher", "shipper", "sink"} <= set(cpu["cpu_s"])
    assert 0 < sum(cpu["cpu_s"].values()) <= cpu["machine_busy_s"] * 1.2 + 1
    assert found["ibmi"]["entries"] >= 4000
    benchtable.show(found)
    printed = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in printed
