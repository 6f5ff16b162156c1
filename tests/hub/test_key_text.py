"""``odh.key_text`` is ``canonical_pk``'s text on every key, only cheaper.

The stored ``pk`` keeps the standard library's spelling (docs/guardian.md
section 2); the fast path writes it with orjson only for keys of strings and
integers, where the two agree character for character.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from appliance.hub import odh

_CHARS = [chr(c) for c in range(0x80)] + [
    "\u00e9",
    "\u0100",
    "\u2028",
    "\ufeff",
    "\uffff",
    "\U00010000",
    "\U0001f600",
]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 6)))


def test_random_keys_of_strings_and_integers_spell_as_canonical_pk() -> None:
    """Escapes, non-ASCII, names out of order, 64-bit bounds: the same text."""
    rng = random.Random(9)
    bounds = [-(2**63), 2**63 - 1, 2**64 - 1, 0, -1]
    for _ in range(20_000):
        key: dict[str, Any] = {}
        for _ in range(rng.randint(1, 4)):
            value = _text(rng) if rng.random() < 0.6 else rng.choice(bounds)
            key[_text(rng)] = value
        assert odh.key_text(key) == odh.canonical_pk(key)


@pytest.mark.parametrize(
    "key",
    [
        {"A": 1.5e-7},  # orjson writes 1.5e-7, the standard library 1.5e-07
        {"A": True, "B": None},
        {"A": {"Z": 1, "B": [1, "x"]}},
        {"A": 2**64},  # beyond 64 bits: orjson refuses it
        {"A": -(2**63) - 1},
        {"A": "\ud800"},  # a lone surrogate
        {"Z": "Crème", "A": 10**18},
    ],
    ids=[
        "float",
        "bool-null",
        "nested",
        "u64-plus-1",
        "i64-minus-1",
        "surrogate",
        "mix",
    ],
)
def test_other_keys_take_the_standard_library_itself(key: dict[str, Any]) -> None:
    assert odh.key_text(key) == odh.canonical_pk(key)
