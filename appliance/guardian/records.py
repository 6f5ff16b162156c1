"""The figures of a guardian run in ``guardian_runs``, and their schema upkeep.

``appliance.store`` makes ``guardian_runs``; a column the guardian added
later is added here to a database of any age (:func:`ensure_schema`, called
when the control leg starts), so an existing box keeps its records.

Invariants:

- ``loaded`` counts the ``r`` rows a load sent (initial load or the
  ``load`` command: the whole table, whether the hub lacked the row or
  not); ``repaired`` and ``deleted`` count only the ``r`` rows sent in
  answer to a hub repair request (a check found the key missing, different
  or extra), with a row and with NULL; ``dropped`` counts keys left out as
  changed during a read, in both kinds.
- The upkeep is idempotent and atomic: the column is looked for and added
  in one write transaction, so two processes starting at once add it once.
- When ``loaded`` is added to a database whose loads counted their rows as
  ``repaired`` (before this column), those load runs' figures move to
  ``loaded`` in the same transaction: old runs read like new ones.

Worked example: an old box has a load run of PRIX with ``repaired = 989``
and a check run with ``repaired = 3``. After the upgrade the load run reads
``loaded = 989, repaired = 0``; the check run still reads ``repaired = 3``.
"""

from __future__ import annotations

import logging
import sqlite3

from appliance import store

logger = logging.getLogger(__name__)

# Columns added to guardian_runs after its first schema: name -> SQL type.
ADDED_COLUMNS = {"loaded": "INTEGER NOT NULL DEFAULT 0"}


def columns(conn: sqlite3.Connection) -> set[str]:
    """The columns ``guardian_runs`` has now (empty when it is missing)."""
    return {str(r[1]) for r in conn.execute("PRAGMA table_info(guardian_runs)")}


def ensure_schema(conn: sqlite3.Connection) -> list[str]:
    """Add the missing columns of ``guardian_runs``; return those added."""
    added: list[str] = []
    with store.transaction(conn):
        present = columns(conn)
        if not present:
            return added  # no guardian_runs here: store.connect makes it
        for name, kind in ADDED_COLUMNS.items():
            if name not in present:
                conn.execute(f"ALTER TABLE guardian_runs ADD COLUMN {name} {kind}")
                added.append(name)
        if "loaded" in added:
            conn.execute(
                "UPDATE guardian_runs SET loaded = repaired, repaired = 0"
                " WHERE kind = 'load'"
            )
    if added:
        logger.info("guardian_runs columns added names=%s", ",".join(added))
    return added
