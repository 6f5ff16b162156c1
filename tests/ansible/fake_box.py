"""A store box's service manager and ``appliance status`` in one fake.

The rollout test's hosts are directories, not machines: nothing runs there.
The playbooks drive services through ``appliance_systemctl`` and read the
outbox through ``appliance_status_command``; the test points both at this
script, which keeps the box's state in ``ROOT/fake/state.json`` and appends
every operation to ``ROOT/fake/ops.log`` (one JSON object a line), with the
release ``current`` pointed at when it happened.

    fake_box.py ROOT systemctl (start|stop|restart|daemon-reload) [UNIT...]
    fake_box.py ROOT status

The outbox drains one message per status read while the miner is stopped
and the shipper runs: enough to show the rollout waits for the drain.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

LEGS = ("miner", "transformer", "enricher", "shipper")
TARGET_UNITS = tuple(f"appliance-{leg}.service" for leg in LEGS)


def load(root: Path) -> dict[str, Any]:
    """The box's state, as the test seeded it or the last call left it."""
    path = root / "fake" / "state.json"
    if not path.exists():
        return {"running": [], "unconfirmed": 0, "confirmed": 0, "dead_letters": 0}
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def save(root: Path, state: dict[str, Any]) -> None:
    """Write the state atomically (a status read may race a gate read)."""
    path = root / "fake" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, sort_keys=True))
    tmp.replace(path)


def current_release(root: Path) -> str:
    """Release `current` points at, or '' before the first install."""
    link = root / "opt" / "appliance" / "current"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else ""


def log(root: Path, **entry: Any) -> None:
    """Append one operation to the box's ops log."""
    entry = {"t": time.time(), "current": current_release(root), **entry}
    with (root / "fake" / "ops.log").open("a") as out:
        out.write(json.dumps(entry, sort_keys=True) + "\n")


def systemctl(root: Path, verb: str, units: list[str]) -> int:
    """Start, stop or restart units; appliance.target stands for the legs."""
    state = load(root)
    running = set(state["running"])
    expanded: list[str] = []
    for unit in units:
        expanded.extend(TARGET_UNITS if unit == "appliance.target" else [unit])
    if verb in ("stop", "restart"):
        running -= set(expanded)
    if verb in ("start", "restart"):
        running |= set(expanded)
    state["running"] = sorted(running)
    save(root, state)
    log(root, op=verb, units=units)
    return 0


def status(root: Path) -> int:
    """Print ``appliance status --json``'s shape; drain while the miner is off."""
    state = load(root)
    running = set(state["running"])
    miner, shipper = TARGET_UNITS[0], TARGET_UNITS[-1]
    if miner not in running and shipper in running and state["unconfirmed"] > 0:
        state["unconfirmed"] -= 1
        state["confirmed"] += 1
        save(root, state)
    log(root, op="status", unconfirmed=state["unconfirmed"])
    report = {
        "journal": {},
        "counters": {"shipper.confirmed": state["confirmed"]},
        "outbox": {"sent": state["unconfirmed"], "confirmed": state["confirmed"]},
        "legs": [
            {"leg": leg, "state": "running" if unit in running else "stopped"}
            for leg, unit in zip(LEGS, TARGET_UNITS, strict=True)
        ],
        "dead_letters": state["dead_letters"],
    }
    print(json.dumps(report, sort_keys=True))
    return 0


def main(argv: list[str]) -> int:
    """Dispatch on the verb after the root directory."""
    root = Path(argv[0])
    if argv[1] == "systemctl":
        return systemctl(root, argv[2], argv[3:])
    if argv[1] == "status":
        return status(root)
    print(f"fake_box: unknown verb {argv[1]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
