"""Profile each leg of the relay alone on a backlog (docs/profiles.md).

Writes N changes to a fresh emulator with the legs stopped, then runs the
legs one after the other (miner, transformer, enricher, then shipper + sink
together), each alone on the backlog the previous one left, under py-spy
for ``--seconds``; prints each leg's rate and the load average, and keeps a
speedscope JSON plus a top-N text summary per leg in ``--out``.

    eval "$(.venv/bin/python scripts/services.py env)"
    .venv/bin/python scripts/profile_legs.py --changes 100000 --out /tmp/prof
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from appliance.devstack import Services, Stack

PY_SPY = Path(sys.executable).parent / "py-spy"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summarize(speedscope: Path, top: int = 20) -> str:
    """Per thread: top frames by self time and by total (inclusive) time."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]

    def name(i: int) -> str:
        f = frames[i]
        where = Path(f.get("file", "?")).name
        return f"{f['name']} ({where}:{f.get('line', '?')})"

    lines: list[str] = []
    for profile in data["profiles"]:
        own: Counter[int] = Counter()
        total: Counter[int] = Counter()
        seconds = 0.0
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            seconds += weight
            if stack:
                own[stack[-1]] += weight
            for f in set(stack):
                total[f] += weight
        if seconds < 0.5:
            continue
        lines += [
            f"== {profile['name']}: {seconds:.1f} s sampled (idle included)",
            "self time:",
        ]
        lines += [f"  {w / seconds:6.1%}  {name(i)}" for i, w in own.most_common(top)]
        lines.append("total time (inclusive):")
        lines += [f"  {w / seconds:6.1%}  {name(i)}" for i, w in total.most_common(top)]
        lines.append("")
    return "\n".join(lines)


