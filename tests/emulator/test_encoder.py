"""Record images from JT400 match the domain brief's worked bytes (§4.2, §5.3)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import ebcdic  # noqa: F401
import pytest

from appliance.emulator.encoder import RecordEncoder, field_encoder
from appliance.emulator.layout import Column
from appliance.errors import SourceError

pytestmark = pytest.mark.integration  # JT400 in a real JVM

WORKED = [
    (Column("D", "DECIMAL", 7, 2), Decimal("12345.67"), "1234567f"),
    (Column("D", "DECIMAL", 7, 2), Decimal("-12345.67"), "1234567d"),
    (Column("D", "DECIMAL", 6, 2), Decimal("1234.56"), "0123456f"),
    (Column("N", "NUMERIC", 5, 2), Decimal("-123.45"), "f1f2f3f4d5"),
    (Column("I", "INTEGER"), -2, "fffffffe"),
    (Column("S", "SMALLINT"), 300, "012c"),
    (Column("B", "BIGINT"), 10**12, "000000e8d4a51000"),
    (Column("D", "DATE"), dt.date(2024, 3, 15), "f2f0f2f460f0f360f1f5"),
    (Column("T", "TIME"), dt.time(13, 45, 30), "f1f34bf4f54bf3f0"),
]


@pytest.mark.parametrize(("column", "value", "expected"), WORKED)
def test_worked_bytes_of_the_domain_brief(
    column: Column, value: object, expected: str
) -> None:
    """Each worked example of brief §4.2/§4.3 comes out of the encoder."""
    assert field_encoder(column)(value).hex() == expected


def test_varchar_cafe_in_297_has_length_then_unused_bytes() -> None:
    """VARCHAR(10) 'Café' CCSID 297 -> 00 04 C3 81 86 C0 + 6 unused bytes."""
    data = field_encoder(Column("V", "VARCHAR", 10, ccsid=297))("Café")
    assert data[:6].hex() == "0004c38186c0"
    assert len(data) == 12


def test_char_is_blank_padded_and_timestamp_is_26_chars() -> None:
    """CHAR pads with 0x40; TIMESTAMP is 'YYYY-MM-DD-HH.MM.SS.ffffff'."""
    char = field_encoder(Column("C", "CHAR", 6, ccsid=297))("é")
    assert char.hex() == "c04040404040"
    stamp = field_encoder(Column("T", "TIMESTAMP"))(
        dt.datetime(2024, 3, 15, 13, 45, 30, 123456)
    )
    assert stamp.decode("cp037") == "2024-03-15-13.45.30.123456"


def test_null_map_marks_null_fields_and_is_empty_without_nullable() -> None:
    """One '0'/'1' per field; '' when no field is null-capable."""
    nullable = RecordEncoder(
        "T", [Column("A", "CHAR", 1), Column("P", "DECIMAL", 5, 2, nullable=True)]
    )
    image, null_map = nullable.encode({"A": "A", "P": None})
    assert null_map == "01"
    assert len(image) == 1 + 3
    plain = RecordEncoder("T", [Column("A", "CHAR", 1)])
    assert plain.encode({"A": "A"}) == (b"\xc1", "")


@pytest.mark.parametrize("ccsid", [297, 1147])
def test_jt400_agrees_with_the_python_codec_on_french_characters(ccsid: int) -> None:
    """JT400 and the ``ebcdic`` codec give the same bytes (brief §5.3 table)."""
    text = "éàçèù§£@#[]{}\\~|!^¨`µ°¢¬âêîôûëïüÀÉÈÇ" + ("€" if ccsid == 1147 else "¤")
    jt400 = field_encoder(Column("C", "CHAR", len(text), ccsid=ccsid))(text)
    assert jt400 == text.encode(f"cp{ccsid}")
    assert jt400[:5].hex() == "c07ce0d06a"  # é à ç è ù in 297/1147


def test_unrepresentable_character_is_refused_not_substituted() -> None:
    """'œ' has no code point in 1147: a SourceError, never byte 0x3F."""
    encoder = RecordEncoder("ARTICLE", [Column("LIBELLE", "VARCHAR", 20)])
    with pytest.raises(SourceError, match="LIBELLE"):
        encoder.encode({"LIBELLE": "Bœuf"})


def test_decimal_that_does_not_fit_is_refused() -> None:
    """12345.678 into DECIMAL(7,2) would lose a digit: refused."""
    with pytest.raises(SourceError, match="does not fit"):
        field_encoder(Column("P", "DECIMAL", 7, 2))(Decimal("12345.678"))
