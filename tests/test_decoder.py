"""Decoder: worked bytes of domain brief §4.2/§4.3, public failure cases of §7."""

from __future__ import annotations

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


def test_legacy_blank_packed_is_null_and_reported_as_blank() -> None:
    """Popsink #52 (fix PR #63; #31): all-0x40 DECIMAL -> {K:'AB', P:null} + blank."""
    dec = decoder(Column("K", "CHAR", 2, ccsid=297), Column("P", "DECIMAL", 5, 2))
    decoded = dec.decode_record(bytes.fromhex("C1C2404040"))
    assert decoded.values == {"K": "AB", "P": None}
    assert decoded.blanks == ["P"]
    assert decoded.errors == []


def test_legacy_blank_zoned_is_null_and_reported_as_blank() -> None:
    """Popsink #52: all-0x40 NUMERIC is a blank numeric too, not an exception."""
    dec = decoder(Column("Z", "NUMERIC", 3, 0))
    decoded = dec.decode_record(bytes.fromhex("404040"))
    assert (decoded.values, decoded.blanks) == ({"Z": None}, ["Z"])


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


@pytest.mark.parametrize("null_map", [b"09", "09", b"\xf0\xf9"])
def test_minimized_indicator_nine_refuses_the_image(null_map: bytes | str) -> None:
    """Domain brief §1.4: '9' = not recorded (text or EBCDIC); never a full image."""
    dec = decoder(Column("A", "CHAR", 1, ccsid=37), Column("B", "CHAR", 1, ccsid=37))
    with pytest.raises(DecodeError, match="minimized") as caught:
        dec.decode_record(b"\xc1\xc2", null_map)
    assert (caught.value.field, caught.value.offset) == ("B", 1)
    assert caught.value.expected == "full images (journal MINENTDTA *NONE)"


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
    assert caught.value.reason == "invalid packed sign nibble 7"
    assert caught.value.expected == "sign A-F"
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


def test_prix_like_record_decodes_the_same_every_time() -> None:
    """A PRIX-like record decodes right, and a compiled decoder keeps no state.

    Its speed is measured by the benchmark, not asserted here.
    """
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
    first = dec.decode(image)
    assert all(dec.decode(image) == first for _ in range(1000))


# --- field-level errors (§4.8 rule 6) --------------------------------------------


def test_bad_field_is_null_with_an_error_and_the_row_survives() -> None:
    """Popsink #31: an invalid nibble nulls one field; the others are decoded."""
    dec = decoder(
        Column("K", "CHAR", 2, ccsid=297),
        Column("P", "DECIMAL", 3, 0),
        Column("D", "DATE"),
    )
    image = bytes.fromhex("C1C2" + "1237") + "2024-02-30".encode("cp037")
    decoded = dec.decode_record(image, position="QSQJRN0001:5")
    assert decoded.values == {"K": "AB", "P": None, "D": None}
    assert decoded.errors == [
        {
            "field": "P",
            "offset": 2,
            "bytes_hex": "1237",
            "reason": "invalid packed sign nibble 7",
            "expected": "sign A-F",
        },
        {
            "field": "D",
            "offset": 4,
            "bytes_hex": "F2F0F2F460F0F260F3F0",
            "reason": "impossible date",
            "expected": "*ISO date YYYY-MM-DD",
        },
    ]


def test_invalid_utf8_in_a_1208_column_is_a_field_error() -> None:
    """CHAR CCSID 1208 is UTF-8; a broken sequence is a field error, not a crash."""
    dec = decoder(Column("U", "CHAR", 4, ccsid=1208))
    decoded = dec.decode_record(b"ab\xc3\x28")
    assert decoded.values == {"U": None}
    assert decoded.errors[0]["reason"] == "invalid utf-8 at byte 2"


