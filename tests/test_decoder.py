"""Decoder: worked bytes of domain brief §4.2/§4.3, public failure cases of §7."""

from __future__ import annotations

import time

import pytest

from appliance.decoder import RecordDecoder, compile_layout
from appliance.errors import DecodeError
from appliance.layouts import Column, make_layout


def decoder(*columns: Column, overrides: dict[str, int] | None = None) -> RecordDecoder:
    return compile_layout(make_layout("MAG", "T", columns), overrides)


def one(column: Column, hexbytes: str, **kwargs: object) -> object:
    """Decode a one-column image given in hex; return the column's value."""
    image = bytes.fromhex(hexbytes)
    return decoder(column, **kwargs).decode(image)[column.name]  # type: ignore[arg-type]


# --- §4.2 worked bytes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "scale", "hexbytes", "expected"),
    [
        (7, 2, "1234567F", "12345.67"),
        (7, 2, "1234567D", "-12345.67"),
        (6, 2, "0123456F", "1234.56"),
        (5, 0, "00000D", "0"),
        (3, 3, "005F", "0.005"),
        (1, 0, "9C", "9"),
    ],
)
def test_packed_decimal_worked_bytes(
    precision: int, scale: int, hexbytes: str, expected: str
) -> None:
    """DECIMAL(p,s) is BCD with the sign in the last nibble; -0 reads 0."""
    column = Column("P", "DECIMAL", precision, scale)
    assert one(column, hexbytes) == expected


@pytest.mark.parametrize(
    ("hexbytes", "expected"),
    [("F1F2F3F4D5", "-123.45"), ("F1F2F3F4F5", "123.45"), ("F1F2F3F4C5", "123.45")],
)
def test_zoned_numeric_worked_bytes(hexbytes: str, expected: str) -> None:
    """NUMERIC(5,2) keeps the sign in the zone of the last byte."""
    assert one(Column("Z", "NUMERIC", 5, 2), hexbytes) == expected


@pytest.mark.parametrize(
    ("kind", "hexbytes", "expected"),
    [
        ("INTEGER", "FFFFFFFE", -2),
        ("SMALLINT", "012C", 300),
        ("BIGINT", "000000E8D4A51000", 10**12),
    ],
)
def test_binary_integers_worked_bytes(kind: str, hexbytes: str, expected: int) -> None:
    """Binary integers are big-endian two's complement, JSON integers."""
    assert one(Column("B", kind), hexbytes) == expected


def test_binary_with_scale_is_an_exact_decimal_string() -> None:
    """INTEGER with NUMERIC_SCALE 2 (DDS B with decimals) applies the scale."""
    assert one(Column("B", "INTEGER", 9, 2), "000004D2") == "12.34"
    assert one(Column("B", "INTEGER", 9, 2), "FFFFFFFB") == "-0.05"


def test_real_and_double_worked_bytes() -> None:
    """REAL and DOUBLE are IEEE-754 big-endian."""
    assert one(Column("F", "FLOAT", 4), "3FC00000") == 1.5
    assert one(Column("F", "FLOAT", 8), "3FF8000000000000") == 1.5


def test_varchar_cafe_in_297_ignores_unused_bytes() -> None:
    """VARCHAR(10) 'Café' (297) = 00 04 C3 81 86 C0 + 6 unused bytes."""
    column = Column("V", "VARCHAR", 10, ccsid=297)
    assert one(column, "0004C38186C0" + "FFEEDDCCBBAA") == "Café"


def test_nvarchar_utf16_length_counts_characters() -> None:
    """NVARCHAR(5) 'é€' = 00 02 00 E9 20 AC + 6 unused bytes (length in chars)."""
    column = Column("N", "VARG", 5, ccsid=1200)
    assert one(column, "000200E920AC" + "FFFFFFFFFFFF") == "é€"


def test_graphic_utf16_loses_trailing_blanks() -> None:
    """GRAPHIC(3) in 13488 is UCS-2, blank padded like CHAR."""
    assert one(Column("G", "GRAPHIC", 3, ccsid=13488), "00E920AC0020") == "é€"


def test_char_loses_trailing_blanks_varchar_keeps_them() -> None:
    """CHAR drops trailing blanks; VARCHAR is text as stored."""
    assert one(Column("C", "CHAR", 4, ccsid=37), "C1C24040") == "AB"
    assert one(Column("V", "VARCHAR", 4, ccsid=37), "0003C1C240" + "40") == "AB "


