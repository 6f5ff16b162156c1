"""The ODBC connection string: what each read asks of the driver."""

from __future__ import annotations

from appliance.config import IbmiSection
from appliance.source import connection_string


def test_guardian_reads_ask_ibm_i_for_committed_rows() -> None:
    """IBM i Access reads uncommitted rows at autocommit unless told otherwise."""
    ibmi = IbmiSection(dialect="ibmi", host="ibmi.example", user="RELAY")
    miner = connection_string(ibmi, "pw")
    guardian = connection_string(ibmi, "pw", committed_reads=True)
    assert "CommitMode" not in miner and "TrueAutoCommit" not in miner
    assert guardian.endswith("CommitMode=1;TrueAutoCommit=1;")


def test_the_emulator_keeps_its_own_keywords() -> None:
    """psqlODBC does not know IBM's keywords; PostgreSQL reads committed rows."""
    ibmi = IbmiSection(dialect="emulator", driver="PostgreSQL Unicode", port=5432)
    text = connection_string(ibmi, "p;w}", committed_reads=True)
    assert "CommitMode" not in text
    assert "Pwd={p;w}}};" in text and "BoolsAsChar=0" in text
