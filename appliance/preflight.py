"""The miner's start-up check of journal settings that put data at risk.

The relay can only deliver what the journal keeps. Domain brief §3.3 lists
what the store's IBM i team must set; this module reads those settings from
the catalog services and reports each one that is not safe:

    QSYS2.JOURNAL_INFO       DELETE_RECEIVER_OPTION  *YES: the system deletes
                                                     receivers, read or not
                             MINIMIZE_ENTRY_SPECIFIC_DATA  not *NONE: update
                                                     images are partial
                             RECEIVER_RETENTION      (emulator) a limit
    QSYS2.JOURNALED_OBJECTS  a relayed table absent  not journaled at all
                             JOURNAL_IMAGES *AFTER   no before images; a DL
                                                     may carry no image

A finding never stops the miner: the settings belong to the store, and
refusing to read would lose more. Each is a WARNING log line, and the whole
report is the ``meta`` row ``miner.preflight`` (JSON) that ``appliance
status`` shows. Columns a release does not have are reported as unknown
rather than guessed (column names of JOURNAL_INFO vary across TRs [U]).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from appliance import store

logger = logging.getLogger(__name__)

META_KEY = "miner.preflight"
JOURNAL_SQL = (
    "SELECT * FROM QSYS2.JOURNAL_INFO WHERE JOURNAL_LIBRARY = ? AND JOURNAL_NAME = ?"
)
OBJECTS_SQL = (
    "SELECT OBJECT_LIBRARY, OBJECT_NAME, JOURNAL_IMAGES FROM QSYS2.JOURNALED_OBJECTS"
    " WHERE JOURNAL_LIBRARY = ? AND JOURNAL_NAME = ?"
)

Query = Callable[[str, Sequence[Any]], tuple[list[str], list[Sequence[Any]]]]
"""Runs SQL with parameters; returns (lower-case column names, rows)."""


@dataclass(frozen=True)
class Finding:
    """One setting that puts data at risk (or that could not be read)."""

    check: str
    value: str
    risk: str


def check_journal(columns: Sequence[str], row: Sequence[Any] | None) -> list[Finding]:
    """Findings of one QSYS2.JOURNAL_INFO row (None: journal not found)."""
    if row is None:
        return [Finding("journal", "not found", "nothing can be read")]
    values = {
        name: str(value or "").strip().upper()
        for name, value in zip(columns, row, strict=True)
    }
    found: list[Finding] = []
    delete = values.get("delete_receiver_option")
    if delete is None:
        found.append(Finding("DLTRCV", "unknown", "cannot tell if receivers are kept"))
    elif delete == "*YES":
        found.append(
            Finding("DLTRCV", delete, "receivers deleted by the system, read or not")
        )
    minimize = values.get(
        "minimize_entry_specific_data", values.get("minimize_entry_data")
    )
    if minimize is None:
        found.append(Finding("MINENTDTA", "unknown", "images may be partial"))
    elif minimize not in ("*NONE", ""):
        found.append(
            Finding("MINENTDTA", minimize, "update images partial: entries parked")
        )
    retention = values.get("receiver_retention")
    if retention not in (None, "", "*NOMAX"):
        found.append(
            Finding(
                "receiver retention",
                str(retention),
                "receivers pruned after it: an outage longer loses data",
            )
        )
    return found


def check_objects(
    rows: Sequence[Sequence[Any]], library: str, tables: Sequence[str]
) -> list[Finding]:
    """Findings of QSYS2.JOURNALED_OBJECTS for the relayed tables."""
    images = {
        (str(lib).strip().upper(), str(name).strip().upper()): str(img).strip()
        for lib, name, img in rows
    }
    found: list[Finding] = []
    for table in tables:
        key = (library.strip().upper(), table.strip().upper())
        where = f"{key[0]}/{key[1]}"
        if key not in images:
            found.append(
                Finding(f"{where} journaled", "no", "its changes are not journaled")
            )
        elif images[key].upper() != "*BOTH":
            found.append(
                Finding(
                    f"{where} IMAGES",
                    images[key],
                    "no before images; a DL may carry no image (parked)",
                )
            )
    return found


def run(
    query: Query,
    journal_library: str,
    journal_name: str,
    table_library: str,
    tables: Sequence[str],
) -> list[Finding]:
    """Every finding for the journal and the relayed tables."""
    params = (journal_library, journal_name)
    columns, rows = query(JOURNAL_SQL, params)
    found = check_journal(columns, rows[0] if rows else None)
    _, objects = query(OBJECTS_SQL, params)
    found += check_objects(objects, table_library, tables)
    return found


def record(conn: sqlite3.Connection, journal: str, found: Sequence[Finding]) -> None:
    """Log each finding (WARNING), store the report in ``meta``, count them."""
    for finding in found:
        logger.warning(
            "journal setting puts data at risk stage=miner check=%s value=%s risk=%s",
            finding.check,
            finding.value,
            finding.risk,
        )
    report = {
        "journal": journal,
        "ok": not found,
        "checked_at": round(time.time(), 3),
        "findings": [asdict(f) for f in found],
    }
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
            " DO UPDATE SET value = excluded.value",
            (META_KEY, json.dumps(report, sort_keys=True)),
        )
        if found:
            store.bump(conn, "miner.preflight_warnings", len(found))
    if not found:
        logger.info("journal settings checked stage=miner count=0")