# --- §4.3 dates and times ------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "hexbytes"),
    [
        ("ISO", "F2F0F2F460F0F360F1F5"),
        ("EUR", "F1F54BF0F34BF2F0F2F4"),
        ("MDY", "F0F361F1F561F2F4"),
        ("JUL", "F2F461F0F7F5"),
        ("USA", "F0F361F1F561F2F0F2F4"),
        ("JIS", "F2F0F2F460F0F360F1F5"),
        ("DMY", "F1F561F0F361F2F4"),
        ("YMD", "F2F461F0F361F1F5"),
    ],
)
def test_date_formats_worked_bytes(fmt: str, hexbytes: str) -> None:
    """2024-03-15 in every DATFMT (NULL separator = the format's default)."""
    assert one(Column("D", "DATE", date_format=fmt), hexbytes) == "2024-03-15"


def test_date_separator_from_catalog_is_used() -> None:
    """DATSEP '-' on *DMY: 15-03-24."""
    column = Column("D", "DATE", date_format="DMY", date_separator="-")
    assert one(column, "F1F560F0F360F2F4") == "2024-03-15"


def test_two_digit_years_map_into_1940_2039() -> None:
    """jhc-systems/debezium-connector-ibmi PR #20: *MDY holds only 1940-2039."""
    column = Column("D", "DATE", date_format="MDY")
    assert one(column, "F1F261F3F161F3F9") == "2039-12-31"
    assert one(column, "F0F161F0F161F4F0") == "1940-01-01"


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("ISO", "13.45.30", "13:45:30"),
        ("EUR", "13.45.30", "13:45:30"),
        ("JIS", "13:45:30", "13:45:30"),
        ("HMS", "13:45:30", "13:45:30"),
        ("USA", "01:45 PM", "13:45:00"),
        ("USA", "12:10 AM", "00:10:00"),
    ],
)
def test_time_formats(fmt: str, text: str, expected: str) -> None:
    """TIME in *ISO (13.45.30 = F1 F3 4B F4 F5 4B F3 F0), *EUR, *JIS, *HMS, *USA."""
    column = Column("T", "TIME", time_format=fmt)
    assert one(column, text.encode("cp037").hex()) == expected


def test_iso_time_worked_bytes() -> None:
    """Domain brief §4.3: ISO time F1 F3 4B F4 F5 4B F3 F0 is 13:45:30."""
    assert one(Column("T", "TIME"), "F1F34BF4F54BF3F0") == "13:45:30"


@pytest.mark.parametrize(
    ("length", "text", "expected"),
    [
        (26, "2024-03-15-13.45.30.123456", "2024-03-15T13:45:30.123456"),
        (19, "2024-03-15-13.45.30", "2024-03-15T13:45:30.000000"),
        (23, "2024-03-15-13.45.30.120", "2024-03-15T13:45:30.120000"),
    ],
)
def test_timestamp_precisions(length: int, text: str, expected: str) -> None:
    """TIMESTAMP(p) occupies 19 + (p+1) bytes; JSON always has microseconds."""
    column = Column("S", "TIMESTMP", length)
    assert one(column, text.encode("cp037").hex()) == expected


# --- §7 public failure cases ---------------------------------------------------


def test_eur_date_with_null_separator_is_ten_bytes() -> None:
    """Popsink/debezium-connector-ibmi #11 (#13, PRs #15, #17): *EUR, NULL DATSEP."""
    dec = decoder(Column("D", "DATE", date_format="EUR"), Column("N", "INTEGER"))
    image = bytes.fromhex("F0F34BF1F24BF2F0F2F0" + "0000002A")
    assert dec.decode(image) == {"D": "2020-12-03", "N": 42}


def test_eur_date_sized_as_eight_bytes_fails_the_length_check() -> None:
    """Popsink #11: a date mis-sized by 2 bytes must not shift N silently."""
    wrong = decoder(Column("D", "DATE", date_format="MDY"), Column("N", "INTEGER"))
    image = bytes.fromhex("F0F34BF1F24BF2F0F2F0" + "0000002A")
    with pytest.raises(DecodeError) as caught:
        wrong.decode(image, position="QSQJRN0001:77")
    err = caught.value
    assert err.expected == "12 bytes, got 14"
    assert (err.field, err.offset, err.position) == (
        "(end of record)",
        12,
        "QSQJRN0001:77",
    )


def test_legacy_blank_packed_is_a_decode_error_for_now() -> None:
    """Popsink #52 (fix PR #63; #31): all-0x40 DECIMAL; our policy is a DecodeError.

    The brief suggests null + warning; the appliance parks it instead, so the
    row is visible in dead letters rather than silently nulled.
    """
    dec = decoder(Column("K", "CHAR", 2, ccsid=297), Column("P", "DECIMAL", 5, 2))
    with pytest.raises(DecodeError) as caught:
        dec.decode(bytes.fromhex("C1C2404040"))
    err = caught.value
    assert err.reason == "legacy blank packed decimal (all 0x40)"
    assert (err.field, err.offset, err.data) == ("P", 2, b"\x40\x40\x40")


