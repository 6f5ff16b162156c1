"""The fault supervisor survives pid reuse (the first long run stopped on it).

A killed leg's pid stayed in the supervisor's "killed by us" set; after the
pid numbers wrapped around, a new leg got one of those pids and every later
kill took the live leg for a dead one ("leg enricher not running 30s").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from appliance.faults import legs


@dataclass
class Proc:
    pid: int
    code: int | None = None

    def poll(self) -> int | None:
        return self.code


@dataclass
class Leg:
    name: str
    process: Proc


@dataclass
class FakeStack:
    legs: list[Leg] = field(default_factory=list)
    next_pids: list[int] = field(default_factory=list)

    def spawn_leg(self, name: str) -> Any:
        return Leg(name, Proc(self.next_pids.pop(0)))


def test_a_reaped_pid_is_forgotten_so_a_reused_one_counts_as_alive() -> None:
    stack = FakeStack([Leg("enricher", Proc(4242))], next_pids=[4242])
    sup = legs.Supervisor(stack)  # type: ignore[arg-type]
    sup.expected.add(4242)  # the harness killed it
    stack.legs[0].process.code = -9
    sup.start()
    try:
        deadline = time.monotonic() + 10
        while sup.restarts["enricher"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sup.stop()
    assert sup.restarts["enricher"] == 1
    assert sup.own_exits["enricher"] == 0  # our kill, not an exit of its own
    assert 4242 not in sup.expected  # the new leg has that pid and is alive
    assert stack.legs[0].process.pid == 4242 and stack.legs[0].process.poll() is None
