"""Layouts: buffer lengths, offsets, catalog reading, and the emulator's catalog."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance import store
from appliance.config import IbmiSection
from appliance.decoder import compile_layout
from appliance.errors import DecodeError
from appliance.layouts import (
    COLUMNS_SQL,
    KEYS_SQL,
    Column,
    LayoutHistory,
    LayoutVersion,
    layout_from_json,
    layout_to_json,
    load_layout,
    make_layout,
)


def test_ibm_worked_example_offsets() -> None:
    """Domain brief §4.1: IBM's example reads fields at 1/32, 33/130, 163/258, ..."""
    layout = make_layout(
        "LIB",
        "T",
        [
            Column("F1", "CHAR", 32, ccsid=37),
            Column("F2", "VARCHAR", 128, ccsid=37),
            Column("F3", "NVARCHAR", 128, ccsid=1200),
            Column("N1", "DECIMAL", 11, 2),
            Column("N2", "NUMERIC", 11, 2),
            Column("N3", "INTEGER"),
        ],
    )
    one_based = [(c.offset + 1, c.size) for c in layout.columns]
    assert one_based == [(1, 32), (33, 130), (163, 258), (421, 6), (427, 11), (438, 4)]
    assert layout.record_length == 441


@pytest.mark.parametrize(
    ("column", "size"),
    [
        (Column("C", "CHAR", 7), 7),
        (Column("V", "VARCHAR", 40), 42),
        (Column("G", "GRAPHIC", 5), 10),
        (Column("W", "VARG", 5), 12),
        (Column("P", "DECIMAL", 7, 2), 4),
        (Column("P", "DECIMAL", 6, 2), 4),
        (Column("Z", "NUMERIC", 9, 3), 9),
        (Column("S", "SMALLINT"), 2),
        (Column("I", "INTEGER"), 4),
        (Column("B", "BIGINT"), 8),
        (Column("D", "DATE", date_format="ISO"), 10),
        (Column("D", "DATE", date_format="EUR"), 10),
        (Column("D", "DATE", date_format="USA"), 10),
        (Column("D", "DATE", date_format="MDY"), 8),
        (Column("D", "DATE", date_format="JUL"), 6),
        (Column("T", "TIME", time_format="USA"), 8),
        (Column("S", "TIMESTAMP", 26), 26),
        (Column("S", "TIMESTMP", 19), 19),
        (Column("S", "TIMESTMP", 10, scale=3), 23),
    ],
)
def test_buffer_lengths_per_type(column: Column, size: int) -> None:
    """Domain brief §4.2/§4.3: bytes of each type in the record image."""
    assert make_layout("L", "T", [column]).columns[0].size == size


def test_storage_mismatch_names_the_column() -> None:
    """A catalog STORAGE that differs from the computed length is refused."""
    with pytest.raises(DecodeError) as caught:
        make_layout(
            "MAG",
            "T",
            [Column("A", "CHAR", 2), Column("D", "DATE", date_format="EUR", storage=8)],
        )
    err = caught.value
    assert (err.field, err.offset) == ("D", 2)
    assert err.expected == "storage 10 for DATE(0)"


class FakeCursor:
    """A DB-API cursor answering the two catalog queries with fixed rows."""

    def __init__(self, columns: list[tuple[Any, ...]], keys: list[tuple[Any, ...]]):
        self.answers = {COLUMNS_SQL: columns, KEYS_SQL: keys}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: tuple[Any, ...]) -> None:
        self.calls.append((sql, params))
        self._rows = self.answers[sql]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


def catalog_row(
    name: str,
    kind: str,
    length: int,
    scale: int | None = None,
    ccsid: int | None = None,
    nullable: str = "N",
    storage: int | None = None,
    datfmt: str | None = None,
    datsep: str | None = None,
    hidden: str = "N",
) -> tuple[Any, ...]:
    return (
        "MAGASIN",
        "PRIX_ARTICLE",
        name,
        name[:10],
        0,
        kind,
        Decimal(length),
        scale,
        ccsid,
        nullable,
        storage,
        datfmt,
        datsep,
        None,
        None,
        hidden,
    )


def test_load_layout_reads_columns_and_keys_with_markers() -> None:
    """SYSCOLUMNS2 by system names, SYSKEYCST by SQL names; '?' markers only."""
    cursor = FakeCursor(
        [
            catalog_row("ARTNUM", "CHAR      ", 6, ccsid=297, storage=6),
            catalog_row("PRIX", "DECIMAL", 9, 2, storage=5),
            catalog_row("DEBUT", "DATE", 4, datfmt="*EUR", nullable="Y"),
            catalog_row("MAJ", "TIMESTMP", 26, storage=26),
        ],
        [("ARTNUM  ", 1)],
    )
    layout = load_layout(cursor, "mag", "prix")
    assert cursor.calls[0][1] == ("MAG", "PRIX")
    assert cursor.calls[1][1] == ("MAGASIN", "PRIX_ARTICLE")
    assert "?" in cursor.calls[0][0] and "%s" not in cursor.calls[0][0]
    assert (layout.library, layout.table) == ("MAG", "PRIX")
    assert (layout.sql_schema, layout.sql_name) == ("MAGASIN", "PRIX_ARTICLE")
    assert layout.keys == ("ARTNUM",)
    assert [(c.name, c.offset, c.size) for c in layout.columns] == [
        ("ARTNUM", 0, 6),
        ("PRIX", 6, 5),
        ("DEBUT", 11, 10),  # *EUR with a NULL separator: still 10 bytes
        ("MAJ", 21, 26),
    ]
    assert layout.record_length == 47
    assert layout.column("DEBUT").nullable is True
    assert layout.column("DEBUT").date_format == "EUR"


