"""``appliance status`` shows the guardian's last runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from appliance import cli, store


def test_status_lists_the_last_guardian_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text and JSON both carry run, table, state and the repair counts."""
    db = tmp_path / "pipeline.db"
    conn = store.connect(db)
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO guardian_runs (run, table_name, kind, mode, reason,"
            " started_at, state, rows_read, changed, repaired, deleted, dropped)"
            " VALUES ('9-4', 'PRIX', 'check', 'repair', 'scheduled', ?, 'done',"
            " 989, 3, 2, 1, 0)",
            (time.time(),),
        )
    conn.close()
    config = tmp_path / "box.toml"
    config.write_text(f'[store]\nid = "MQ01"\n[pipeline]\ndb_path = "{db}"\n')

    assert cli.main(["--config", str(config), "status"]) == 0
    text = capsys.readouterr().out
    assert "guardian 9-4 PRIX check/repair done rows=989 changed=3" in text
    assert "repaired=2 deleted=1" in text

    assert cli.main(["--config", str(config), "status", "--json"]) == 0
    [run] = json.loads(capsys.readouterr().out)["guardian"]
    assert (run["run"], run["state"], run["repaired"]) == ("9-4", "done", 2)


def test_status_calls_a_leg_with_an_old_heartbeat_stalled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Newcomer run: a SIGKILLed leg still said 'running' 42 s later."""
    db = tmp_path / "pipeline.db"
    conn = store.connect(db)
    store.heartbeat(conn, "control", 4242, "running", "idle")
    store.heartbeat(conn, "miner", 4243, "running", "window")
    with store.transaction(conn):
        conn.execute(
            "UPDATE heartbeats SET updated_at = ? WHERE leg = 'control'",
            (time.time() - 42,),
        )
    conn.close()
    config = tmp_path / "box.toml"
    config.write_text(f'[store]\nid = "MQ01"\n[pipeline]\ndb_path = "{db}"\n')

    assert cli.main(["--config", str(config), "status", "--json"]) == 0
    legs = {
        leg["leg"]: leg["state"] for leg in json.loads(capsys.readouterr().out)["legs"]
    }
    assert legs == {"control": "stalled", "miner": "running"}
