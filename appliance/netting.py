"""A commit cycle's row events reduced to their net effect per table and key.

Worked through for one key in one cycle (first before image against last
after image):

    PT k=57 (after A)  ... DR k=57              -> nothing (never existed)
    UB/UP k=12 (B->C)  ... BR/UR k=12 (C->B)    -> nothing (before == after)
    DL k=9 (before D)  ... PX k=9 (after D)     -> nothing
    UB/UP k=5 (E->F)   ... UB/UP k=5 (F->G)     -> one 'u' E->G, made by the 2nd UP

So rollbacks (C RB) and savepoint rollbacks (compensations, then C CM) need
no special case. The version of a change is the raw id of the entry that
made its final image.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from appliance import jsontext

Event = dict[str, Any]


def canonical(value: Any) -> str:
    """Compact JSON with sorted keys: the one spelling of a key or an image."""
    return jsontext.canonical(value)


def net_effect(events: Iterable[Event]) -> list[Event]:
    """Reduce a cycle's row events to one change per (table, key), in order.

    An event has ``kind`` (insert, update, delete), ``table``, ``key``,
    ``before``, ``after``, ``raw_id``. The result's ``op`` is c, u or d.
    """
    states: dict[str, dict[str, Any]] = {}
    for event in events:
        ident = event["table"] + "\0" + canonical(event["key"])
        state = states.get(ident)
        if state is None:
            state = states[ident] = {
                "existed": event["kind"] != "insert",
                "before": event["before"],
                "before_errors": errors_of(event, "before"),
            }
        if state["before"] is None and event["kind"] == "delete":
            state["before"] = event["before"]
            state["before_errors"] = errors_of(event, "before")
        state["exists"] = event["kind"] != "delete"
        state["after"] = event["after"] if state["exists"] else None
        state["last"] = event
    changes = [c for c in map(_final_change, states.values()) if c is not None]
    return sorted(changes, key=lambda change: change["raw_id"])


def _final_change(state: dict[str, Any]) -> Event | None:
    existed, exists = state["existed"], state["exists"]
    if not existed and not exists:
        return None
    if existed and exists and state["before"] == state["after"]:
        return None
    op = "u" if existed and exists else ("c" if exists else "d")
    last = state["last"]
    errors = state["before_errors"] if existed else []
    if exists:
        errors = errors + errors_of(last, "after")
    return {
        **last,
        "op": op,
        "before": state["before"] if existed else None,
        "after": state["after"],
        "errors": errors,
    }


def errors_of(event: Event, image: str) -> list[dict[str, Any]]:
    return [e for e in event.get("errors", []) if e.get("image") == image]


def row_event(
    base: dict[str, Any],
    kind: str,
    key: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    errors: list[dict[str, Any]] | None = None,
) -> Event:
    """A row event of one entry (``kind`` insert, update or delete)."""
    return {
        **base,
        "kind": kind,
        "key": key,
        "before": before,
        "after": after,
        "errors": errors or [],
    }


def tagged(errors: list[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    """Field errors marked with the image they belong to ('before'/'after')."""
    return [{**error, "image": image} for error in errors]


def with_errors(change: Event) -> dict[str, Any]:
    """The change's ``source``, with ``errors`` added when a field failed."""
    errors = change.get("errors")
    if not errors:
        return dict(change["source"])
    return {**change["source"], "errors": errors}
