"""Unit tests of appliance.preflight: which journal settings put data at risk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance import preflight, store
from appliance.preflight import Finding

COLUMNS = [
    "journal_library",
    "journal_name",
    "delete_receiver_option",
    "manage_receiver_option",
    "minimize_entry_specific_data",
    "receiver_retention",
]


def test_safe_journal_has_no_finding() -> None:
    row = ["MAG", "QSQJRN", "*NO", "*SYSTEM", "*NONE", "*NOMAX"]
    assert preflight.check_journal(COLUMNS, row) == []


def test_dltrcv_minentdta_and_retention_are_reported() -> None:
    row = ["MAG", "QSQJRN", "*YES ", "*SYSTEM", "*FLDBDY", "2D"]
    found = preflight.check_journal(COLUMNS, row)
    assert [(f.check, f.value) for f in found] == [
        ("DLTRCV", "*YES"),
        ("MINENTDTA", "*FLDBDY"),
        ("receiver retention", "2D"),
    ]


def test_missing_columns_are_unknown_not_guessed() -> None:
    found = preflight.check_journal(["journal_library"], ["MAG"])
    assert {(f.check, f.value) for f in found} == {
        ("DLTRCV", "unknown"),
        ("MINENTDTA", "unknown"),
    }
    assert preflight.check_journal(COLUMNS, None)[0].value == "not found"


def test_after_images_and_unjournaled_tables_are_reported() -> None:
    rows = [("MAG", "PRIX", "*AFTER"), ("MAG", "STOCK", "*BOTH")]
    found = preflight.check_objects(rows, "MAG", ["PRIX", "STOCK", "ARTICLE"])
    assert [(f.check, f.value) for f in found] == [
        ("MAG/PRIX IMAGES", "*AFTER"),
        ("MAG/ARTICLE journaled", "no"),
    ]


def test_run_asks_both_services_and_record_stores_the_report(tmp_path: Path) -> None:
    asked: list[str] = []

    def query(sql: str, params: Any) -> tuple[list[str], list[Any]]:
        asked.append(sql)
        assert tuple(params) == ("MAG", "QSQJRN")
        if "JOURNAL_INFO" in sql:
            return COLUMNS, [["MAG", "QSQJRN", "*YES", "*SYSTEM", "*NONE", "*NOMAX"]]
        return ["a", "b", "c"], [("MAG", "PRIX", "*BOTH")]

    found = preflight.run(query, "MAG", "QSQJRN", "MAG", ["PRIX"])
    assert found == [Finding("DLTRCV", "*YES", found[0].risk)]
    assert len(asked) == 2
    conn = store.connect(tmp_path / "p.db")
    preflight.record(conn, "MAG/QSQJRN", found)
    value = conn.execute("SELECT value FROM meta WHERE key = 'miner.preflight'")
    report = json.loads(value.fetchone()[0])
    assert report["ok"] is False and report["findings"][0]["check"] == "DLTRCV"
    assert store.counters(conn)["miner.preflight_warnings"] == 1
    conn.close()
