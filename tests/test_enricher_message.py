"""The enricher's message text: spliced, yet exactly the JSON of its fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import store
from appliance.config import BoxSettings
from appliance.enricher import EnricherLeg

ODD_TABLE = 'PRI"X\\é\u2028'


def change_row(tmp_path: Path, store_id: str, table: str) -> EnricherLeg:
    """A leg without scripts on a database holding one change of ``table``."""
    db = tmp_path / "pipeline.db"
    settings = BoxSettings(store={"id": store_id}, pipeline={"db_path": db})
    conn = store.connect(db)
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO changes (raw_id, table_name, op, key, before, after, source,"
            " entry_ts_ms, mined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                41,
                table,
                "u",
                '{"ARTNUM":"000123"}',
                None,
                '{"ARTNUM":"000123","LIB":"é"}',
                '{"sequence":41}',
                1796407200123,
                1796407200.05,
            ),
        )
    leg = EnricherLeg(settings, conn)
    leg.setup()
    return leg


@pytest.mark.parametrize(("store_id", "table"), [("MQ01", "PRIX"), ("RE01", ODD_TABLE)])
def test_message_is_the_json_of_its_fields_in_order(
    tmp_path: Path, store_id: str, table: str
) -> None:
    """Quotes, backslashes and non-ASCII in a table name are written as json does."""
    leg = change_row(tmp_path, store_id, table)
    try:
        [change] = leg._read()
        text = leg._message(change, 2, 7, 9, 2186133650000000041)
        expected = {
            "schema": "store-relay/1",
            "store": store_id,
            "epoch": leg._epoch,
            "lane": 2,
            "lane_seq": 7,
            "outbox_id": 9,
            "version": 2186133650000000041,
            "op": "u",
            "ts_ms": 1796407200123,
            "table": table,
            "key": {"ARTNUM": "000123"},
            "before": None,
            "after": {"ARTNUM": "000123", "LIB": "é"},
            "source": {"sequence": 41, "store": store_id},
            "enrichment": {},
            "mined_at": 1796407200.05,
        }
        assert text == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))
    finally:
        leg.close()
        leg.conn.close()
