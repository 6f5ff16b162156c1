"""The demo: the whole relay on this machine, end to end, for one minute.

Starts nothing but the relay itself (``make demo`` has started Kafka and
PostgreSQL on loopback), then: a fresh emulated IBM i and ODH, the five legs
as their own processes, one minute of store activity, the drain, the count
at each leg, and the ODH tables compared with the emulator's value for value.
Exit status 0 only when every table is equal and nothing was applied twice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

from appliance.devstack import Services, Stack  # noqa: E402
from appliance.emulator import workload  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0, help="changes/s")
    parser.add_argument("--articles", type=int, default=500)
    args = parser.parse_args()

    stack = Stack(Services.from_state(services.ensure_up()), REPO / ".cache" / "demo")
    print("demo: preparing a fresh emulated IBM i, ODH and topics")
    stack.prepare()
    stack.start_legs()
    try:
        return run(stack, args)
    finally:
        stopped = stack.stop_legs()
        print("demo: legs stopped (exit code, seconds): " + json.dumps(stopped))
        stack.close()


def run(stack: Stack, args: argparse.Namespace) -> int:
    emulator = stack.emulator()
    started = time.monotonic()
    seeded = workload.seed_store(emulator, articles=args.articles, seed=1)
    print(f"demo: store seeded: {seeded}")
    print(f"demo: store activity for {args.seconds:.0f}s at {args.rate:.0f}/s")
    activity = workload.run(
        emulator, rate_per_s=args.rate, duration_s=args.seconds, seed=2
    )
    print(f"demo: activity written: {activity}")
    emulator.inject_bad_image("PRIX")
    print("demo: one mis-sized PRIX record image written on purpose")
    drained = stack.wait_drained(timeout_s=600)
    print(f"demo: relay drained {drained:.1f}s after the last change")
    counts = stack.counts()
    print("\ncount at each leg:")
    for name, value in counts.items():
        print(f"  {name:<22} {value}")
    report = stack.compare()
    print("\nODH compared with the emulator's tables:")
    ok = True
    for table, item in report.items():
        verdict = "EQUAL" if item["equal"] else "DIFFERENT"
        ok &= bool(item["equal"])
        print(f"  {table:<8} source={item['source']:<6} odh={item['odh']:<6} {verdict}")
        for row in item["only_source"] + item["only_odh"]:
            print(f"      {row[:150]}")
    twice = counts["hub.applied"] - counts["hub.applied_distinct"]
    print(f"\napplied twice: {twice}")
    print("\ndead letters (appliance dead-letters list):")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "--config",
            str(stack.box_config),
            "dead-letters",
            "list",
            "--limit",
            "5",
        ],
        check=False,
    )
    print(f"\ndemo: {time.monotonic() - started:.0f}s in all")
    return 0 if ok and twice == 0 and counts["dead_letters"] == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
