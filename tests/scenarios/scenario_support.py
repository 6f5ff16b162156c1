"""Shared set-up of the scenario tests: a relay on the emulator, more tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from appliance.devstack import STORE_TABLES, Services, Stack

REPO = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "appliance.cli")


def services() -> Services:
    sys.path.insert(0, str(REPO / "scripts"))
    import services as real

    return Services.from_state(real.ensure_up())


def stack(
    workdir: Path,
    name: str,
    *,
    tables: Sequence[str] = (),
    before_start: Callable[[Stack], None] | None = None,
) -> Stack:
    """A prepared relay whose miner also relays ``tables``; legs started.

    ``before_start`` runs on the prepared emulator before the legs start
    (create the extra tables there, so the miner's pre-flight sees them).
    """
    relay = Stack(services(), workdir, name=name, store_id="MF01")
    relay.prepare()
    if tables:
        wanted = json.dumps([*STORE_TABLES, *tables])
        text = relay.box_config.read_text()
        text = re.sub(r"(\[ibmi\]\n)", rf"\1tables = {wanted}\n", text, count=1)
        relay.box_config.write_text(text)
    if before_start is not None:
        before_start(relay)
    relay.start_legs()
    return relay


def odh_rows(relay: Stack, table: str) -> dict[str, tuple[dict[str, Any], bool]]:
    """pk -> (data, deleted) of the store's rows in ODH, tombstones included."""
    with psycopg.connect(relay.services.conninfo(relay.odh_db)) as pg:
        try:
            rows = pg.execute(
                f'SELECT pk, data, deleted FROM odh."{table.lower()}"'
                " WHERE store_id = %s",
                (relay.store_id,),
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {r[0]: (r[1], r[2]) for r in rows}


def live(relay: Stack, table: str) -> list[dict[str, Any]]:
    """ODH rows of ``table`` that are not deleted, sorted by key."""
    rows = [data for data, deleted in odh_rows(relay, table).values() if not deleted]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def source(relay: Stack, table: str) -> list[dict[str, Any]]:
    """The emulator's rows of ``table`` sorted as :func:`live` sorts."""
    rows = relay.emulator().rows(table)
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def counters(relay: Stack) -> dict[str, int]:
    from appliance import store

    with relay.pipeline() as conn:
        return store.counters(conn)


def status(relay: Stack) -> dict[str, Any]:
    """``appliance status --json`` of the box, as an operator runs it."""
    out = subprocess.run(
        [*CLI, "--config", str(relay.box_config), "status", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def wait_for(what: Callable[[], bool], timeout_s: float, doing: str) -> None:
    """Poll ``what`` until true, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{doing}: not within {timeout_s}s")


def drained(relay: Stack, timeout_s: float = 120) -> None:
    """The miner has seen the emulator's real head, then every leg is idle.

    Waiting on the backlog alone is not enough: after a source failure the
    stored head is the last one the miner could read, so "nothing unread"
    would be judged against a stale head.
    """
    head = relay.emulator().head()

    def seen() -> bool:
        relay.check_legs_alive()
        with relay.pipeline() as conn:
            found = conn.execute(
                "SELECT receiver_name, sequence FROM journal_head"
            ).fetchone()
        return found is not None and (found[0], found[1]) == (
            head.receiver_name,
            head.sequence,
        )

    wait_for(seen, timeout_s, "miner reading the journal head")
    relay.wait_drained(timeout_s=timeout_s, settle_s=0.3)


def stop_leg(relay: Stack, name: str) -> None:
    """SIGTERM one leg this stack started and wait for it (bounded)."""
    for leg in list(relay.legs):
        if leg.name == name:
            leg.process.terminate()
            leg.process.wait(timeout=30)
            relay.legs.remove(leg)


def start_leg(relay: Stack, name: str) -> Any:
    """Start one box leg again, as systemd would after a stop."""
    from appliance.devstack import LEG_ENVIRONMENT, LegProcess

    log = relay.workdir / "logs" / f"{name}.log"
    exe = Path(sys.executable).parent / "appliance"
    env = LEG_ENVIRONMENT | {
        k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(exe), "--config", str(relay.box_config), "run", name],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    relay.legs.append(LegProcess(name, proc, log))
    return proc


def checks_asked(relay: Stack) -> list[tuple[str, str]]:
    """(table, reason) of every guardian repair check the journal legs asked.

    Filed ones are ``control`` commands; ones the box did not accept yet
    wait in ``pending_checks``. Each event asks once, in one or the other.
    """
    from appliance import checks

    with relay.pipeline() as conn:
        return checks.asked(conn)


def repaired(relay: Stack, tables: Sequence[str], timeout_s: float = 300) -> None:
    """With the guardian running: wait until ODH equals the emulator for ``tables``."""

    def equal() -> bool:
        relay.check_legs_alive()
        return all(item["equal"] for item in relay.compare(tuple(tables)).values())

    wait_for(equal, timeout_s, f"guardian repairing {', '.join(tables)}")
