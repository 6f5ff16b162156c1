"""The guardian through the whole relay: drift on both sides, found and repaired.

A real stack (emulator, five box legs, the sink) runs a store workload while
drift is injected where the journal cannot see it: ODH rows deleted, changed
and added behind the sink's back; source changes with journaling ended
(ENDJRNPF), a member cleared while unjournaled (CLRPFM), and a receiver
deleted before the miner read it. After one guardian check ODH equals the
source, and a trigger on the ODH tables shows that no write, repairs
included, ever moved a row to a lower version. A table checked in mode
``log`` gets its differences recorded and nothing repaired.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from appliance.devstack import STORE_TABLES, Services, Stack
from appliance.emulator import Emulator, workload
from appliance.errors import SourceError

pytestmark = pytest.mark.integration

APP = "000400/TEST/DRIFT"
LOG_DDL = (
    "CREATE TABLE IF NOT EXISTS public.drift_log (tbl text, pk text,"
    " old_version bigint, new_version bigint, old_deleted boolean,"
    " new_deleted boolean, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE OR REPLACE FUNCTION public.drift_log_row() RETURNS trigger"
    " LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN"
    " INSERT INTO public.drift_log (tbl, pk, old_version, new_version,"
    " old_deleted, new_deleted) VALUES (TG_TABLE_NAME, NEW.pk, OLD.version,"
    " NEW.version, OLD.deleted, NEW.deleted); RETURN NEW; END $$",
)


@pytest.fixture(scope="module")
def relay(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = Stack(
        services, tmp_path_factory.mktemp("drift"), name="drift", store_id="MQ05"
    )
    stack.prepare()
    text = stack.box_config.read_text()
    text = re.sub(r"(\[ibmi\]\n)", r'\1on_data_gap = "resend"\n', text, count=1)
    stack.box_config.write_text(text)
    workload.seed_store(stack.emulator(), articles=300, seed=31)
    stack.start_legs()
    stack.wait_drained(timeout_s=900)
    with odh(stack) as pg:
        for statement in LOG_DDL:
            pg.execute(statement)
        for table in STORE_TABLES:
            pg.execute(
                f'CREATE TRIGGER drift_log AFTER UPDATE ON odh."{table.lower()}"'
                " FOR EACH ROW EXECUTE FUNCTION public.drift_log_row()"
            )
    yield stack
    stack.close()


def odh(stack: Stack) -> psycopg.Connection[Any]:
    return psycopg.connect(stack.hub.conninfo(stack.odh_db), autocommit=True)


def check(stack: Stack, args: dict[str, Any]) -> list[dict[str, Any]]:
    """One guardian check, waited for until the hub said done for every table."""
    command = stack.guardian_command("check", args)
    return stack.wait_guardian(command, states=("done",), timeout_s=900)


def hub_keys(stack: Stack, run: str) -> list[tuple[str, str, str | None]]:
    with odh(stack) as pg:
        rows = pg.execute(
            "SELECT table_name, what, request FROM odh.guardian_keys"
            " WHERE run = %s ORDER BY 1, 2",
            (run,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def drift_odh(stack: Stack, table: str, *, drop: int, change: int, add: int) -> None:
    """Delete, change (version kept) and add ODH rows behind the sink's back."""
    with odh(stack) as pg:
        live = pg.execute(
            f'SELECT pk, key, data FROM odh."{table.lower()}"'
            " WHERE store_id = %s AND NOT deleted ORDER BY md5(pk)",
            (stack.store_id,),
        ).fetchall()
        assert len(live) >= drop + change + add, f"{table}: too few rows"
        for pk, _key, _data in live[:drop]:
            pg.execute(
                f'DELETE FROM odh."{table.lower()}" WHERE store_id = %s AND pk = %s',
                (stack.store_id, pk),
            )
        for pk, _key, data in live[drop : drop + change]:
            field = next(k for k in data if k not in ("ARTNUM", "MAGASIN"))
            data[field] = None
            pg.execute(
                f'UPDATE odh."{table.lower()}" SET data = %s'
                " WHERE store_id = %s AND pk = %s",
                (json.dumps(data), stack.store_id, pk),
            )
        for n, (_pk, like, image) in enumerate(
            live[drop + change : drop + change + add]
        ):
            key = {**like, "ARTNUM": f"ZZ{n:04d}"}
            data = {**image, "ARTNUM": key["ARTNUM"]}
            pk = json.dumps(key, sort_keys=True, separators=(",", ":"))
            pg.execute(
                f'INSERT INTO odh."{table.lower()}" (store_id, pk, key, data, version)'
                " VALUES (%s, %s, %s, %s, 1)",
                (stack.store_id, pk, json.dumps(key), json.dumps(data)),
            )


