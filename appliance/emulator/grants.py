"""The miner's least-privilege login on the emulated IBM i.

The reader role may execute ``qsys2.display_journal`` and select the qsys2
catalog views, nothing else (the emu_* tables behind them are closed to
PUBLIC; the function runs as its owner), and select the ``_rrn`` and
primary-key columns of each table in ``mag`` (the transformer's RRN map after
RGZPFM), no other column. With ``data`` it may also select the store tables
in ``mag``, for the guardian's re-reads.

The password is turned into a SCRAM-SHA-256 verifier on this side, so the
clear text never reaches the server, its statement log or an error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from appliance.errors import SourceError

ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
READER_VIEWS = (
    "journal_info",
    "journal_receiver_info",
    "journaled_objects",
    "syscolumns2",
    "systables",
    "syskeycst",
)
DISPLAY_JOURNAL_ARGS = (
    "text, text, text, text, timestamp, numeric, text, text, text, text, text, "
    "text, text, text, text, text, text, timestamp, numeric, text, integer, "
    "numeric, text"
)


def grant_reader(
    cur: psycopg.Cursor[Any], role: str, password: str, *, data: bool
) -> None:
    """Create (or re-password) ``role`` and grant it the reader's rights."""
    if not ROLE.match(role):
        raise SourceError(f"role name {role[:20]!r} invalid, expected [a-z_0-9]")
    if not password:
        raise SourceError("reader password is empty, expected a secret")
    ident = sql.Identifier(role)
    verifier = sql.Literal(scram_verifier(password))
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    verb = "ALTER" if cur.fetchone() else "CREATE"
    cur.execute(
        sql.SQL(verb + " ROLE {} LOGIN NOINHERIT PASSWORD {}").format(ident, verifier)
    )
    for statement in reader_grants(data):
        cur.execute(sql.SQL(statement).format(role=ident))


def reader_grants(data: bool) -> list[str]:
    """GRANT statements, ``{role}`` standing for the role identifier."""
    grants = [
        "GRANT USAGE ON SCHEMA qsys2 TO {role}",
        "GRANT EXECUTE ON FUNCTION qsys2.display_journal("
        + DISPLAY_JOURNAL_ARGS
        + ") TO {role}",
        *(f"GRANT SELECT ON qsys2.{view} TO {{role}}" for view in READER_VIEWS),
        # Name lookup only; columns are granted one by one (grant_slots).
        "GRANT USAGE ON SCHEMA mag TO {role}",
    ]
    if data:
        grants += [
            "GRANT SELECT ON ALL TABLES IN SCHEMA mag TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA mag GRANT SELECT ON TABLES TO {role}",
        ]
    return grants


def grant_slots(
    cur: psycopg.Cursor[Any],
    roles: Sequence[str],
    table: sql.Composable,
    key: Sequence[str],
) -> None:
    """Let ``roles`` select the RRN and key columns of ``table``, nothing more."""
    names = ["_rrn", *(name.lower() for name in key)]
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in names)
    for role in roles:
        cur.execute(
            sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
                columns, table, sql.Identifier(role)
            )
        )


def readers(cur: psycopg.Cursor[Any]) -> list[str]:
    """Roles holding the reader's rights (EXECUTE on display_journal)."""
    cur.execute(
        "SELECT r.rolname FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a"
        " JOIN pg_roles r ON r.oid = a.grantee"
        " WHERE p.oid = %s::regprocedure AND a.privilege_type = 'EXECUTE'"
        " AND a.grantee <> p.proowner ORDER BY 1",
        [f"qsys2.display_journal({DISPLAY_JOURNAL_ARGS})"],
    )
    return [str(row[0]) for row in cur.fetchall()]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password``."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"
