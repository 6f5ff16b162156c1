"""A guardian job (check, load, repair) and the control leg's constants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.guardian.bracket import Marks
from appliance.guardian.reader import Head, TableReader

STAGE = "control"
HOUSEKEEP_EVERY_S = 1.0
# Cache rows deleted per transaction (a few ms of write lock each).
PURGE_ROWS = 5000
REQUESTS_PER_STEP = 20
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0
REPAIR_TRIES = 10
REPAIR_AT_MOST = 1000  # pks per hub request (the hub splits longer lists)
LOAD_PAGES = 10  # pages of read_chunk_rows held per bracket of a load
LOADED = "guardian.loaded."
NEXT_CHECK = "guardian.next_check_at"
RUN_SEQ = "guardian.run_seq"


@dataclass
class Job:
    """One read in progress (see the module docstring)."""

    kind: str  # check | load | repair
    table: str  # system name, as in ibmi.tables
    run: str
    mode: str
    reason: str = ""
    send_as: str = "load"  # source.guardian.kind of r rows: load | resend | repair
    request: str | None = None
    keys: list[str] = field(default_factory=list)
    narrow: list[list[int]] = field(default_factory=list)
    table_reader: TableReader | None = None
    marks: Marks | None = None
    head_before: Head | None = None
    head_after: Head | None = None
    after: Sequence[Any] | None = None
    start_after: Sequence[Any] | None = None  # a load's key at its bracket's start
    done_reading: bool = False
    more: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    found: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    rows_read: int = 0
    read_at: float = 0.0
    wait_since: float = 0.0
    attempt: int = 0
    tries: int = 0  # repair: reads so far of keys that kept changing
    not_before: float = 0.0

    def restart(self) -> None:
        """Forget the read in progress (its cache rows are deleted by the caller)."""
        self.marks = self.head_before = self.head_after = None
        self.done_reading = self.more = False
        self.rows, self.found = [], {}
        if self.kind == "check":
            self.after, self.rows_read = None, 0