def test_nul_in_a_text_field_is_a_field_error_keeping_its_bytes() -> None:
    """x'00' (RPG *LOVAL) reads as U+0000, which the ODH refuses: a field error.

    CHAR and VARCHAR in an EBCDIC page, CHAR in UTF-8 and GRAPHIC in UTF-16:
    each field is null, its error names offset and bytes; the row survives,
    and a FOR BIT DATA field (hex) holding x'00' is a plain value.
    """
    dec = decoder(
        Column("K", "CHAR", 2, ccsid=297),
        Column("C", "CHAR", 4, ccsid=297),
        Column("V", "VARCHAR", 3, ccsid=1147),
        Column("U", "CHAR", 2, ccsid=1208),
        Column("G", "GRAPHIC", 2, ccsid=1200),
        Column("B", "CHAR", 2, ccsid=65535),
    )
    image = bytes.fromhex(
        "C1C2" + "C100C240" + "0002C10040" + "6100" + "00410000" + "0000"
    )
    decoded = dec.decode_record(image, position="QSQJRN0001:5")
    assert decoded.values == {
        "K": "AB",
        "C": None,
        "V": None,
        "U": None,
        "G": None,
        "B": "0000",
    }
    expected = "text without x'00' (the ODH cannot store U+0000)"
    assert decoded.errors == [
        {
            "field": "C",
            "offset": 2,
            "bytes_hex": "C100C240",
            "reason": "NUL character (U+0000) at character 1",
            "expected": expected,
        },
        {
            "field": "V",
            "offset": 6,
            "bytes_hex": "0002C10040",
            "reason": "NUL character (U+0000) at character 1",
            "expected": expected,
        },
        {
            "field": "U",
            "offset": 11,
            "bytes_hex": "6100",
            "reason": "NUL character (U+0000) at character 1",
            "expected": expected,
        },
        {
            "field": "G",
            "offset": 13,
            "bytes_hex": "00410000",
            "reason": "NUL character (U+0000) at character 1",
            "expected": expected,
        },
    ]
    # Refusals are never remembered: the same bytes are refused again.
    assert dec.decode_record(image).errors == decoded.errors


def test_utf8_char_1208_is_blank_padded_with_0x20() -> None:
    """CHAR(6) CCSID 1208 'Café' = 43 61 66 C3 A9 20."""
    assert one(Column("U", "CHAR", 6, ccsid=1208), "436166C3A920") == "Café"


# --- every sign nibble, -0, scales ------------------------------------------------


@pytest.mark.parametrize(
    ("sign", "negative"),
    [("A", False), ("C", False), ("E", False), ("F", False), ("B", True), ("D", True)],
)
def test_every_valid_packed_and_zoned_sign(sign: str, negative: bool) -> None:
    """§4.2: A C E F positive, B D negative, for packed and zoned alike."""
    expected = "-12.3" if negative else "12.3"
    assert one(Column("P", "DECIMAL", 3, 1), f"123{sign}") == expected
    assert one(Column("Z", "NUMERIC", 3, 1), f"F1F2{sign}3") == expected


@pytest.mark.parametrize("sign", "BD")
def test_negative_zero_is_normalised(sign: str) -> None:
    """§4.2: -0 in packed, zoned and scaled forms reads '0' / '0.00'."""
    assert one(Column("P", "DECIMAL", 5, 2), f"00000{sign}") == "0.00"
    assert one(Column("Z", "NUMERIC", 3, 0), f"F0F0{sign}0") == "0"


@pytest.mark.parametrize(
    ("kind", "scale", "hexbytes", "expected"),
    [
        ("SMALLINT", 1, "FFFF", "-0.1"),
        ("INTEGER", 4, "7FFFFFFF", "214748.3647"),
        ("BIGINT", 18, "8000000000000000", "-9.223372036854775808"),
    ],
)
def test_binary_integers_with_a_scale(
    kind: str, scale: int, hexbytes: str, expected: str
) -> None:
    """§4.2: DDS B fields with decimals are integer x 10^-scale, exact strings."""
    assert one(Column("B", kind, 0, scale), hexbytes) == expected


# --- floats, binary strings, timestamps, separators, hidden ------------------------


def test_real_is_the_shortest_decimal_of_its_32_bits() -> None:
    """REAL 0.1 (3D CC CC CD) is the JSON number 0.1, not 0.10000000149011612."""
    assert one(Column("F", "FLOAT", 4), "3DCCCCCD") == 0.1
    assert one(Column("F", "FLOAT", 4), "7F7FFFFF") == 3.4028235e38
    assert one(Column("F", "FLOAT", 8), "3FB999999999999A") == 0.1


