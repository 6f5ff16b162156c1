"""The snapshot reader gives exactly the values the decoder gives (contracts §2).

A table with every emulated type (composite key CHAR + DECIMAL, nullable
columns, blanks, accents, the euro sign, extreme dates) is filled through the
emulator's journaled jobs; each row's PT image is decoded by the relay's
decoder and compared with the row the reader fetches through ODBC.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from appliance import odbcvalues
from appliance.config import IbmiSection
from appliance.decoder import RecordDecoder
from appliance.devstack import Services
from appliance.emulator import Emulator
from appliance.emulator.layout import Column
from appliance.guardian import reader
from appliance.guardian.digest import canonical_pk

pytestmark = pytest.mark.integration

DB = "ibmi_guardian_reader"
ROLE = "relay_guardian_reader"
COLUMNS = [
    Column("SHOP", "CHAR", 4),
    Column("NUM", "DECIMAL", 7, 2),
    Column("LABEL", "CHAR", 12, nullable=True),
    Column("NOTE", "VARCHAR", 20),
    Column("QTY", "NUMERIC", 9, 3),
    Column("SMALL", "SMALLINT"),
    Column("COUNT", "INTEGER", nullable=True),
    Column("BIG", "BIGINT"),
    Column("DAY", "DATE", nullable=True),
    Column("AT", "TIME"),
    Column("STAMP", "TIMESTAMP"),
]
TEXTS = ["", " lead", "trail  ", "été à noël", "prix 3€", "A", "x" * 12, "O'Neil"]


def _row(rng: random.Random, shop: str, num: Decimal) -> dict[str, Any]:
    return {
        "SHOP": shop,
        "NUM": num,
        "LABEL": rng.choice([None, *TEXTS]),
        "NOTE": rng.choice(TEXTS),
        "QTY": Decimal(rng.randint(-999_999_999, 999_999_999)).scaleb(-3),
        "SMALL": rng.choice([-32768, 0, 1, 32767]),
        "COUNT": rng.choice([None, -(2**31), 7, 2**31 - 1]),
        "BIG": rng.choice([-(2**63), 0, 2**63 - 1, 123456789012]),
        "DAY": rng.choice(
            [None, dt.date(1600, 1, 1), dt.date(2026, 12, 4), dt.date(9999, 12, 31)]
        ),
        "AT": dt.time(rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)),
        "STAMP": dt.datetime(
            2026, 3, 29, 2, 30, rng.randint(0, 59), rng.choice([0, 1, 999_999])
        ),
    }


@pytest.fixture(scope="module")
def source(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[IbmiSection, Emulator]]:
    with psycopg.connect(services.conninfo("postgres"), autocommit=True) as pg:
        pg.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(DB)
            )
        )
        pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    emulator = Emulator(services.conninfo(DB))
    try:
        yield _fill(emulator, services, tmp_path_factory.mktemp("reader")), emulator
    finally:
        emulator.close()


def _fill(emulator: Emulator, services: Services, where: Path) -> IbmiSection:
    emulator.install()
    emulator.create_table("TYPES", COLUMNS, ["SHOP", "NUM"])
    password = secrets.token_urlsafe(16)
    emulator.grant_reader(ROLE, password, data=True)
    secret = where / "ibmi-password"
    secret.write_text(password + "\n")
    rng = random.Random(3)
    with emulator.job("100001/TEST/GUARDIAN") as job:
        for shop in ("MQ01", "GP", "RE 7"):
            for cents in (-99999, -1, 0, 5, 12345, 99999):
                job.insert("TYPES", _row(rng, shop, Decimal(cents).scaleb(-2)))
    return IbmiSection(
        dialect="emulator",
        driver="PostgreSQL Unicode",
        host=services.pg_host,
        port=services.pg_port,
        database=DB,
        user=ROLE,
        password_file=secret,
        tables=["TYPES"],
    )


def _decoded(emulator: Emulator, decoder: RecordDecoder) -> dict[str, dict[str, Any]]:
    """Each row's PT image, decoded by the relay's decoder, by canonical pk."""
    with emulator.transaction() as cur:
        cur.execute(
            "SELECT entry_data, null_value_indicators FROM qsys2.emu_entry"
            " WHERE journal_entry_type = 'PT' AND object LIKE 'TYPES%'"
        )
        images = cur.fetchall()
    out = {}
    for data, nulls in images:
        values = decoder.decode(bytes(data), nulls)
        out[canonical_pk({"SHOP": values["SHOP"], "NUM": values["NUM"]})] = values
    return out


def test_reader_rows_equal_the_decoded_images(
    source: tuple[IbmiSection, Emulator],
) -> None:
    """Paged by a composite key, every value equals the decoder's, type for type."""
    ibmi, emulator = source
    src = reader.connect(ibmi)
    try:
        layout = reader.load_layout(src, ibmi, "TYPES")
        table = reader.TableReader(ibmi, layout)
        rows: list[dict[str, Any]] = []
        after = None
        while True:
            page, after = table.chunk(src, after, 4)
            rows.extend(page)
            if len(page) < 4:
                break
        expected = _decoded(emulator, RecordDecoder(layout))
        got = {canonical_pk(table.key_of(row)): row for row in rows}
        assert len(rows) == len(got) == 18
        assert got == expected
        for pk, row in list(expected.items())[:3]:
            assert table.by_key(src, table.key_of(row)) == row, pk
        assert table.by_key(src, {"SHOP": "ZZ", "NUM": "1.00"}) is None
    finally:
        src.close()


def test_values_follow_the_json_rules() -> None:
    """CHAR loses trailing blanks, DECIMAL keeps its scale, -0 has no sign."""
    from appliance.layouts import Column as Field

    char = Field("C", "CHAR", 5)
    dec = Field("D", "DECIMAL", 7, 2)
    stamp = Field("T", "TIMESTMP", 26, 6)
    real = Field("R", "FLOAT", 4)
    assert odbcvalues.json_value(char, "ab   ") == "ab"
    assert odbcvalues.json_value(dec, Decimal("-0.00")) == "0.00"
    assert odbcvalues.json_value(dec, Decimal("12.5")) == "12.50"
    assert (
        odbcvalues.json_value(stamp, dt.datetime(2026, 1, 2, 3, 4, 5))
        == "2026-01-02T03:04:05.000000"
    )
    assert odbcvalues.json_value(real, 0.10000000149011612) == 0.1
    assert odbcvalues.json_value(char, b"\x01\xab") == "01AB"
    # U+0000 in text is null, as the decoder has it; bytes stay hex.
    varchar = Field("V", "VARCHAR", 8)
    assert odbcvalues.json_value(char, "a\x00b  ") is None
    assert odbcvalues.json_value(varchar, "\x00") is None
    assert odbcvalues.json_value(char, b"\x00\x01") == "0001"
