"""The ODBC boundary to the IBM i (or its emulator).

The only place that builds a connection string and translates ``pyodbc``
errors. The password comes from a file or a systemd credential and never
appears in an error or a log line.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pyodbc

from appliance.config import IbmiSection, read_secret
from appliance.errors import SourceError

logger = logging.getLogger(__name__)

_CPF = re.compile(r"\b(CP[FDI][0-9A-F]{4})\b")


def _escape(value: str) -> str:
    """ODBC attribute value, braced so ';' and '}' cannot break out."""
    return "{" + value.replace("}", "}}") + "}"


def connection_string(ibmi: IbmiSection, password: str) -> str:
    """Connection string for the configured driver (password included)."""
    parts = [
        f"DRIVER={_escape(ibmi.driver)}",
        f"Server={ibmi.host}",
        f"Database={ibmi.database}",
        f"Uid={ibmi.user}",
        f"Pwd={_escape(password)}",
    ]
    if ibmi.port:
        parts.append(f"Port={ibmi.port}")
    if ibmi.dialect == "emulator":
        # psqlODBC: real booleans, and no server-side prepare surprises.
        parts += ["BoolsAsChar=0", "UseServerSidePrepare=1"]
    return ";".join(parts) + ";"


def connect(ibmi: IbmiSection, *, timeout_s: int = 15) -> Any:
    """Open an autocommit ODBC connection to the source."""
    password = read_secret("ibmi-password", ibmi.password_file)
    try:
        conn = pyodbc.connect(
            connection_string(ibmi, password), autocommit=True, timeout=timeout_s
        )
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
