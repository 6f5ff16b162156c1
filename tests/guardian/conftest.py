"""Fixtures of the guardian tests: the real services, started if needed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from appliance.devstack import Services

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def services() -> Services:
    """Kafka and PostgreSQL on loopback (scripts/services.py)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import services as real

    return Services.from_state(real.ensure_up())


@pytest.fixture(scope="session")
def pg(services: Services) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the PostgreSQL of the tests."""
    with psycopg.connect(services.conninfo("postgres"), autocommit=True) as conn:
        yield conn
