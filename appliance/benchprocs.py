"""What the bench's processes used: CPU per leg and service, peak memory.

:class:`RssSampler` sums ``VmRSS`` of the legs and their children every
0.2 s (the memory row). For CPU:

The relay shares the machine's cores with Kafka, PostgreSQL (the hub's
database and the emulator's) and the emulator; a rate alone does not say
which of them spent the cores. :class:`CpuSampler` reads ``/proc`` every
half second and keeps, per process, the last ``utime + stime`` it saw, so a
process that exits between two samples loses at most half a second. Each
process is put in one group:

- a leg: the leg's process and its descendants (the enricher's JVM lives in
  its process);
- ``postgres <db>``: a PostgreSQL backend serving database ``<db>`` (the
  title PostgreSQL gives it: ``postgres: user db host(port) state``);
- ``postgres shared``: the postmaster and its helpers (WAL writer,
  checkpointer...), which work for every database;
- ``kafka``: the broker's JVM (``kafka.Kafka`` on its command line);
- ``other``: everything else that ran (the bench itself included).

The machine's own busy time comes from ``/proc/stat``, so the groups can be
read against what the cores could give in the same span.

:class:`PartCpu` is the raw limits' counterpart: the CPU one raw part of the
chain spent over a ``with`` block, this process (every thread, librdkafka's
included) plus the server processes serving it (the broker found by its
listening port, a PostgreSQL backend by its pid and the postmaster's helpers).
:func:`cores` is what the machine gives this process: the CPUs it may run on,
capped by its cgroup's quota.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

CPU_SAMPLE_S = 0.5
RSS_SAMPLE_S = 0.2
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _ppid(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(text[text.rindex(")") + 2 :].split()[1])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _is_pg_backend(cmd: str) -> bool:
    # "postgres: user db host(port) state" for a backend;
    # "postgres: walwriter" and the like for the helpers.
    words = cmd.split()
    return cmd.startswith("postgres: ") and len(words) >= 4 and "(" in words[3]


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # up to steal; guest time is inside user
    return total - idle, total


class CpuSampler:
    """CPU seconds per group (legs, services) over a ``with`` block."""

    def __init__(self, legs: dict[str, int]) -> None:
        self.legs = legs
        self._seen: dict[int, tuple[str, int, int]] = {}  # pid: group, first, last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._machine: tuple[int, int] = (0, 0)
        self.machine_busy_s = 0.0
        self.machine_total_s = 0.0
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> CpuSampler:
        self._machine = _machine_ticks()
        self._started = time.monotonic()
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(first=False)
        busy, total = _machine_ticks()
        self.machine_busy_s = (busy - self._machine[0]) / TICKS
        self.machine_total_s = (total - self._machine[1]) / TICKS
        self.seconds = time.monotonic() - self._started

    def _loop(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_S):
            self._sample(first=False)

    def _group(self, pid: int, cmd: str) -> str:
        ancestor = pid
        for _ in range(16):
            for leg, leg_pid in self.legs.items():
                if ancestor == leg_pid:
                    return leg
            ancestor = _ppid(ancestor)
            if ancestor <= 1:
                break
        if cmd.startswith("postgres: "):
            if _is_pg_backend(cmd):
                return f"postgres {cmd.split()[2]}"
            return "postgres shared"
        if "postgres" in cmd.split(" ", maxsplit=1)[0]:
            return "postgres shared"
        if "kafka.Kafka" in cmd:
            return "kafka"
        return "other"

    def _sample(self, *, first: bool) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            ticks = _cpu_ticks(pid)
            if ticks is None:
                continue
            known = self._seen.get(pid)
            if known is None:
                group = self._group(pid, _cmdline(pid))
                # A process born during the block spent all its time in it.
                self._seen[pid] = (group, ticks if first else 0, ticks)
            else:
                self._seen[pid] = (known[0], known[1], ticks)

    def by_group(self) -> dict[str, float]:
        """CPU seconds per group, largest first."""
        sums: dict[str, int] = defaultdict(int)
        for group, first, last in self._seen.values():
            sums[group] += max(0, last - first)
        return {
            k: round(v / TICKS, 2)
            for k, v in sorted(sums.items(), key=lambda kv: -kv[1])
            if v
        }

    def report(self, changes: int) -> dict[str, object]:
        """The groups' seconds, their CPU microseconds per change, the cores."""
        groups = self.by_group()
        per_change = {
            k: round(v * 1e6 / changes, 1) for k, v in groups.items() if changes
        }
        return {
            "cpu_s": groups,
            "cpu_us_per_change": per_change,
            "machine_busy_s": round(self.machine_busy_s, 1),
            "machine_capacity_s": round(self.machine_total_s, 1),
            "machine_busy_share": round(self.machine_busy_s / self.machine_total_s, 3)
            if self.machine_total_s
            else 0.0,
        }


