"""What store data may look like once shown: no raw control characters.

Store data (table names, dead-letter reasons, decoded fields, heartbeat
texts) is not ours: it can carry NUL, ESC, C1 controls or the bidirectional
overrides (U+202E...) that reorder what the technician reads. Every value a
template prints goes through :func:`visible` (the Jinja ``finalize`` hook),
and every Prometheus label through :func:`label_value`.
"""

from __future__ import annotations

import logging
import unicodedata

logger = logging.getLogger(__name__)

# Categories never shown raw: controls, format characters (bidi overrides,
# zero-width ones), line/paragraph separators, lone surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# A pretty-printed JSON block keeps its lines and indents.
_KEPT = frozenset("\n\t")


def _escape(char: str) -> str:
    return ascii(char)[1:-1]  # '\x1b', '\u202e', '\U000e0001'


def visible(text: str) -> str:
    """``text`` with each hidden character written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(
        _escape(c) if c not in _KEPT and unicodedata.category(c) in _HIDDEN else c
        for c in text
    )


def label_value(value: object) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped
    (the text exposition format), other hidden characters as in :func:`visible`.
    """
    text = visible(str(value))  # first: its escapes are then escaped again
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