def unjournaled_changes(emu: Emulator, table: str, count: int) -> int:
    """Update rows of ``table`` while its journaling is ended; return how many."""
    done = 0
    for row in emu.rows(table)[:count]:
        key = {"ARTNUM": row["ARTNUM"]}
        if table == "STOCK":
            key["MAGASIN"] = row["MAGASIN"]
        values = {"SEUIL": 4242} if table == "STOCK" else {"PRIX": Decimal("4242.42")}
        try:
            with emu.job(APP, autocommit=True) as job:
                job.update(table, key, values)
        except SourceError:
            continue  # the workload deleted it or holds it meanwhile
        done += 1
    return done


def stop_miner(stack: Stack) -> None:
    for leg in list(stack.legs):
        if leg.name == "miner":
            leg.process.terminate()
            leg.process.wait(timeout=60)
            stack.legs.remove(leg)


def test_log_only_table_records_differences_and_repairs_nothing(relay: Stack) -> None:
    """Mode log: the hub records the changed rows at key level, asks no repair."""
    drift_odh(relay, "STOCK", drop=0, change=3, add=0)
    (run,) = check(relay, {"table": "STOCK", "mode": "log"})
    keys = hub_keys(relay, run["run"])
    assert [k for k in keys if k[1] == "differs"] == [("STOCK", "differs", None)] * 3
    assert all(request is None for _t, _w, request in keys)
    with odh(relay) as pg:
        repairs = pg.execute(
            "SELECT count(*) FROM odh.guardian_repairs WHERE run = %s", (run["run"],)
        ).fetchone()
        summary = pg.execute(
            "SELECT summary FROM odh.guardian_runs WHERE run = %s", (run["run"],)
        ).fetchone()
    assert repairs == (0,)
    assert summary is not None and summary[0]["differs"] == 3
    assert not relay.compare(("STOCK",))["STOCK"]["equal"]

    check(relay, {"table": "STOCK"})
    assert relay.compare(("STOCK",))["STOCK"]["equal"]


def test_drift_on_both_sides_is_repaired_without_moving_a_row_back(
    relay: Stack,
) -> None:
    """Under load, one check brings every table to the source; no version went down."""
    worker_emu = Emulator(relay.services.conninfo(relay.ibmi_db))
    emu = relay.emulator()
    written: dict[str, Any] = {}
    failed: list[BaseException] = []

    def busy() -> None:
        # Short runs, the table definitions read again between them, so the
        # worker sees ENDJRNPF/STRJRNPF as a job on the IBM i would.
        try:
            for n in range(25):
                done = workload.run(
                    worker_emu, rate_per_s=150, changes=100, seed=40 + n
                )
                written["changes"] = written.get("changes", 0) + done["changes"]
                worker_emu.forget_tables()
        except BaseException as exc:  # re-raised in the test thread
            failed.append(exc)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        time.sleep(3)
        drift_odh(relay, "PRIX", drop=5, change=5, add=3)
        drift_odh(relay, "ARTICLE", drop=2, change=3, add=2)
        emu.end_journaling("STOCK")
        time.sleep(3)  # the workload's stock movements are not journaled now
        assert unjournaled_changes(emu, "STOCK", 5) > 0
        emu.start_journaling("STOCK")
    finally:
        worker.join()
        worker_emu.close()
    assert not failed, failed
    assert written["changes"] >= 2500

    # A receiver deleted unread, and a member cleared while unjournaled.
    relay.wait_drained(timeout_s=900)
    stop_miner(relay)
    workload.run(emu, rate_per_s=0, changes=150, seed=33)
    emu.end_journaling("ARTICLE")
    emu.clear_member("ARTICLE")
    emu.start_journaling("ARTICLE")
    unread = emu.head().receiver_name
    emu.change_receiver()
    emu.delete_receiver(unread)
    relay.legs.append(relay.spawn_leg("miner"))
    relay.wait_drained(timeout_s=900)

    runs = check(relay, {})
    relay.wait_drained(timeout_s=900)
    report = relay.compare()
    for table, item in report.items():
        assert item["equal"], f"{table}: {item}"
    assert report["PRIX"]["source"] > 0 and report["STOCK"]["source"] > 0
    assert {r["table_name"] for r in runs} == set(STORE_TABLES)

    with odh(relay) as pg:
        backwards = pg.execute(
            "SELECT tbl, pk, old_version, new_version FROM public.drift_log"
            " WHERE new_version < old_version LIMIT 5"
        ).fetchall()
        repairs = dict(
            pg.execute(
                "SELECT outcome, count(*) FROM odh.guardian_repairs"
                " WHERE kind = 'repair' GROUP BY 1"
            ).fetchall()
        )
        worse = pg.execute(
            "SELECT count(*) FROM odh.guardian_repairs"
            " WHERE outcome IN ('changed', 'deleted') AND old_version > version"
        ).fetchone()
    assert backwards == []
    assert worse == (0,)
    # ODH drift alone: 7 PRIX + 7 ARTICLE rows to put back (some may have been
    # overwritten by the workload first), and the ZZ rows to tombstone.
    assert repairs.get("deleted", 0) >= 5, repairs
    assert repairs.get("inserted", 0) + repairs.get("changed", 0) > 0, repairs
