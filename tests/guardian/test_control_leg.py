"""The control leg on a real stack: initial load and the ``load`` command.

Rows the journal no longer holds (written, then their receiver deleted before
the relay started) reach the ODH only through the guardian's initial load;
a ``load`` while the store is busy leaves ODH equal to the store once the
relay drained, with no row older than the last change relayed for its key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from appliance import payloads
from appliance.devstack import Services, Stack
from appliance.emulator import workload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def relay(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = Stack(
        services,
        tmp_path_factory.mktemp("guardian"),
        name="guardian_leg",
        store_id="MQ02",
        guardian_initial_load=True,
    )
    stack.prepare()
    emulator = stack.emulator()
    workload.seed_store(emulator, articles=400, seed=5)
    # The seed's entries leave the journal: only the tables hold those rows.
    old = emulator.head().receiver_name
    emulator.change_receiver()
    emulator.delete_receiver(old)
    stack.start_legs()
    yield stack
    stack.close()


def test_initial_load_brings_rows_the_journal_never_had(relay: Stack) -> None:
    """Every table is loaded once; ODH then equals the emulator value for value."""
    loaded = _wait_loaded(relay, ("ARTICLE", "PRIX", "STOCK"))
    relay.wait_drained(timeout_s=600)
    report = relay.compare()
    for table, item in report.items():
        assert item["source"] > 0, f"{table} is empty: the test proves nothing"
        assert item["equal"], f"{table}: {item}"
    # A load's rows are loaded, not repaired: no check found them different.
    assert all(run["loaded"] > 0 for run in loaded), loaded
    assert all(run["repaired"] == 0 for run in loaded), loaded


def test_load_while_the_store_is_busy_moves_no_row_backwards(relay: Stack) -> None:
    """A re-sent table during a workload: ODH equals the store after the drain."""
    emulator = relay.emulator()
    written: dict[str, Any] = {}

    def busy() -> None:
        written.update(workload.run(emulator, rate_per_s=300, changes=1500, seed=9))

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        command = relay.guardian_command("load", {"table": "PRIX"})
        runs = relay.wait_guardian(command, states=("loaded",), timeout_s=600)
    finally:
        worker.join()
    relay.wait_drained(timeout_s=600)

    report = relay.compare()
    for table, item in report.items():
        assert item["equal"], f"{table}: {item}"
    assert runs[0]["loaded"] + runs[0]["dropped"] > 0
    assert runs[0]["repaired"] == 0
    assert written["changes"] >= 1500
    assert not _rows_behind_their_last_change(relay, "PRIX")


def test_a_check_repairs_odh_drift_and_the_hub_says_done(relay: Stack) -> None:
    """A PRIX row deleted behind the sink's back is found and sent again."""
    relay.wait_drained(timeout_s=600)
    with psycopg.connect(relay.hub.conninfo(relay.odh_db), autocommit=True) as pg:
        gone = pg.execute(
            "DELETE FROM odh.prix WHERE store_id = %s AND pk IN (SELECT pk FROM"
            " odh.prix WHERE store_id = %s AND NOT deleted ORDER BY pk LIMIT 3)"
            " RETURNING pk",
            (relay.store_id, relay.store_id),
        ).fetchall()
    assert len(gone) == 3
    assert not relay.compare(("PRIX",))["PRIX"]["equal"]

    command = relay.guardian_command("check", {"table": "PRIX", "reason": "test"})
    [run] = relay.wait_guardian(command, states=("done",), timeout_s=600)
    relay.wait_drained(timeout_s=600)

    assert relay.compare(("PRIX",))["PRIX"]["equal"]
    assert run["repaired"] >= 3 and run["narrowed"] >= 1, run
    assert run["loaded"] == 0, run


def _wait_loaded(relay: Stack, tables: tuple[str, ...]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        relay.check_legs_alive()
        with relay.pipeline() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    "SELECT * FROM guardian_runs"
                    " WHERE kind = 'load' AND state = 'loaded'"
                )
            ]
        if {r["table_name"] for r in rows} >= set(tables):
            return rows
        time.sleep(1.0)
    raise TimeoutError(f"tables not loaded: {rows}")


def _rows_behind_their_last_change(relay: Stack, table: str) -> list[str]:
    """Keys whose ODH version is below the last journal change relayed for them."""
    last: dict[str, int] = {}
    with relay.pipeline() as conn:
        for _, value in payloads.messages(
            conn, "table_name = ? AND op IN ('c', 'u', 'd')", (table,)
        ):
            message = json.loads(value)
            pk = json.dumps(message["key"], sort_keys=True, separators=(",", ":"))
            last[pk] = max(last.get(pk, 0), int(message["version"]))
    with psycopg.connect(relay.hub.conninfo(relay.odh_db)) as pg:
        rows = pg.execute(
            f'SELECT pk, version FROM odh."{table.lower()}" WHERE store_id = %s',
            (relay.store_id,),
        ).fetchall()
    versions = {str(pk): int(version) for pk, version in rows}
    return [pk for pk, v in last.items() if versions.get(pk, 0) < v]
