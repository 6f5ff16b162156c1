"""jsontext: orjson's speed with the standard library's meaning."""

from __future__ import annotations

import json
import math

import pytest

from appliance import jsontext


def test_canonical_spells_what_the_standard_library_spells() -> None:
    value = {
        "b": [1, -2, "é€\u2028", None, True],
        "a": {"z": '\x01"\\', "y": 123456789012345678},
        "PRIX": "12.50",
    }
    expected = json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    assert jsontext.canonical(value) == expected
    assert jsontext.compact(value) == json.dumps(
        value, ensure_ascii=False, separators=(",", ":")
    )


def test_integers_beyond_64_bits_are_written_and_read_exactly() -> None:
    big = 2**70 + 1
    assert jsontext.canonical({"n": big}) == f'{{"n":{big}}}'
    assert jsontext.loads(f'{{"n":{big}}}') == {"n": big}
    assert jsontext.loads(f"[{-(2**64)}]") == [-(2**64)]


def test_keys_that_are_not_strings_are_written_as_the_standard_library_does() -> None:
    assert jsontext.canonical({2: "x", 1: "y"}) == '{"1":"y","2":"x"}'


def test_nan_text_is_still_read_and_bad_text_raises_value_error() -> None:
    assert math.isnan(jsontext.loads('{"x":NaN}')["x"])
    with pytest.raises(ValueError):
        jsontext.loads(b'{"x":')
    with pytest.raises(ValueError):
        jsontext.loads("not json")


def test_floats_read_back_to_the_same_number() -> None:
    for value in (0.1, 1.5e-7, 3.4028235e38, -0.0, 1e16):
        assert jsontext.loads(jsontext.compact([value])) == [value]


def test_lone_surrogates_are_escaped_and_nan_can_be_refused() -> None:
    value = jsontext.loads(b'{"x":"\\ud800"}')
    assert value == {"x": "\ud800"}
    assert jsontext.compact(value) == '{"x":"\\ud800"}'
    assert jsontext.canonical(value).encode() == b'{"x":"\\ud800"}'
    assert jsontext.loads('{"x":"\ud800"}') == {"x": "\ud800"}
    with pytest.raises(ValueError, match="NaN is not JSON"):
        jsontext.loads(b'{"x":NaN}', allow_nan=False)


def test_a_number_beyond_a_double_is_refused_when_nan_is() -> None:
    """1e400 would read as infinity and be written as null: refused instead."""
    with pytest.raises(ValueError, match="beyond a double"):
        jsontext.loads(b'{"PRIX":1e400}', allow_nan=False)
    assert math.isinf(jsontext.loads(b"[1e400]")[0])  # the default reads it
