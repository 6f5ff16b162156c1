"""One store writer of a fault run, in a process of its own.

The harness starts ``writers`` of these (``python -m appliance.faults.writer``)
so the store's activity neither shares the harness's interpreter with the
fault proxy nor is bounded by one core. Writer k of n changes only the
articles numbered k modulo n, under jobs of its own
(:func:`appliance.emulator.workload.run`, ``shard``), so writers never wait
for one another's row locks.

Its orders arrive as one JSON object on stdin (the emulator's conninfo holds
a password, which must not show in ``ps``): ``conninfo``, ``rate`` (changes
per second of this writer), ``seconds`` (at least this long), ``changes``
(and at least this many), ``max_s`` (never longer), ``seed``, ``shard``
([k, n]) and ``stop_file`` (the harness creates it when the last fault is
over). It writes in chunks of :data:`CHUNK_S` seconds and stops between two
chunks once ``seconds`` passed, ``changes`` were written and the stop file
exists, or at ``max_s``, or on SIGTERM. Its counts go to stdout as one JSON
object; a failure exits 1 with the error on stderr.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from appliance import logs

logger = logging.getLogger(__name__)

CHUNK_S = 5.0


def write(orders: dict[str, Any], stopping: list[bool]) -> dict[str, int]:
    """Write as ``orders`` say until told to stop; the counts."""
    from appliance.emulator import Emulator, workload

    emu = Emulator(orders["conninfo"])
    own, of = (int(v) for v in orders["shard"])
    stop_file = Path(orders["stop_file"])
    total: Counter[str] = Counter()
    started = time.monotonic()
    chunk = 0
    try:
        while not stopping[0]:
            elapsed = time.monotonic() - started
            if elapsed >= float(orders["max_s"]):
                break
            if (
                elapsed >= float(orders["seconds"])
                and total["changes"] >= int(orders["changes"])
                and stop_file.exists()
            ):
                break
            done = workload.run(
                emu,
                rate_per_s=float(orders["rate"]),
                duration_s=CHUNK_S,
                seed=int(orders["seed"]) * 1000 + chunk,
                shard=(own, of),
            )
            chunk += 1
            total.update({k: int(v) for k, v in done.items() if k != "rate"})
    finally:
        emu.close()
    return dict(total)


def main() -> int:
    logs.setup("WARNING", "writer")
    orders = json.loads(sys.stdin.read())
    stopping = [False]

    def on_term(signum: int, frame: FrameType | None) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        counts = write(orders, stopping)
    except Exception as exc:
        print(f"store writer {orders.get('shard')}: {exc!r}", file=sys.stderr)
        return 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