def test_nan_is_a_field_error() -> None:
    """JSON has no NaN: a NaN REAL is a field error carried in the event."""
    decoded = decoder(Column("F", "FLOAT", 4)).decode_record(bytes.fromhex("7FC00000"))
    assert decoded.values == {"F": None}
    assert decoded.errors[0]["reason"] == "non-finite float"


def test_binary_varbinary_and_for_bit_data_are_hex() -> None:
    """BINARY(3), VARBINARY(4) and CHAR FOR BIT DATA are upper-case hex strings."""
    assert one(Column("B", "BINARY", 3), "00FF10") == "00FF10"
    assert one(Column("V", "VARBIN", 4), "0002ABCD" + "EEEE") == "ABCD"
    assert one(Column("C", "CHAR", 2, ccsid=65535), "C140") == "C140"


@pytest.mark.parametrize("precision", range(13))
def test_timestamp_of_every_precision(precision: int) -> None:
    """TIMESTAMP(0..12): 19 + (p+1) bytes; 6 digits up to p=6, all p digits above."""
    digits = "123456789012"[:precision]
    text = "2024-03-15-13.45.30" + (f".{digits}" if precision else "")
    column = Column("S", "TIMESTMP", 19 if precision == 0 else 20 + precision)
    expected = "2024-03-15T13:45:30." + digits.ljust(6, "0")
    assert one(column, text.encode("cp037").hex()) == expected


@pytest.mark.parametrize("separator", ["/", "-", ".", ",", " "])
@pytest.mark.parametrize(
    ("fmt", "template"),
    [("MDY", "03?15?24"), ("DMY", "15?03?24"), ("YMD", "24?03?15"), ("JUL", "24?075")],
)
def test_two_digit_date_formats_with_every_separator(
    fmt: str, template: str, separator: str
) -> None:
    """§4.3: DATSEP / - . , and blank for the formats that accept one."""
    column = Column("D", "DATE", date_format=fmt, date_separator=separator)
    text = template.replace("?", separator)
    assert one(column, text.encode("cp037").hex()) == "2024-03-15"


@pytest.mark.parametrize("separator", [":", ".", ",", " "])
def test_hms_time_with_every_separator(separator: str) -> None:
    """§4.3: *HMS time takes TIMSEP : . , or blank."""
    column = Column("T", "TIME", time_format="HMS", time_separator=separator)
    text = f"23{separator}59{separator}58"
    assert one(column, text.encode("cp037").hex()) == "23:59:58"


def test_time_24_00_00_is_the_end_of_day() -> None:
    """DB2 accepts 24.00.00 as a TIME; it is kept, 24.00.01 is impossible."""
    assert one(Column("T", "TIME"), "24.00.00".encode("cp037").hex()) == "24:00:00"
    decoded = decoder(Column("T", "TIME")).decode_record("24.00.01".encode("cp037"))
    assert decoded.errors[0]["reason"] == "impossible time"


def test_hidden_column_is_decoded_and_flagged() -> None:
    """§4.1: an IMPLICITLY HIDDEN column is in the image; decoded, then flagged."""
    dec = decoder(
        Column("A", "CHAR", 1, ccsid=37),
        Column("ROWCHG", "TIMESTMP", 26, hidden=True),
    )
    image = b"\xc1" + "2024-03-15-13.45.30.000001".encode("cp037")
    assert dec.decode(image) == {"A": "A", "ROWCHG": "2024-03-15T13:45:30.000001"}
    assert dec.hidden == ("ROWCHG",)


def test_ebcdic_nel_and_ccsid_273_macron_follow_ibm() -> None:
    """IBM's tables: 0x15 is NEL (U+0085) in 297, 0xBC is U+00AF in 273."""
    assert one(Column("C", "CHAR", 2, ccsid=297), "1525") == "\x85\n"
    assert one(Column("C", "CHAR", 1, ccsid=273), "BC") == "\xaf"


def test_date_range_ends_are_proleptic_gregorian() -> None:
    """DB2 dates run 0001-01-01 to 9999-12-31 (the oracle stops at 1600)."""
    column = Column("D", "DATE")
    assert one(column, "0001-01-01".encode("cp037").hex()) == "0001-01-01"
    assert one(column, "9999-12-31".encode("cp037").hex()) == "9999-12-31"
    eur = Column("D", "DATE", date_format="EUR")
    assert one(eur, "29.02.1600".encode("cp037").hex()) == "1600-02-29"