def profile(pids: dict[str, int], seconds: int, out: Path, tag: str) -> list[Path]:
    procs = []
    paths = []
    for leg, pid in pids.items():
        path = out / f"{tag}-{leg}.speedscope.json"
        paths.append(path)
        procs.append(
            subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "50",
                    "--idle",
                    "--format",
                    "speedscope",
                    "--nonblocking",
                    "-o",
                    str(path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for p in procs:
        p.wait()
    for path in paths:
        if path.exists():
            (path.with_suffix("").with_suffix(".txt")).write_text(summarize(path))
    return paths


def count(stack: Stack, sql: str) -> int:
    with stack.pipeline() as conn:
        return int(conn.execute(sql).fetchone()[0])


def run_leg(
    stack: Stack,
    legs: list[str],
    done_sql: str,
    target: int,
    *,
    seconds: int,
    out: Path,
    tag: str,
) -> dict[str, object]:
    start_count = count(stack, done_sql)
    procs = [stack.spawn_leg(leg) for leg in legs]
    stack.legs.extend(procs)
    spawned = time.monotonic()
    first = None  # when the first row came through (start-up excluded)
    while time.monotonic() - spawned < 8:  # start-up outside the profile
        if first is None and count(stack, done_sql) > start_count:
            first = time.monotonic()
        time.sleep(0.25)
    c0, t0 = count(stack, done_sql), time.monotonic()
    load0 = _load()
    profile({p.name: p.process.pid for p in procs}, seconds, out, tag)
    c1, t1 = count(stack, done_sql), time.monotonic()
    rate = (c1 - c0) / (t1 - t0)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if target < 0:
            left = stack.backlog()
            if left["journal_unread"] == 0 and left["raw_new"] == 0:
                break
        elif count(stack, done_sql) >= target:
            break
        stack.check_legs_alive()
        time.sleep(0.25)
    done_at, end_count = time.monotonic(), count(stack, done_sql)
    stack.stop_legs()
    result = {
        "legs": legs,
        "rate_per_s": round(rate, 1),
        # from the first row through to the last (a leg faster than the
        # profile's window is idle for part of it: rate_per_s is then low)
        "whole_run_per_s": round(
            (end_count - start_count) / (done_at - (first or t0)), 1
        ),
        "profiled": c1 - c0,
        "before": start_count,
        "load": load0,
    }
    print(tag, json.dumps(result), flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out", default="/tmp/prof")
    ap.add_argument("--tag", default="before")
    ap.add_argument("--legs", default="miner,enricher,shipper")
    ap.add_argument("--reuse", default="", help="workdir of an earlier run")
    ap.add_argument(
        "--name", default="prof", help="stack name (databases ibmi_<name>, odh_<name>)"
    )
    ap.add_argument("--summarize", nargs="*", default=[])
    ap.add_argument(
        "--profile-all",
        action="store_true",
        help="with --legs all: profile every leg at once (30 s after 8 s)",
    )
    ap.add_argument(
        "--fresh-relay",
        action="store_true",
        help="with --reuse: new pipeline database and ODH, same journal",
    )
    args = ap.parse_args()
    for path in map(Path, args.summarize):
        path.with_suffix("").with_suffix(".txt").write_text(summarize(path))
    if args.summarize:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from appliance.emulator import workload

    workdir = Path(args.reuse or tempfile.mkdtemp(prefix="prof-"))
    stack = Stack(Services.from_env(), workdir, name=args.name, store_id="RE01")
    print("workdir", workdir, flush=True)
    if args.reuse and args.fresh_relay:
        # A new pipeline database starts at the oldest receiver: the same
        # backlog again, under a new epoch, into an empty ODH.
        for stale in stack.pipeline_db.parent.glob("pipeline.db*"):
            stale.unlink()
        stack._recreate_database(stack.odh_db, stack.hub)
        password = (stack.secrets / "odh-password").read_text().strip()
        stack._create_sink_role(f"odh_sink_{stack.name}", password)
    if not args.reuse:
        stack.prepare()
        emulator = stack.emulator()
        workload.seed_store(emulator, articles=500, seed=21)
        started = time.monotonic()
        workload.run(emulator, rate_per_s=1e9, changes=args.changes, seed=22)
        print(
            f"workload written in {time.monotonic() - started:.0f}s load {_load()}",
            flush=True,
        )
    todo = args.legs.split(",")
    if "all" in todo:
        # End to end on the same backlog, no profiler: every leg at once.
        load0, started = _load(), time.monotonic()
        stack.start_legs()
        try:
            if args.profile_all:
                time.sleep(8)
                pids = {leg.name: leg.process.pid for leg in stack.legs}
                profile(pids, args.seconds, out, f"{args.tag}-all")
            stack.wait_drained(timeout_s=1800, settle_s=0.25)
            seconds = time.monotonic() - started
            counts = stack.counts()
        finally:
            stack.close()
        result = {
            "changes": counts["transformer.changes"],
            "applied": counts["hub.applied"],
            "distinct": counts["hub.applied_distinct"],
            "seconds": round(seconds, 1),
            "changes_per_s": round(counts["transformer.changes"] / seconds, 1),
            "load_before": load0,
            "load_after": _load(),
        }
        print(args.tag, "all", json.dumps(result), flush=True)
        return 0
    results = {}
    try:
        if "miner" in todo:
            # The miner pauses when the transformer is 50 windows behind, so
            # the two run together; done when the journal is read and
            # transformed.
            results["miner+transformer"] = run_leg(
                stack,
                ["miner", "transformer"],
                "SELECT count(*) FROM raw_entries WHERE state = 1",
                -1,
                seconds=args.seconds,
                out=out,
                tag=args.tag,
            )
        changes = count(stack, "SELECT count(*) FROM changes")
        if "enricher" in todo:
            results["enricher"] = run_leg(
                stack,
                ["enricher"],
                "SELECT count(*) FROM changes WHERE state = 1",
                changes,
                seconds=args.seconds,
                out=out,
                tag=args.tag,
            )
        msgs = count(stack, "SELECT count(*) FROM outbox")
        if "shipper" in todo:
            results["shipper+sink"] = run_leg(
                stack,
                ["shipper", "sink"],
                "SELECT count(*) FROM outbox WHERE state = 'confirmed'",
                msgs,
                seconds=args.seconds,
                out=out,
                tag=args.tag,
            )
    finally:
        stack.close()
    (out / f"{args.tag}-rates.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