def test_load_layout_of_unknown_table_is_an_error() -> None:
    """No catalog rows: the error names the table, nothing is guessed."""
    with pytest.raises(DecodeError, match="not found in catalog") as caught:
        load_layout(FakeCursor([], []), "MAG", "NOPE")
    assert caught.value.table == "MAG/NOPE"


def test_hidden_columns_from_the_catalog_are_flagged_and_placed() -> None:
    """SYSCOLUMNS2.HIDDEN I/P: the column is in the image (offset) and flagged."""
    cursor = FakeCursor(
        [
            catalog_row("ARTNUM", "CHAR", 6, ccsid=297),
            catalog_row("MAJ", "TIMESTMP", 26, hidden="I"),
            catalog_row("PRIX", "DECIMAL", 9, 2),
        ],
        [("ARTNUM", 1)],
    )
    layout = load_layout(cursor, "MAG", "PRIX")
    assert [(c.name, c.offset, c.hidden) for c in layout.columns] == [
        ("ARTNUM", 0, False),
        ("MAJ", 6, True),
        ("PRIX", 32, False),
    ]


def test_layout_survives_its_json_form() -> None:
    """Versions are kept in meta as JSON; reading them back gives the same layout."""
    layout = make_layout(
        "MAG",
        "PRIX",
        [
            Column("ARTNUM", "CHAR", 6, ccsid=297),
            Column("DEBUT", "DATE", date_format="DMY", date_separator="-"),
            Column("MAJ", "TIMESTMP", 26, hidden=True),
        ],
        ["ARTNUM"],
    )
    assert layout_from_json(layout_to_json(layout)) == layout


def test_layout_history_picks_the_version_in_force(tmp_path: Path) -> None:
    """§4.5: the version in force at raw id r is the latest with since <= r."""
    conn = store.connect(tmp_path / "pipeline.db")
    v1 = make_layout("MAG", "PRIX", [Column("A", "CHAR", 2, ccsid=37)])
    v2 = make_layout("MAG", "PRIX", [Column("A", "CHAR", 3, ccsid=37)])
    history = LayoutHistory(conn)
    history.add("MAG/PRIX", 0, "", v1)
    history.add("MAG/PRIX", 12, "QSQJRN0001:512", None)
    assert history.in_force("MAG/PRIX", 11) == LayoutVersion(0, "", v1)
    assert history.in_force("MAG/PRIX", 12) == LayoutVersion(12, "QSQJRN0001:512", None)
    history.add("MAG/PRIX", 12, "QSQJRN0001:512", v2)

    reread = LayoutHistory(conn)  # a restart: versions come back from meta
    assert [v.since for v in reread.versions("MAG/PRIX")] == [0, 12]
    assert reread.in_force("MAG/PRIX", 40) == LayoutVersion(12, "QSQJRN0001:512", v2)
    assert reread.in_force("MAG/OTHER", 40) is None
    conn.close()


# --- integration: the emulator's catalog through ODBC ---------------------------


@pytest.fixture
def emulator_db() -> Iterator[tuple[Any, Any]]:
    """A throwaway emulator database with the store tables; dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("appliance.emulator")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import services

    from appliance.devstack import Services
    from appliance.emulator import Emulator

    where = Services.from_state(services.ensure_up())
    name = f"ibmi_layouts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(where.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    emulator = Emulator(where.conninfo(name))
    try:
        emulator.install()
        emulator.create_store_tables()
        ibmi = IbmiSection(
            dialect="emulator",
            driver="PostgreSQL Unicode",
            host=where.pg_host,
            port=where.pg_port,
            database=name,
            user=where.pg_user,
            password_file=where.pg_password_file,
        )
        yield emulator, ibmi
    finally:
        emulator.close()
        with psycopg.connect(where.conninfo("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.integration
def test_layout_from_emulator_catalog(emulator_db: tuple[Any, Any]) -> None:
    """Layouts read through psqlODBC decode the emulator's JT400-built images."""
    from appliance.transformer import OdbcCatalog

    emulator, ibmi = emulator_db
    catalog = OdbcCatalog(ibmi)
    rows = {
        "PRIX": {
            "ARTNUM": "000123",
            "PRIX": Decimal("12.50"),
            "PRIX_PROMO": None,
            "DEB_PROMO": dt.date(2026, 12, 1),
            "FIN_PROMO": None,
            "HEURE_MAJ": dt.time(13, 45, 30),
            "MAJ_LE": dt.datetime(2026, 12, 4, 14, 0, 0, 123456),
        },
        "STOCK": {
            "ARTNUM": "000123",
            "MAGASIN": "MQ01",
            "QUANTITE": Decimal("-12.345"),
            "SEUIL": -2,
            "MOUVEMENTS": 10**12,
            "DERN_MVT": dt.datetime(2026, 12, 4, 14, 0, 0),
        },
    }
    try:
        for name, row in rows.items():
            table = emulator.table(name)
            layout = catalog.load_layout("MAG", name)
            assert layout.sql_name == name
            assert layout.keys == table.key
            assert [c.name for c in layout.columns] == [c.name for c in table.columns]
            assert [c.size for c in layout.columns] == [
                c.storage for c in table.columns
            ]
            assert layout.record_length == sum(c.storage for c in table.columns)
            image, null_map = table.image(row)
            decoded = compile_layout(layout).decode(image, null_map)
            assert decoded == table.json_row(row)
    finally:
        catalog.close()
