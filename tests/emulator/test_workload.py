"""The workload: replaying its journal like a correct relay gives emu.rows()."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from emulator_support import decode_image

from appliance.emulator import Emulator, workload

pytestmark = pytest.mark.integration

APPLY = {"PT", "PX", "UP", "UR"}
REMOVE = {"DL", "DR"}


def replay(emu: Emulator) -> dict[str, list[dict[str, Any]]]:
    """Apply committed R entries in journal order; drop rolled-back cycles."""
    tables = emu.tables()
    state: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {t: {} for t in tables}
    held: dict[int, list[tuple[str, str, dict[str, Any]]]] = {}
    with psycopg.connect(emu.conninfo) as conn:
        rows = conn.execute(
            "SELECT journal_code, journal_entry_type, commit_cycle, "
            "rtrim(substr(object, 1, 10)), null_value_indicators, entry_data "
            "FROM qsys2.display_journal('MAG', 'QSQJRN', "
            "starting_receiver_name => '*CURCHAIN')"
        ).fetchall()
    for code, kind, cycle, table, nulls, data in rows:
        if code == "C" and kind in ("CM", "RB"):
            for change in held.pop(int(cycle), []) if kind == "CM" else []:
                _apply(state, tables, *change)
            held.pop(int(cycle), None)
        elif code == "R":
            change = (kind, table, decode_image(tables[table], bytes(data), nulls))
            if int(cycle):
                held.setdefault(int(cycle), []).append(change)
            else:
                _apply(state, tables, *change)
    assert not held, "a cycle was left open"
    return {t: [state[t][k] for k in sorted(state[t])] for t in tables}


def _apply(state: Any, tables: Any, kind: str, table: str, row: dict[str, Any]) -> None:
    key = tuple(row[k] for k in tables[table].key)
    if kind in APPLY:
        state[table][key] = row
    elif kind in REMOVE:
        state[table].pop(key)


def test_replayed_journal_equals_the_data_tables(emu: Emulator) -> None:
    """Seed + 1,500 mixed changes: a correct relay reproduces mag.* exactly."""
    seeded = workload.seed_store(emu, articles=60, seed=3)
    emu.change_receiver()  # the stream crosses a receiver boundary
    counts = workload.run(emu, rate_per_s=0, changes=1500, seed=4)
    print("workload", counts)
    assert seeded == {"articles": 60, "inserts": 180}
    assert counts["changes"] >= 1500
    for name in ("rollbacks", "savepoint_rollbacks", "rolled_back", "deletes"):
        assert counts[name] > 0, name
    assert replay(emu) == {t: emu.rows(t) for t in ("ARTICLE", "PRIX", "STOCK")}


def test_sharded_writers_side_by_side_keep_the_journal_exact(emu: Emulator) -> None:
    """Three writers at once (the fault harness's long runs): each changes only
    its own articles under its own jobs; the journal still replays to mag.*."""
    workload.seed_store(emu, articles=90, seed=8)
    results: dict[int, dict[str, float]] = {}
    failures: list[BaseException] = []

    def one(own: int) -> None:
        writer = Emulator(emu.conninfo, gap_rate=0.0)
        try:
            results[own] = workload.run(
                writer, rate_per_s=0, changes=400, seed=9 + own, shard=(own, 3)
            )
        except BaseException as exc:
            failures.append(exc)
        finally:
            writer.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    assert sorted(results) == [0, 1, 2]
    assert all(r["changes"] >= 400 for r in results.values())
    assert all(r.get("refused", 0) == 0 for r in results.values())  # no lock waits
    assert replay(emu) == {t: emu.rows(t) for t in ("ARTICLE", "PRIX", "STOCK")}
    with psycopg.connect(emu.conninfo) as conn:
        jobs = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT job_number FROM qsys2.display_journal('MAG',"
                " 'QSQJRN', starting_receiver_name => '*CURCHAIN')"
                " WHERE journal_code = 'R'"
            )
        }
    # Seeding's batch job, then three jobs per writer, offset by 10 per shard.
    assert {"123466", "123476", "123486"} <= jobs
    assert "123456" not in jobs


def test_shard_must_name_one_of_the_writers(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="3 of 3"):
        workload.run(emu, rate_per_s=0, changes=1, shard=(3, 3))


def test_same_seed_gives_the_same_store(emu: Emulator, postgres: Any) -> None:
    """Two fresh stores driven with the same seeds end with equal rows."""
    workload.seed_store(emu, articles=30, seed=5)
    first = workload.run(emu, rate_per_s=0, changes=300, seed=6)
    again = Emulator(emu.conninfo, gap_rate=0.0)
    with psycopg.connect(emu.conninfo, autocommit=True) as conn:
        conn.execute("DROP SCHEMA mag CASCADE; DROP SCHEMA qsys2 CASCADE")
    again.install()
    workload.seed_store(again, articles=30, seed=5)
    second = workload.run(again, rate_per_s=0, changes=300, seed=6)
    drop = {"elapsed_s", "rate"}
    assert {k: v for k, v in first.items() if k not in drop} == {
        k: v for k, v in second.items() if k not in drop
    }
    keep = ("ARTNUM", "PRIX", "PRIX_PROMO")
    assert [{k: r[k] for k in keep} for r in again.rows("PRIX")] == [
        {k: r[k] for k in keep} for r in emu.rows("PRIX")
    ]
    again.close()


def test_bad_image_is_journaled_without_touching_the_data(emu: Emulator) -> None:
    """inject_bad_image writes a short PT image; mag.prix stays as it was."""
    workload.seed_store(emu, articles=5, seed=7)
    before = emu.rows("PRIX")
    sequence = emu.inject_bad_image("PRIX")
    with psycopg.connect(emu.conninfo) as conn:
        found = conn.execute(
            "SELECT journal_entry_type, length(entry_data) FROM qsys2.display_journal("
            "'MAG', 'QSQJRN', starting_sequence => %s, ending_sequence => %s)",
            [sequence, sequence],
        ).fetchone()
    assert found == ("PT", emu.table("PRIX").encoder.length - 3)
    assert emu.rows("PRIX") == before