def test_legacy_blank_zoned_is_a_decode_error() -> None:
    """Popsink #52: all-0x40 NUMERIC is refused the same way."""
    with pytest.raises(DecodeError, match="legacy blank zoned"):
        one(Column("Z", "NUMERIC", 3, 0), "404040")


@pytest.mark.parametrize("null_map", [b"\xf0\xf1", b"01", "01"])
def test_null_flagged_field_is_never_decoded(null_map: bytes | str) -> None:
    """Popsink #9 (PR #10), jhc PR #31: D flagged null holds blanks, not a date."""
    dec = decoder(
        Column("A", "CHAR", 1, ccsid=297),
        Column("D", "DATE", nullable=True),
    )
    image = bytes.fromhex("C1" + "40" * 10)
    assert dec.decode(image, null_map) == {"A": "A", "D": None}


def test_blank_null_map_means_no_nulls() -> None:
    """Domain brief §4.6: an empty or blank indicator string means no nulls."""
    dec = decoder(Column("A", "CHAR", 1, ccsid=37))
    assert dec.decode(b"\xc1", b"") == {"A": "A"}
    assert dec.decode(b"\xc1", " ") == {"A": "A"}


def test_minimized_indicator_nine_refuses_the_image() -> None:
    """Domain brief §1.4: '9' = not recorded; never take it as a full image."""
    dec = decoder(Column("A", "CHAR", 1, ccsid=37), Column("B", "CHAR", 1, ccsid=37))
    with pytest.raises(DecodeError, match="minimized") as caught:
        dec.decode(b"\xc1\xc2", b"09")
    assert (caught.value.field, caught.value.offset) == ("B", 1)


def test_null_map_of_wrong_length_is_refused() -> None:
    """Domain brief §4.8 rule 2: the null map has one indicator per field."""
    dec = decoder(Column("A", "CHAR", 1, ccsid=37))
    with pytest.raises(DecodeError, match="null map length"):
        dec.decode(b"\xc1", b"011")


def test_ccsid_37_tag_on_297_data_needs_an_override() -> None:
    """jhc-systems/debezium-connector-ibmi #40 (PR #46): mis-tagged 297 data."""
    column = Column("C", "CHAR", 4, ccsid=37)
    assert one(column, "C38186C0") == "Caf{"
    assert one(column, "C38186C0", overrides={"T.C": 297}) == "Café"
    assert one(column, "C38186C0", overrides={"t.*": 297}) == "Café"


def test_ccsid_65535_is_hex_unless_overridden() -> None:
    """tryggingamidstodin/node-jt400 #4: 65535 text is untranslated by default."""
    column = Column("C", "CHAR", 4, ccsid=65535)
    assert one(column, "C38186C0") == "C38186C0"
    assert one(column, "C38186C0", overrides={"T.C": 1147}) == "Café"


def test_euro_is_0x9f_in_1147_only() -> None:
    """Domain brief §5.3: 'Prix 12€' typed through 1147; 297 shows the currency sign."""
    hexbytes = "D79989A740F1F29F"
    assert one(Column("C", "CHAR", 8, ccsid=1147), hexbytes) == "Prix 12€"
    assert one(Column("C", "CHAR", 8, ccsid=297), hexbytes) == "Prix 12¤"


@pytest.mark.parametrize(
    ("hexbytes", "expected"), [("123B", "-123"), ("123A", "123"), ("123E", "123")]
)
def test_packed_sign_nibbles_b_and_d_are_negative(hexbytes: str, expected: str) -> None:
    """aws-samples/mainframe-data-utilities #8: sign B is negative like D."""
    assert one(Column("P", "DECIMAL", 3, 0), hexbytes) == expected


def test_packed_digit_sign_nibble_is_invalid() -> None:
    """aws-samples/mainframe-data-utilities #8: 12 37 has no valid sign."""
    with pytest.raises(DecodeError) as caught:
        one(Column("P", "DECIMAL", 3, 0), "1237")
    assert caught.value.reason == "invalid packed sign nibble"
    assert caught.value.expected == "sign nibble A-F"
    assert caught.value.data == b"\x12\x37"


@pytest.mark.parametrize(
    ("precision", "hexbytes", "expected"),
    [(1, "C4", "4"), (3, "F1F2D3", "-123"), (3, "F1F2C3", "123")],
)
def test_zoned_overpunch_sign(precision: int, hexbytes: str, expected: str) -> None:
    """AbsaOSS/cobrix #474 (PR #475) and #676: the last zone carries the sign."""
    assert one(Column("Z", "NUMERIC", precision, 0), hexbytes) == expected


def test_varchar_never_read_past_its_length() -> None:
    """AbsaOSS/cobrix #190 and #136: VARCHAR(10) 00 03 C1 C2 C3 FF... is 'ABC'."""
    column = Column("V", "VARCHAR", 10, ccsid=37)
    assert one(column, "0003C1C2C3" + "FF" * 7) == "ABC"


