"""The soak: a long store workload with journal events mixed in, end to end.

``appliance soak --changes N`` builds a throwaway relay (:class:`Stack`: a
fresh emulator, ODH, topics and the five legs), then writes N row changes
with the emulator's retail workload in chunks. Between two chunks it plays
one journal event drawn at random:

    CHGJRN *CONT          receiver change, numbering continues
    CHGJRN *RESET         receiver change, numbering restarts at 1
    IPL                   open cycles rolled back by the system, then *RESET
    cycle across CHGJRN   a cycle opened, the receiver changed, then CM
    ALTER                 a nullable column added to ARTICLE (at most 3)

The workload itself brings commits, rollbacks, savepoint rollbacks and
interleaved jobs. At the end the relay must drain and ODH must equal the
emulator's tables value for value, with every applied message applied once.

Invariant the report states: ``shipped == applied == distinct`` (every
enriched message was sent, applied by the hub exactly once).

ALTER is played while the relay is behind, as a store would: the
transformer keys layout versions by journal position, so the entries written
before the D CG decode with the layout in force at their own position even
when the catalog already shows the new one.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.devstack import Services, Stack
from appliance.emulator import Column, Emulator, workload

logger = logging.getLogger(__name__)

EVENTS = ("receiver", "reset", "ipl", "spanning", "alter", "none")
MAX_ALTERS = 3
CHUNK = 500


@dataclass
class SoakReport:
    """What the soak wrote, what the relay delivered, how long it took."""

    changes: int = 0
    entries: int = 0
    receiver_changes: int = 0
    resets: int = 0
    ipls: int = 0
    spanning_cycles: int = 0
    alters: int = 0
    # Per ALTER, what the relay had not decoded yet when it ran: [entries of
    # the miner's receiver not mined (-1: the miner is in an older receiver),
    # entries mined but not transformed]. Non-zero: the ALTER overtook it.
    alter_backlog: list[tuple[int, int]] = field(default_factory=list)
    rollbacks: int = 0
    savepoint_rollbacks: int = 0
    commits: int = 0
    shipped: int = 0
    sends: int = 0
    applied: int = 0
    distinct: int = 0
    dead_letters: int = 0
    equal: bool = False
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    write_s: float = 0.0
    drain_s: float = 0.0
    duration_s: float = 0.0


def _spanning_cycle(emu: Emulator, number: int) -> None:
    """A cycle opened in one receiver and committed in the next (brief §2.2)."""
    key = {"ARTNUM": f"S{number:05d}", "MAGASIN": "SPAN"}
    row = {"QUANTITE": "1.000", "SEUIL": 0, "MOUVEMENTS": 1, "DERN_MVT": emu.now()}
    with emu.job("300000/POS/CAISSE09") as job:
        job.insert("STOCK", {**key, **row})
        emu.change_receiver()
        job.update("STOCK", key, {"QUANTITE": "2.000", "MOUVEMENTS": 2})
        job.commit()


def play_event(
    stack: Stack, event: str, rng: random.Random, report: SoakReport
) -> None:
    """One journal event between two workload chunks."""
    emu = stack.emulator()
    if event == "receiver":
        emu.change_receiver()
        report.receiver_changes += 1
    elif event == "reset":
        emu.change_receiver(reset=True)
        report.receiver_changes += 1
        report.resets += 1
    elif event == "ipl":
        emu.ipl()
        report.receiver_changes += 1
        report.resets += 1
        report.ipls += 1
    elif event == "spanning":
        _spanning_cycle(emu, report.spanning_cycles)
        report.receiver_changes += 1
        report.spanning_cycles += 1
    elif event == "alter" and report.alters < MAX_ALTERS:
        report.alters += 1
        behind = stack.backlog()
        report.alter_backlog.append((behind["journal_unread"], behind["raw_new"]))
        emu.add_column(
            "ARTICLE", Column(f"EXTRA{report.alters}", "SMALLINT", nullable=True)
        )


def run(
    stack: Stack, changes: int, *, seed: int = 1, articles: int = 300
) -> SoakReport:
    """Write ``changes`` changes with events, drain, compare; the figures."""
    report = SoakReport()
    rng = random.Random(seed)  # noqa: S311  (test data, not secrets)
    emu = stack.emulator()
    started = time.monotonic()
    workload.seed_store(emu, articles=articles, seed=seed)
    while report.changes < changes:
        size = min(CHUNK, changes - report.changes)
        done = workload.run(emu, 0, changes=size, seed=rng.randrange(2**31))
        report.changes += int(done["changes"])
        report.rollbacks += int(done.get("rollbacks", 0))
        report.savepoint_rollbacks += int(done.get("savepoint_rollbacks", 0))
        report.commits += int(done.get("commits", 0))
        play_event(stack, rng.choice(EVENTS), rng, report)
        stack.check_legs_alive()
    report.write_s = round(time.monotonic() - started, 1)
    report.drain_s = round(stack.wait_drained(timeout_s=max(300, changes / 50)), 1)
    report.duration_s = round(time.monotonic() - started, 1)
    counts = stack.counts()
    report.entries = counts["miner.entries"]
    report.shipped = counts["outbox.confirmed"]
    report.sends = counts["shipper.sent"]
    report.applied = counts["hub.applied"]
    report.distinct = counts["hub.applied_distinct"]
    report.dead_letters = counts["dead_letters"]
    report.tables = stack.compare()
    report.equal = all(t["equal"] for t in report.tables.values())
    logger.info(
        "soak done count=%d elapsed_s=%.1f equal=%s",
        report.changes,
        report.duration_s,
        report.equal,
    )
    return report


def main(args: argparse.Namespace) -> int:
    """``appliance soak``: 0 when ODH equals the emulator and nothing doubled."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="soak-"))
    stack = Stack(Services.from_env(), workdir, name=args.name)
    try:
        stack.prepare()
        stack.start_legs()
        report = run(stack, args.changes, seed=args.seed)
    finally:
        stack.close()
    print(json.dumps(asdict(report), indent=2, sort_keys=True))
    good = report.equal and report.applied == report.distinct == report.shipped
    return 0 if good and report.dead_letters == 0 else 1
