"""Latency on a fresh stack: the bench's two paced scenarios, without history.

`appliance bench` runs its latency scenarios on the stack of its catch-up and
sustained windows; this runs the same two (`benchrelay._paced` and
`benchrelay._waiting`) on a stack holding only the 500 seeded articles
(docs/benchmarks.md, "Latency against history").

    eval "$(.venv/bin/python scripts/services.py env)"
    .venv/bin/python scripts/bench_latency.py --rate 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from appliance import benchrelay
from appliance.devstack import Services, Stack


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1000.0, help="changes/s")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="appliance-latency-"))
    stack = Stack(Services.from_env(), workdir, name="latency", store_id="RE01")
    sizes = benchrelay.Sizes(paced_rate=args.rate, paced_seconds=args.seconds)
    try:
        stack.prepare()
        benchrelay._seed(stack)
        stack.start_legs()
        print("polling", json.dumps(benchrelay._paced(stack, sizes)), flush=True)
        print("waiting", json.dumps(benchrelay._waiting(stack, sizes)), flush=True)
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
