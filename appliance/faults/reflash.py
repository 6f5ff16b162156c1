"""The reflash scenario: the box is replaced and starts with an empty outbox.

After the main fault run has drained and been checked:

1. the box legs are killed and the pipeline database is moved away (the old
   box); a new database is created whose epoch is the old one + 1 (the
   smallest a later box can have) and which starts at the old box's journal
   position (its bookmark: everything before it is applied at the hub);
2. the legs start on the new database, the store writes more changes, and
   the relay drains: the new box's messages must be applied (under the new
   epoch's watermarks) and the ODH must equal the source again;
3. a late message of the old box arrives: its payload for a key the new box
   has since changed, with the next ``lane_seq`` of its old lane, and also
   one plain resend. The hub takes the first in its lane but the version
   guard must refuse it, the resend is a duplicate: the ODH still equals the
   source and no row ever moved backwards.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from confluent_kafka import Producer

from appliance import payloads, store
from appliance.devstack import Stack
from appliance.faults import checker

if TYPE_CHECKING:
    from appliance.faults.harness import Harness

logger = logging.getLogger(__name__)

_BOOKMARK_COLUMNS = (
    "journal, receiver_library, receiver_name, sequence, processed, entry_ts,"
    " attach_ts, first_sequence, updated_at"
)


def scenario(harness: Harness, stack: Stack) -> dict[str, Any]:
    """Run the steps of the module docstring; return the figures and ``ok``."""
    sup = harness.supervisor
    assert sup is not None
    sup.hold_box()
    old_db = harness.workdir / "old-box" / "pipeline.db"
    try:
        old_epoch, new_epoch = _new_box(stack, old_db)
    finally:
        sup.release_box()
    from appliance.emulator import workload

    written = workload.run(
        stack.emulator(), rate_per_s=200, changes=300, seed=harness.plan.seed + 7
    )
    drain_s = harness._drain(stack, time.monotonic())
    result: dict[str, Any] = {
        "old_epoch": old_epoch,
        "new_epoch": new_epoch,
        "changes_after": int(written["changes"]),
        "drain_s": round(drain_s, 1),
    }
    with psycopg.connect(stack.hub.conninfo(stack.odh_db), autocommit=True) as hub:
        row = hub.execute(
            "SELECT count(*) FROM odh.applied WHERE store_id = %s AND epoch = %s",
            (stack.store_id, new_epoch),
        ).fetchone()
        result["new_box_applied"] = int(row[0]) if row else 0
        result["late_old_message"] = _late_message(stack, hub, old_db, old_epoch)
        result["moved_backwards"] = checker.moved_backwards(hub)[1]
    compare = stack.compare()
    result["odh_equals_source"] = all(item["equal"] for item in compare.values())
    result["ok"] = (
        result["new_box_applied"] > 0
        and result["odh_equals_source"]
        and result["moved_backwards"] == 0
        and result["late_old_message"].startswith("refused")
    )
    return result


def _new_box(stack: Stack, old_db: Path) -> tuple[int, int]:
    """Move the database away, make the new one at the old bookmark."""
    old_db.parent.mkdir(parents=True, exist_ok=True)
    live = sqlite3.connect(stack.pipeline_db)
    try:
        target = sqlite3.connect(old_db)
        live.backup(target)
        target.close()
    finally:
        live.close()
    for suffix in ("", "-wal", "-shm"):
        stack.pipeline_db.with_name("pipeline.db" + suffix).unlink(missing_ok=True)
    old = sqlite3.connect(old_db)
    new = store.connect(stack.pipeline_db)
    try:
        old_epoch = store.epoch(old)
        marks = old.execute(f"SELECT {_BOOKMARK_COLUMNS} FROM bookmark").fetchall()
        with store.transaction(new):
            new.execute(
                "UPDATE meta SET value = ? WHERE key = 'epoch'", (str(old_epoch + 1),)
            )
            new.executemany(
                f"INSERT INTO bookmark ({_BOOKMARK_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                marks,
            )
        return old_epoch, store.epoch(new)
    finally:
        old.close()
        new.close()


def _late_message(
    stack: Stack, hub: psycopg.Connection[Any], old_db: Path, old_epoch: int
) -> str:
    """Send the old box's stale image of a key the new box changed; judge it."""
    fresh = {
        (r[0], r[1])
        for table in ("prix", "stock", "article")
        for r in hub.execute(
            f"SELECT %s, pk FROM odh.{table} WHERE version > %s",
            (table.upper(), (old_epoch + 1) * store.VERSION_SPAN),
        )
    }
    old = sqlite3.connect(old_db)
    try:
        unpacker = payloads.Unpacker()
        messages = [
            json.loads(unpacker.value(old, r[0], r[1]))
            for r in old.execute(
                "SELECT payload, dict_id FROM outbox WHERE op != 'd' ORDER BY id DESC"
            )
        ]
    finally:
        old.close()
    chosen = next(
        (p for p in messages if (p["table"], _pk(p["key"])) in fresh), messages[0]
    )
    lane = int(chosen["lane"])
    marks = hub.execute(
        "SELECT upto FROM odh.watermarks WHERE store_id = %s AND epoch = %s"
        " AND lane = %s",
        (stack.store_id, old_epoch, lane),
    ).fetchone()
    upto = int(marks[0]) if marks else 0
    late = {**chosen, "lane_seq": upto + 1, "outbox_id": None}
    producer = Producer({"bootstrap.servers": stack.services.kafka_bootstrap})
    for message in (chosen, late):
        producer.produce(
            stack.changes_topic,
            key=stack.store_id.encode(),
            value=json.dumps(message).encode(),
        )
    producer.flush(30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = hub.execute(
            "SELECT upto FROM odh.watermarks WHERE store_id = %s AND epoch = %s"
            " AND lane = %s",
            (stack.store_id, old_epoch, lane),
        ).fetchone()
        if row and int(row[0]) > upto:
            break
        time.sleep(0.5)
    else:
        return "not consumed within 60s"
    table = chosen["table"].lower()
    row = hub.execute(
        f"SELECT version FROM odh.{table} WHERE store_id = %s AND pk = %s",
        (stack.store_id, _pk(chosen["key"])),
    ).fetchone()
    now = int(row[0]) if row else -1
    if now > int(chosen["version"]):
        return f"refused: row kept version {now} > late {chosen['version']}"
    return f"applied: row has version {now}, late {chosen['version']}"


def _pk(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
