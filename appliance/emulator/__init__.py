"""An emulated IBM i (journal, receivers, catalog, store tables) in PostgreSQL.

Readers reach it only through ODBC (``qsys2.display_journal`` and the
``qsys2`` catalog views, see docs/contracts.md §1); the store application and
the operator drive it through :class:`Emulator`::

    emu = Emulator("host=127.0.0.1 port=5432 dbname=ibmi user=postgres ...")
    emu.install()
    emu.create_table("PRIX", [Column("ARTNUM", "CHAR", 6), ...], key=["ARTNUM"])
    with emu.job("123456/POS/CAISSE01") as job:
        job.update("PRIX", {"ARTNUM": "000123"}, {"PRIX": "3.99"})
        job.commit()
    emu.rows("PRIX")  # what a correct relay must deliver, as JSON values

:mod:`appliance.emulator.workload` drives realistic retail activity.
"""

from appliance.emulator.job import Entry, Job
from appliance.emulator.journal import Emulator, Head
from appliance.emulator.layout import Column
from appliance.emulator.table import TableDef

__all__ = ["Column", "Emulator", "Entry", "Head", "Job", "TableDef"]
