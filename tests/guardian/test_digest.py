"""The guardian's hashes equal PostgreSQL's for the same rows (guardian.md §2)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.guardian import digest

pytestmark = pytest.mark.integration

PG_ROW_HASH = (
    "SELECT ('x' || substr(md5(%(pk)s || E'\\n' || %(data)s::jsonb::text), 1, 16))"
    "::bit(64)::bigint, %(data)s::jsonb::text,"
    " ('x' || substr(md5(%(pk)s), 1, 16))::bit(64)::bigint"
)

# Text the relay can carry: anything but NUL (jsonb refuses it) and lone
# surrogates (not UTF-8).
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
)
CONTROL = st.text(st.characters(min_codepoint=1, max_codepoint=0x20), max_size=8)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-07, 1.5e300, -0.0, 0.0, 5e-324, 1e16, 123.456, -2.5e-5]),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    TEXT,
    CONTROL,
)
ROW = st.dictionaries(
    st.one_of(TEXT, st.sampled_from(["PRIX", "A", "é", "ZZ"])), SCALAR
)
KEY = st.dictionaries(
    st.sampled_from(["ARTNUM", "MAGASIN", "DATE_EFFET"]), st.one_of(TEXT, st.integers())
)


def pg_hashes(
    pg: psycopg.Connection[Any], key: dict[str, Any], data: dict[str, Any]
) -> tuple[int, str, int]:
    pk = digest.canonical_pk(key)
    row = pg.execute(PG_ROW_HASH, {"pk": pk, "data": json.dumps(data)}).fetchone()
    assert row is not None
    return int(row[0]), str(row[1]), int(row[2])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(key=KEY, data=ROW)
def test_row_and_key_hashes_equal_postgresql(
    pg: psycopg.Connection[Any], key: dict[str, Any], data: dict[str, Any]
) -> None:
    """jsonb text, row_hash and pk_hash agree with PostgreSQL for random rows."""
    want_row, want_text, want_pk = pg_hashes(pg, key, data)
    pk = digest.canonical_pk(key)
    assert digest.jsonb_text(data) == want_text
    assert digest.row_hash(pk, data) == want_row
    assert digest.pk_hash(pk) == want_pk


def test_numbers_print_as_numeric_does(pg: psycopg.Connection[Any]) -> None:
    """Floats in exponent form and decimals keep numeric's plain notation."""
    values = [1e-07, 1.5e300, -0.0, 1e16, 0.1, -3, 10**25, Decimal("12.50")]
    for value in values:
        number = str(value) if isinstance(value, Decimal) else json.dumps(value)
        text = '{"v": ' + number + "}"
        row = pg.execute("SELECT %s::jsonb::text", (text,)).fetchone()
        assert row is not None
        assert digest.jsonb_text({"v": value}) == row[0], value


def test_buckets_are_contiguous_signed_ranges_matching_prefixes() -> None:
    """Every hash falls in the bucket its prefix names, at every width."""
    hashes = [digest.pk_hash(digest.canonical_pk({"K": i})) for i in range(500)]
    for bits in (1, 4, 6, 13, 64):
        for value in hashes:
            low, high = digest.bucket_range(bits, digest.prefix_of(value, bits))
            assert low <= value <= high
    assert digest.bucket_range(0, 0) == (-(2**63), 2**63 - 1)


def test_bucket_sum_wraps_modulo_two_to_the_64() -> None:
    """The checksum is the count and the sum mod 2**64, as a decimal string."""
    assert digest.add_hashes([2**63 - 1, 2**63 - 1, 5]) == (3, str((2**64 + 3) % 2**64))
    assert digest.add_hashes([-1, 1]) == (2, "0")
