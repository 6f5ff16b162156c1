"""``appliance status`` shows the miner's bad-entry alarm while it lasts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import cli, journalrows, miner, store
from appliance.config import BoxSettings


def test_status_shows_the_bad_entry_alarm_until_the_miner_clears_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "pipeline.db"
    settings = BoxSettings.model_validate(
        {"store": {"id": "MQ01"}, "pipeline": {"db_path": str(db)}}
    )
    leg = miner.MinerLeg(settings, store.connect(db))
    # The miner's own writer of the row, as a refused window runs it.
    leg._unusable(
        journalrows.EntryError(
            receiver="MAG/QSQJRN0001",
            sequence=None,
            after=100,
            end=600,
            field="SEQUENCE_NUMBER",
            value=None,
            expected="a whole number, DECIMAL(21,0)",
        )
    )
    config = tmp_path / "box.toml"
    config.write_text(f'[store]\nid = "MQ01"\n[pipeline]\ndb_path = "{db}"\n')

    assert cli.main(["--config", str(config), "status", "--json"]) == 0
    alarm = json.loads(capsys.readouterr().out)["journal"]["alarm.bad_entry"]
    assert {k: alarm[k] for k in ("receiver", "sequence", "field", "value")} == {
        "receiver": "MAG/QSQJRN0001",
        "sequence": None,
        "field": "SEQUENCE_NUMBER",
        "value": "NULL",
    }
    assert (alarm["last_stored"], alarm["window_end"], alarm["attempt"]) == (
        100,
        600,
        1,
    )
    assert alarm["expected"] == "a whole number, DECIMAL(21,0)"

    assert cli.main(["--config", str(config), "status"]) == 0
    text = capsys.readouterr().out
    [line] = [x for x in text.splitlines() if x.startswith("journal alarm.bad_entry")]
    assert '"field": "SEQUENCE_NUMBER"' in line
    assert '"receiver": "MAG/QSQJRN0001"' in line
    assert '"sequence": null' in line

    leg._usable_again()  # the first window that goes through
    assert cli.main(["--config", str(config), "status", "--json"]) == 0
    assert "alarm.bad_entry" not in json.loads(capsys.readouterr().out)["journal"]
    leg.conn.close()


def test_dead_letters_list_shows_an_offset_only_where_there_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A miner letter has no byte offset: no ``offset=None`` in the text."""
    db = tmp_path / "pipeline.db"
    conn = store.connect(db)
    with store.transaction(conn):
        store.park(
            conn,
            stage="transformer",
            reason="bad packed decimal",
            table="PRIX",
            position="MAG/QSQJRN0001:42",
            field="PRIX",
            byte_offset=16,
            data=b"\x12\x3f",
            expected="packed decimal (7,2)",
        )
        store.park(
            conn,
            stage="miner",
            reason="skipped by operator",
            table="STOCK",
            position="MAG/QSQJRN0001:? after 100",
            field="SEQUENCE_NUMBER",
            expected="a whole number",
        )
    config = tmp_path / "box.toml"
    config.write_text(f'[store]\nid = "MQ01"\n[pipeline]\ndb_path = "{db}"\n')

    assert cli.main(["--config", str(config), "dead-letters", "list"]) == 0
    heads = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("#")
    ]
    assert [h.split("] ", 1)[1] for h in heads] == [
        "stage=miner table=STOCK position=MAG/QSQJRN0001:? after 100"
        " field=SEQUENCE_NUMBER",
        "stage=transformer table=PRIX position=MAG/QSQJRN0001:42 field=PRIX offset=16",
    ]
