"""``appliance bench`` (relay) at a tiny size: every row is there, ODH is right.

The figures themselves are read, not asserted (docs/benchmarks.md): nothing
here is about speed. It proves that each scenario still runs end to end on
the real services, that the fast backlog generator writes a journal the
relay decodes into exactly the source's rows, and that the table has one
row per scenario with a positive figure. The chain's limit is arithmetic on
the parts' CPU per row, checked on fixed figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance import benchprocs, benchrelay, benchtable
from appliance.devstack import Services

REPO = Path(__file__).resolve().parent.parent
CHAIN_RATE = f"raw: chain, changes/s on {benchprocs.cores():g} cores"

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
    "memory, all legs peak PSS",
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
    "raw: chain, CPU per change",
    CHAIN_RATE,
    "raw: one message through all, p99",
)


@pytest.mark.integration
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
    # PSS shares the libraries' pages out among the legs: never above RSS.
    assert 0 < catch["pss_peak_mb"] <= catch["rss_peak_mb"]
    assert found["outbox"]["pending"] > 0
    # CPU went to the legs and the services, and the machine saw it.
    cpu = catch["cpu"]
    assert {"miner", "transformer", "enricher", "shipper", "sink"} <= set(cpu["cpu_s"])
    assert 0 < sum(cpu["cpu_s"].values()) <= cpu["machine_busy_s"] * 1.2 + 1
    assert found["ibmi"]["entries"] >= 4000
    # Every raw part spent CPU, on its server too, and the chain sums them.
    parts = found["raw"]["cpu_us_per_row"]
    assert set(parts["kafka_produce"]) == {"client", "broker", "total"}
    assert {"client", "backend", "shared", "total"} == set(parts["pg_upsert"])
    assert all(p["total"] > 0 for p in parts.values())
    assert found["ibmi"]["raw"]["cpu_us_per_entry"]["backend"] > 0
    assert found["raw"]["payloads"] == benchrelay.PAYLOAD_SAMPLE
    limit = benchtable.chain_limit(found)
    assert limit is not None and limit["entries_from"] == "catch-up"
    assert rows["raw: chain, CPU per change"]["figure"] == limit["total_us"]
    assert rows[CHAIN_RATE]["figure"] == limit["changes_per_s"]
    assert (
        rows["catch-up, start-up included"]["raw"]["value"] == (limit["changes_per_s"])
    )
    benchtable.show(found)
    printed = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in printed


def _found(catch: dict[str, int] | None) -> dict[str, object]:
    return {
        "raw": {
            "cores": 2.0,
            "cpu_us_per_row": {
                "sqlite": {"client": 2.0, "total": 2.0},
                "kafka_produce": {"client": 4.0, "broker": 2.0, "total": 6.0},
                "kafka_consume": {"client": 2.0, "broker": 1.0, "total": 3.0},
                "pg_upsert": {"client": 7.0, "backend": 13.0, "shared": 0.5,
                              "total": 20.5},
            },
        },
        "decode": {"cpu_us_per_record": 4.0, "records_per_change": 1.5},
        "ibmi": {"raw": {"cpu_us_per_entry": {"client": 10.0, "total": 12.5}}},
        "catch_up": catch or {},
    }  # fmt: skip


def test_chain_limit_sums_each_parts_cpu_per_change() -> None:
    """Decode per record image, the read per journal entry of the catch-up."""
    limit = benchtable.chain_limit(_found({"changes": 1000, "journal_entries": 2000}))
    assert limit == {
        "us_per_change": {
            "SQLite insert": 2.0,
            "Kafka produce": 6.0,
            "Kafka consume": 3.0,
            "PostgreSQL upsert": 20.5,
            "decode": 6.0,
            "journal read": 25.0,
        },
        "total_us": 62.5,
        "entries_per_change": 2.0,
        "entries_from": "catch-up",
        "cores": 2.0,
        "changes_per_s": 32_000,
    }


def test_chain_limit_without_a_catch_up_reads_the_default_entries() -> None:
    limit = benchtable.chain_limit(_found(None))
    assert limit is not None
    assert limit["entries_from"] == "default"
    assert limit["us_per_change"]["journal read"] == round(
        12.5 * benchtable.ENTRIES_PER_CHANGE, 2
    )


def test_chain_limit_is_absent_from_findings_without_cpu() -> None:
    found = _found(None)
    del found["raw"]["cpu_us_per_row"]  # type: ignore[attr-defined]
    assert benchtable.chain_limit(found) is None


def test_cores_are_capped_by_a_parent_cgroups_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cgroup v2: 1.5 CPUs on the parent cap a process allowed 3 CPUs."""
    (tmp_path / "self").write_text("0::/box/leg\n")
    group = tmp_path / "fs" / "box" / "leg"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text("max 100000\n")
    (group.parent / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr(benchprocs.os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert benchprocs.cores(tmp_path / "fs", tmp_path / "self") == 1.5
    (group.parent / "cpu.max").write_text("max 100000\n")
    assert benchprocs.cores(tmp_path / "fs", tmp_path / "self") == 3.0


def test_cores_read_cgroup_v1s_cpu_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hybrid mount: the quota is v1's cfs quota over its period."""
    (tmp_path / "self").write_text("2:cpuacct:/\n1:cpu:/box\n0::/\n")
    group = tmp_path / "fs" / "cpu" / "box"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("50000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "fs" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "fs" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    monkeypatch.setattr(benchprocs.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert benchprocs.cores(tmp_path / "fs", tmp_path / "self") == 0.5