def test_upstream_cp037_reading_of_297_cafe() -> None:
    """Domain brief §0.7: 'Café' in 297 read as cp037 is 'Caf{'."""
    assert one(Column("C", "CHAR", 4, ccsid=297), "C38186C0") == "Café"
    assert one(Column("C", "CHAR", 4, ccsid=37), "C38186C0") == "Caf{"


# --- validation rules §4.8 -------------------------------------------------------


def test_short_image_names_the_first_cut_field() -> None:
    """Rule 1: the error names the field that would be cut, its offset and bytes."""
    dec = decoder(Column("K", "CHAR", 2, ccsid=37), Column("P", "DECIMAL", 5, 2))
    with pytest.raises(DecodeError) as caught:
        dec.decode(bytes.fromhex("C1C212"), position="QSQJRN0002:9")
    err = caught.value
    assert (err.field, err.offset, err.data) == ("P", 2, b"\x12")
    assert err.expected == "5 bytes, got 3"
    assert "position=QSQJRN0002:9" in str(err)


def test_varchar_length_above_maximum_is_refused() -> None:
    """Rule 3: a length prefix above the declared maximum is corruption."""
    with pytest.raises(DecodeError) as caught:
        one(Column("V", "VARCHAR", 3, ccsid=37), "0004C1C2C3")
    assert caught.value.expected == "length <= 3"


def test_packed_invalid_digit_nibble_is_refused() -> None:
    """Rule 4: digit nibbles are 0-9."""
    with pytest.raises(DecodeError, match="invalid packed digit nibble"):
        one(Column("P", "DECIMAL", 3, 0), "1A3F")


def test_zoned_invalid_zone_is_refused() -> None:
    """Rule 4: every zone but the last is F."""
    with pytest.raises(DecodeError, match="invalid zoned zone nibble"):
        one(Column("Z", "NUMERIC", 3, 0), "F140F3")


@pytest.mark.parametrize(
    ("fmt", "text"), [("ISO", "2024-02-30"), ("ISO", "2024/03/15"), ("JUL", "23/366")]
)
def test_dates_must_parse(fmt: str, text: str) -> None:
    """Rule 5: a date that does not parse in its DATFMT is refused."""
    column = Column("D", "DATE", date_format=fmt)
    with pytest.raises(DecodeError) as caught:
        one(column, text.encode("cp037").hex())
    assert caught.value.expected.startswith(f"*{fmt} date")


def test_unsupported_ccsid_is_refused_when_compiling() -> None:
    """A CCSID with no codec fails at compile time, naming the column."""
    with pytest.raises(DecodeError) as caught:
        decoder(Column("G", "GRAPHIC", 2, ccsid=835))
    assert caught.value.field == "G"


# --- speed -----------------------------------------------------------------------


def prix_layout_and_image() -> tuple[RecordDecoder, bytes]:
    columns = (
        Column("ARTNUM", "CHAR", 6, ccsid=1147),
        Column("MAGASIN", "CHAR", 4, ccsid=1147),
        Column("LIBELLE", "VARCHAR", 40, ccsid=1147),
        Column("PRIX", "DECIMAL", 9, 2),
        Column("QTE", "NUMERIC", 7, 0),
        Column("PROMO", "SMALLINT"),
        Column("DATEDEB", "DATE"),
        Column("MAJ", "TIMESTMP", 26),
    )
    image = (
        "000123".encode("cp1147")
        + "MQ01".encode("cp1147")
        + b"\x00\x0a"
        + "Café crème".ljust(40).encode("cp1147")
        + bytes.fromhex("000001299F")
        + bytes.fromhex("F0F0F0F0F1F2C3")
        + b"\x00\x01"
        + "2024-03-15".encode("cp037")
        + "2024-03-15-13.45.30.123456".encode("cp037")
    )
    return compile_layout(make_layout("MAG", "PRIX", columns)), image


def test_prix_like_record_decodes_fast() -> None:
    """A PRIX-like record decodes correctly and well above 20,000 records/s."""
    dec, image = prix_layout_and_image()
    assert dec.decode(image) == {
        "ARTNUM": "000123",
        "MAGASIN": "MQ01",
        "LIBELLE": "Café crème",
        "PRIX": "12.99",
        "QTE": "123",
        "PROMO": 1,
        "DATEDEB": "2024-03-15",
        "MAJ": "2024-03-15T13:45:30.123456",
    }
    count = 20_000
    started = time.perf_counter()
    for _ in range(count):
        dec.decode(image)
    rate = count / (time.perf_counter() - started)
    assert rate > 20_000, f"{rate:.0f} records/s"
