"""The ODBC boundary to the IBM i (or its emulator).

The only place that builds a connection string and translates ``pyodbc``
errors. The password comes from a file or a systemd credential and never
appears in an error or a log line.

:func:`fetch_bounded` is the one read that may meet a cursor that never
ends (DISPLAY_JOURNAL with EOF_DELAY on a real IBM i): it fetches at most
``max_rows`` rows, always closes the cursor, and a watcher thread cancels
the statement (ODBC SQLCancel) once ``deadline_s`` has passed, so the
caller is never held longer than the deadline plus the driver's cancel.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import pyodbc

from appliance.config import IbmiSection, read_secret
from appliance.errors import SourceError

logger = logging.getLogger(__name__)

_CPF = re.compile(r"\b(CP[FDI][0-9A-F]{4})\b")
# How often the deadline watcher of fetch_bounded looks at the clock.
_WATCH_SLICE_S = 0.02


def _escape(value: str) -> str:
    """ODBC attribute value, braced so ';' and '}' cannot break out."""
    return "{" + value.replace("}", "}}") + "}"


def connection_string(
    ibmi: IbmiSection, password: str, *, committed_reads: bool = False
) -> str:
    """Connection string for the configured driver (password included).

    ``committed_reads`` (the guardian's table reads): IBM i Access runs
    autocommit statements at *NONE, which reads uncommitted rows, unless
    ``TrueAutoCommit=1``; with it the statements run at ``CommitMode=1``
    (*CS, read committed). The driver's own default is 2 (*CHG, uncommitted).
    """
    parts = [
        f"DRIVER={_escape(ibmi.driver)}",
        f"Server={ibmi.host}",
        f"Database={ibmi.database}",
        f"Uid={ibmi.user}",
        f"Pwd={_escape(password)}",
    ]
    if ibmi.port:
        parts.append(f"Port={ibmi.port}")
    if committed_reads and ibmi.dialect == "ibmi":
        parts += ["CommitMode=1", "TrueAutoCommit=1"]
    if ibmi.dialect == "emulator":
        # psqlODBC: real booleans, and no server-side prepare surprises.
        parts += ["BoolsAsChar=0", "UseServerSidePrepare=1"]
    return ";".join(parts) + ";"


def connect(
    ibmi: IbmiSection, *, timeout_s: int = 15, committed_reads: bool = False
) -> Any:
    """Open an autocommit ODBC connection to the source."""
    password = read_secret("ibmi-password", ibmi.password_file)
    text = connection_string(ibmi, password, committed_reads=committed_reads)
    try:
        conn = pyodbc.connect(text, autocommit=True, timeout=timeout_s)
    except pyodbc.Error as exc:
        raise translate(exc, f"connect host={ibmi.host}") from exc
    return conn


def translate(exc: Exception, doing: str) -> SourceError:
    """A pyodbc error as a SourceError naming the CPF id when there is one."""
    # Drivers put newlines in messages; one log line per event.
    text = " ".join(str(arg) for arg in getattr(exc, "args", ())).replace("\n", " ")
    match = _CPF.search(text)
    cpf = match.group(1) if match else None
    state = ""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], str) and len(args[0]) == 5:
        state = f" sqlstate={args[0]}"
    short = text if len(text) <= 300 else text[:297] + "..."
    return SourceError(f"source failed while {doing}{state}: {short}", cpf=cpf)


def fetch_all(conn: Any, sql: str, params: Sequence[Any], doing: str) -> list[Any]:
    """Run one query on its own cursor and return every row (errors translated)."""
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, *params)
            return list(cursor.fetchall())
        finally:
            cursor.close()
    except pyodbc.Error as exc:
        raise translate(exc, doing) from exc


def fetch_bounded(
    conn: Any,
    sql: str,
    params: Sequence[Any],
    doing: str,
    *,
    max_rows: int,
    deadline_s: float,
    settle_s: float | None = None,
) -> tuple[list[Any], bool]:
    """At most ``max_rows`` rows of ``sql``, within ``deadline_s`` seconds.

    Returns (rows, cancelled). Rows are fetched one at a time; when the
    watcher had to cancel the statement (``cancelled`` True), the rows
    fetched before the cancel are kept: each is complete, in the order the
    source gave them. With ``settle_s``, once a row has come, the statement
    is also cancelled ``settle_s`` after the latest row unless it ended by
    itself, so a source that streams rows without ever ending (IBM i with
    EOF_DELAY) hands back what it has shortly after it starts giving.
    Any other driver error is raised as :class:`SourceError`.
    """
    if max_rows < 1 or deadline_s <= 0 or (settle_s is not None and settle_s <= 0):
        raise ValueError(
            "fetch_bounded needs max_rows >= 1, deadline_s > 0 and settle_s"
            f" > 0 or None; got {max_rows}, {deadline_s}, {settle_s}"
        )
    try:
        cursor = conn.cursor()
    except pyodbc.Error as exc:
        raise translate(exc, doing) from exc
    fired = threading.Event()
    done = threading.Event()
    cap = time.monotonic() + deadline_s
    limit = [cap]

    def watch() -> None:
        while True:
            left = limit[0] - time.monotonic()
            if left <= 0:
                fired.set()
                try:
                    cursor.cancel()
                except pyodbc.Error:
                    logger.debug("cancelling a statement past its deadline failed")
                return
            if done.wait(min(_WATCH_SLICE_S, left)):
                return

    watcher = threading.Thread(target=watch, name="odbc-deadline", daemon=True)
    watcher.start()
    rows: list[Any] = []
    try:
        cursor.execute(sql, *params)
        while len(rows) < max_rows:
            row = cursor.fetchone()
            if row is None:
                break
            rows.append(row)
            if settle_s is not None:
                limit[0] = min(cap, time.monotonic() + settle_s)
    except pyodbc.Error as exc:
        if not fired.is_set():
            raise translate(exc, doing) from exc
    finally:
        # Join first: the cancel must not touch a handle being freed.
        done.set()
        watcher.join()
        try:
            cursor.close()
        except pyodbc.Error:
            logger.debug("closing a bounded cursor failed")
    return rows, fired.is_set()
