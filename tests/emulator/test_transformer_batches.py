"""Transformer output does not depend on how its input is cut into batches.

Within a batch the leg keeps RRN map writes, held rows, counters and
changes in memory and writes them once before the COMMIT; a batch of one
entry writes them entry by entry, as the statement-per-entry code did. The
tables it leaves (ids included) must be the same for every batch size, on a
journal mined from the emulator's store workload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance import store
from appliance.catalog import OdbcCatalog
from appliance.config import BoxSettings, IbmiSection
from appliance.emulator import Emulator, workload
from appliance.miner import MinerLeg
from appliance.transformer import TransformerLeg

# What the transformer writes, in a stable order; dead letters without their
# wall-clock creation time.
DUMPS = {
    "changes": "SELECT * FROM changes ORDER BY id",
    "dead_letters": "SELECT id, stage, table_name, position, field, byte_offset,"
    " bytes_hex, expected, reason, raw_id, payload FROM dead_letters ORDER BY id",
    "held_changes": "SELECT * FROM held_changes ORDER BY cycle_key, raw_id",
    "rrn_keys": "SELECT * FROM rrn_keys ORDER BY table_name, rrn",
    "counters": "SELECT * FROM counters WHERE name LIKE 'transformer.%' ORDER BY name",
    "raw_entries": "SELECT id, state FROM raw_entries ORDER BY id",
    "meta": "SELECT * FROM meta WHERE key LIKE 'layout.%' ORDER BY key",
}


def settings(db_path: Path, batch: int = 500) -> BoxSettings:
    return BoxSettings(
        store={"id": "MQ01", "timezone": "America/Martinique"},
        ibmi=IbmiSection(
            dialect="emulator", window=300, poll_interval_s=0.05, preflight=False
        ),
        pipeline={"db_path": db_path, "batch": batch},
    )


class SharedCatalog(OdbcCatalog):
    """The test's ODBC connection as the catalog's; closing it is the fixture's."""

    def __init__(self, ibmi: IbmiSection, odbc: Any) -> None:
        super().__init__(ibmi, lambda _: odbc)

    def close(self) -> None:
        self._conn = None


@pytest.fixture
def mined(tmp_path: Path, emu: Emulator, odbc: Any) -> Path:
    """A pipeline database holding a mined journal of about 1,500 changes."""
    workload.seed_store(emu, articles=40, seed=31)
    workload.run(emu, rate_per_s=0, changes=1500, seed=32)
    db_path = tmp_path / "mined.db"
    conn = store.connect(db_path)
    miner = MinerLeg(settings(db_path), conn, lambda _: odbc)
    miner.setup()
    idle = 0
    for _ in range(10_000):
        idle = 0 if miner.step() else idle + 1
        if idle >= 3:
            break
    conn.close()
    assert idle >= 3, "the miner never caught up with the journal"
    return db_path


def transform(mined: Path, workdir: Path, batch: int, odbc: Any) -> dict[str, list]:
    """Run the leg on a copy of ``mined`` until drained; dump what it wrote."""
    workdir.mkdir()
    db_path = workdir / "pipeline.db"
    shutil.copy(mined, db_path)
    conf = settings(db_path, batch)
    conn = store.connect(db_path)
    leg = TransformerLeg(conf, conn, SharedCatalog(conf.ibmi, odbc))
    while leg.step():
        pass
    conn.row_factory = None
    dumps = {name: conn.execute(sql).fetchall() for name, sql in DUMPS.items()}
    conn.close()
    return dumps


def test_batch_size_changes_no_byte_of_the_output(
    mined: Path, tmp_path: Path, odbc: Any
) -> None:
    """Batches of 1, 37 and 500 entries leave identical tables, ids included."""
    one = transform(mined, tmp_path / "b1", 1, odbc)
    some = transform(mined, tmp_path / "b37", 37, odbc)
    many = transform(mined, tmp_path / "b500", 500, odbc)

    counters = dict(many["counters"])
    assert counters["transformer.entries"] == len(many["raw_entries"]) > 3000
    assert counters["transformer.changes"] == len(many["changes"]) > 1000
    assert counters["transformer.commits"] > 100
    assert counters["transformer.rollbacks"] > 10
    assert all(state == 1 for _, state in many["raw_entries"])
    assert len(many["rrn_keys"]) >= 40  # every live article has its slot
    for _, _, text in many["rrn_keys"]:  # the stored identity's own spelling
        assert text == json.dumps(
            json.loads(text), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
    for name in DUMPS:
        assert one[name] == many[name], name
        assert some[name] == many[name], name