def cores(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> float:
    """The CPUs this process may use: its affinity, capped by cgroup quotas.

    Every quota from this process's cgroup up to the root counts: ``cpu.max``
    (v2, at the root or under ``unified`` on a hybrid mount) and
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (v1's cpu controller).
    """
    count = float(len(os.sched_getaffinity(0)) or os.cpu_count() or 1)
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return count
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:
            bases = [cgroup_root, cgroup_root / "unified"]
        elif "cpu" in controllers.split(","):
            bases = [cgroup_root / controllers, cgroup_root / "cpu"]
        else:
            continue
        for base in bases:
            level = base / path.lstrip("/")
            while True:
                count = min(count, _quota(level))
                if level == base or base not in level.parents:
                    break
                level = level.parent
    return count


def _quota(level: Path) -> float:
    """The CPUs a cgroup directory's quota allows (inf when none is set)."""
    try:
        quota, period = (level / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (level / "cpu.cfs_quota_us").read_text().strip()
            period = (level / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return float("inf")
    if quota in ("max", "-1"):
        return float("inf")
    return int(quota) / int(period)


def listening_pid(port: int) -> int | None:
    """The process with a listening TCP socket on ``port`` (loopback or any)."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    with os.scandir("/proc") as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    for pid in pids:
        try:
            with os.scandir(f"/proc/{pid}/fd") as fds:
                if any(_link(fd.path) in inodes for fd in fds):
                    return pid
        except OSError:
            continue
    return None


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # the descriptor closed meanwhile
        return ""


def pg_shared_pids(backend_pid: int) -> list[int]:
    """The postmaster above ``backend_pid`` and its helpers, backends left out.

    WAL writer, checkpointer, background writer, autovacuum: they work for
    every database of the cluster, so over a span they also serve whatever
    else ran on it then.
    """
    postmaster = _ppid(backend_pid)
    if postmaster <= 1:
        return []
    with os.scandir("/proc") as entries:
        children = [
            int(e.name)
            for e in entries
            if e.name.isdigit() and _ppid(int(e.name)) == postmaster
        ]
    return [postmaster] + [c for c in children if not _is_pg_backend(_cmdline(c))]


class PartCpu:
    """CPU one raw part spent over a ``with`` block: this process and its servers.

    ``client`` is this process (``time.process_time``: every thread, so
    librdkafka's and psqlODBC's work count). Each keyword names a server: a
    function giving its pids, asked at the start and at the end, so a helper
    born during the block counts whole and one that ended loses its last
    stretch. Server time is ``utime + stime`` (1/CLK_TCK resolution).
    """

    def __init__(self, **servers: Callable[[], Iterable[int]]) -> None:
        self.servers = servers
        self.seconds: dict[str, float] = {}
        self._before: dict[str, dict[int, int]] = {}
        self._own = 0.0

    def __enter__(self) -> PartCpu:
        self._before = {name: _ticks(get()) for name, get in self.servers.items()}
        self._own = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = {"client": time.process_time() - self._own}
        for name, get in self.servers.items():
            before = self._before[name]
            after = _ticks([*before, *get()])
            spent = sum(max(0, t - before.get(pid, 0)) for pid, t in after.items())
            self.seconds[name] = spent / TICKS

    def us_per(self, count: int) -> dict[str, float]:
        """Microseconds per item (row, message, entry) by process, and ``total``."""
        per = {k: v * 1e6 / count for k, v in self.seconds.items()} if count else {}
        found = {k: round(v, 2) for k, v in per.items()}
        found["total"] = round(sum(per.values()), 2)
        return found


def _ticks(pids: Iterable[int]) -> dict[int, int]:
    found = {}
    for pid in set(pids):
        ticks = _cpu_ticks(pid)
        if ticks is not None:
            found[pid] = ticks
    return found


class RssSampler:
    """Peak sum of VmRSS over processes and their descendants, every 0.2 s.

    Also the peak sum of their PSS (``smaps_rollup``): RSS counts a shared
    library's pages once in every leg that maps it, PSS shares them out, so
    the PSS sum is what the legs take from the machine's memory together.
    The target is set on the RSS sum, the stricter of the two.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak_kb = 0
        self.peak_pss_kb = 0
        self.peak_by_leg: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            by_leg = {leg: _tree_rss_kb(pid) for leg, pid in self.pids.items()}
            pss = sum(_tree_rss_kb(pid, _PSS) for pid in self.pids.values())
            self.samples += 1
            self.peak_kb = max(self.peak_kb, sum(by_leg.values()))
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            for leg, kb in by_leg.items():
                self.peak_by_leg[leg] = max(self.peak_by_leg.get(leg, 0), kb)
            self._stop.wait(RSS_SAMPLE_S)


_RSS = ("status", re.compile(r"^VmRSS:\s+(\d+) kB", re.MULTILINE))
_PSS = ("smaps_rollup", re.compile(r"^Pss:\s+(\d+) kB", re.MULTILINE))


def _tree_rss_kb(pid: int, what: tuple[str, re.Pattern[str]] = _RSS) -> int:
    """VmRSS (or, with ``_PSS``, Pss) of ``pid`` and its descendants, in kB."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/{what[0]}").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        found = what[1].search(status)
        total += int(found.group(1)) if found else 0
        for task in tasks:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return total
