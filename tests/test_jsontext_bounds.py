"""Where ``jsontext.loads`` leaves orjson for the standard library.

orjson reads an integer outside [-2**63, 2**64 - 1] as a float; every other
integer it reads exactly, so only a run of 20 digits or a minus sign and 19
digits needs the slower reader. The relay's versions have 19 digits: they
must stay on the fast path.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance import jsontext


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the standard library was asked")


@pytest.mark.parametrize(
    "number",
    [2185718730000000041, 2**63 - 1, 9_999_999_999_999_999_999, -(10**18) + 1],
)
def test_integers_orjson_reads_exactly_stay_on_the_fast_path(
    number: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = json.dumps({"version": number, "after": {"EAN": "3757709513153"}})
    monkeypatch.setattr(jsontext.json, "loads", _refuse)
    got = jsontext.loads(text.encode(), allow_nan=False)
    assert got["version"] == number
    assert type(got["version"]) is int


@pytest.mark.parametrize(
    "number",
    [2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(10**19) + 1, 10**20, -(10**25)],
)
def test_integers_near_or_beyond_orjson_bounds_are_read_exactly(number: int) -> None:
    got = jsontext.loads(json.dumps([number]), allow_nan=False)
    assert got == [number]
    assert type(got[0]) is int


def test_a_long_digit_run_in_a_string_costs_the_slow_read_only() -> None:
    """20 digits in a barcode, 19 after a minus in text: same values either way."""
    for text in ('{"EAN": "12345678901234567890"}', '{"N": "-1234567890123456789"}'):
        assert jsontext.loads(text) == json.loads(text)
