"""Fixtures: a throwaway emulator database per test, readers through ODBC."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyodbc
import pytest

from appliance.emulator import Emulator

REPO = Path(__file__).resolve().parents[2]
READER_PASSWORD = "reader-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def postgres() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "scripts"))
    import services

    state = services.ensure_up()["postgres"]
    state["password"] = Path(state["password_file"]).read_text().strip()
    return state


def _conninfo(pg: dict[str, Any], dbname: str) -> str:
    return (
        f"host={pg['host']} port={pg['port']} user={pg['user']} "
        f"password={pg['password']} dbname={dbname}"
    )


@pytest.fixture
def database(postgres: dict[str, Any]) -> Iterator[str]:
    """A fresh database ibmi_test_<random>, dropped afterwards."""
    name = "ibmi_test_" + uuid.uuid4().hex[:10]
    with psycopg.connect(_conninfo(postgres, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(_conninfo(postgres, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def emu(postgres: dict[str, Any], database: str) -> Iterator[Emulator]:
    emulator = Emulator(_conninfo(postgres, database), gap_rate=0.0)
    emulator.install()
    yield emulator
    emulator.close()


@pytest.fixture
def odbc(postgres: dict[str, Any], database: str, emu: Emulator) -> Iterator[Any]:
    """An ODBC connection as a least-privilege reader role (the miner's)."""
    role = "reader_" + database.removeprefix("ibmi_test_")
    emu.grant_reader(role, READER_PASSWORD)
    conn = pyodbc.connect(
        "DRIVER={PostgreSQL Unicode};"
        f"Server={postgres['host']};Port={postgres['port']};Database={database};"
        f"Uid={role};Pwd={{{READER_PASSWORD}}};BoolsAsChar=0;",
        autocommit=True,
    )
    yield conn
    conn.close()
    emu.close()
    with psycopg.connect(_conninfo(postgres, "postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {database}")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
