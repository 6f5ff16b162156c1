"""What a technician types, checked before it becomes a command.

Table names: IBM i system names only, ``[A-Z0-9_#@$]`` (ASCII; a leading
digit or underscore is not a system name), at most 30 characters like the
commands themselves allow. ``str.isidentifier`` let full-width letters
(U+FF30... for "PRIX") and other non-ASCII names through (breaker run); they are
refused here, wherever the page or the API takes a table name.

Times: ``since``/``until`` keep the time zone written in the value
(``2026-12-04T08:00+01:00``); a value without one is UTC, as the form says.
Mixing the two in one request is refused: it is almost always a mistake.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from appliance.commands import CommandError

logger = logging.getLogger(__name__)

_SYSTEM_NAME = re.compile(r"[A-Z#@$][A-Z0-9_#@$]{0,29}")
GUARDIAN_MODES = ("repair", "log")


def table_name(value: object) -> str:
    """``value`` as an upper-case system name, or CommandError."""
    text = value if isinstance(value, str) else ""
    name = text.strip().upper() if text.isascii() else ""
    if not _SYSTEM_NAME.fullmatch(name):
        shown = ascii(str(value)[:40])
        raise CommandError(
            f"table {shown} is not a system name: expected 1 to 30 of A-Z 0-9 _ # @ $"
        )
    return name


def table_args(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with its ``table`` (when given) checked and upper-cased."""
    if args.get("table") is None:
        return args
    return args | {"table": table_name(args["table"])}


def time_range(since: str, until: str) -> dict[str, float]:
    """Unix seconds of the form's ``since``/``until`` (module doc)."""
    parsed: dict[str, dt.datetime] = {}
    for name, value in (("since", since.strip()), ("until", until.strip())):
        if value:
            try:
                parsed[name] = dt.datetime.fromisoformat(value)
            except ValueError:
                raise CommandError(
                    f"{name} {value[:40]!a}: expected YYYY-MM-DD HH:MM"
                    " with an optional time zone (+01:00, Z)"
                ) from None
    zoned = {name for name, at in parsed.items() if at.tzinfo is not None}
    if zoned and len(zoned) != len(parsed):
        raise CommandError(
            "since and until: give a time zone to both or to neither (UTC)"
        )
    return {
        name: (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()
        for name, at in parsed.items()
    }


def guardian_args(kind: str, form: Any) -> dict[str, Any]:
    """Arguments of a guardian command from the page's form.

    ``check``: ``{"table"?: T, "mode"?: "repair"|"log"}``; ``load``:
    ``{"table": T}`` (docs/guardian.md §5).
    """
    args: dict[str, Any] = {}
    table = str(form.get("table", "") or "")
    if table:
        args["table"] = table_name(table)
    if kind == "load":
        if not table:
            raise CommandError("re-sending a table needs its name")
        return args
    mode = str(form.get("mode", "") or "")
    if mode:
        if mode not in GUARDIAN_MODES:
            raise CommandError(f"mode {mode[:20]!a}: expected repair or log")
        args["mode"] = mode
    return args
