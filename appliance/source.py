"""The ODBC boundary to the IBM i (or its emulator).

The only place that builds a connection string and translates ``pyodbc``
errors. The password comes from a file or a systemd credential and never
appears in an error or a log line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import pyodbc

from appliance.config import IbmiSection, read_secret
from appliance.errors import SourceError

logger = logging.getLogger(__name__)

_CPF = re.compile(r"\b(CP[FDI][0-9A-F]{4})\b")


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
