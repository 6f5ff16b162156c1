"""The JSON API under /api/v1 and the Prometheus text at /metrics.

Same facts and actions as the pages. Authenticated like the pages (session,
with ``X-CSRF-Token`` on POST) or by a bearer token: the ``api`` token for
everything here, the read-only ``metrics`` token for /metrics alone.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from appliance import commands
from webui import forms, guardian, state
from webui.app import current_user, db, ext
from webui.display import label_value

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


def _stalled() -> float:
    return float(ext()["settings"].webui.stalled_after_s)


@bp.route("/api/v1/state")
def api_state() -> Response:
    return jsonify(state.overview(db(), ext()["rates"], _stalled()))


@bp.route("/api/v1/journal")
def api_journal() -> Response:
    return jsonify(state.journal(db()))


@bp.route("/api/v1/outbox")
def api_outbox() -> Response:
    return jsonify(state.outbox(db()))


@bp.route("/api/v1/dead-letters")
def api_dead_letters() -> Response:
    return jsonify(state.dead_letters(db()))


@bp.route("/api/v1/dead-letters/<int:letter_id>")
def api_dead_letter(letter_id: int) -> Response:
    letter = state.dead_letter(db(), letter_id)
    if letter is None:
        abort(404)
    return jsonify(letter)


@bp.route("/api/v1/guardian")
def api_guardian() -> Response:
    return jsonify(guardian.guardian(db()))


@bp.route("/api/v1/audit")
def api_audit() -> Response:
    return jsonify(state.audit(db()))


@bp.route("/api/v1/commands", methods=["GET", "POST"])
def api_commands() -> tuple[Response, int] | Response:
    if request.method == "GET":
        rows = db().execute(
            "SELECT id, leg, kind, args, requested_by, requested_at, state, result,"
            " done_at FROM commands ORDER BY id DESC LIMIT 200"
        )
        return jsonify([dict(r) for r in rows])
    body: Any = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error="expected a JSON object {leg, kind, args}"), 400
    args = body.get("args") or {}
    try:
        if not isinstance(args, dict):
            raise commands.CommandError("args must be an object")
        args = forms.table_args(args)
        if body.get("kind") == "resend":
            args = commands.resend_args(args)
        elif body.get("kind") in ("check", "load"):
            args = forms.guardian_args(str(body["kind"]), args)
        leg, kind = str(body.get("leg", "")), str(body.get("kind", ""))
        command_id, created = commands.request_once(
            db(), leg, kind, args, current_user()
        )
    except (commands.CommandError, ValueError) as exc:
        return jsonify(error=str(exc)[:300]), 400
    if not created:  # the same command still waits: no second copy
        return jsonify(error="the same command is already pending", id=command_id), 409
    return jsonify(id=command_id, state="pending"), 202


@bp.route("/api/v1/commands/<int:command_id>")
def api_command(command_id: int) -> Response:
    row = db().execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
    if row is None:
        abort(404)
    return jsonify(dict(row))


@bp.route("/metrics")
def metrics() -> Response:
    facts = state.overview(db(), ext()["rates"], _stalled())
    lines = [
        "# HELP appliance_counter Relay counters (entries, changes, messages...).",
        "# TYPE appliance_counter counter",
    ]
    for name, value in sorted(facts["counters"].items()):
        lines.append(f'appliance_counter{{name="{label_value(name)}"}} {value}')
    lines += [
        "# HELP appliance_leg_up 1 when the leg's heartbeat is fresh and running.",
        "# TYPE appliance_leg_up gauge",
    ]
    for leg in facts["legs"]:
        up = 1 if leg["state"] == "running" else 0
        lines.append(f'appliance_leg_up{{leg="{label_value(leg["leg"])}"}} {up}')
    gauges = {
        "appliance_lag_entries": facts["lag_entries"],
        "appliance_lag_seconds": facts["lag_s"],
        "appliance_outbox_unconfirmed": facts["unconfirmed"],
        "appliance_dead_letters_parked": facts["dead_letters"],
        "appliance_alarms": len(facts["alarms"]),
    }
    for name, value in gauges.items():
        lines += [f"# TYPE {name} gauge", f"{name} {value}"]
    lines += _guardian_metrics(guardian.guardian(db()))
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


def _guardian_metrics(facts: dict[str, Any]) -> list[str]:
    """The guardian's last run per table (docs/webui.md, API)."""
    lines = [
        "# HELP appliance_guardian_up 1 once the guardian has made its records.",
        "# TYPE appliance_guardian_up gauge",
        f"appliance_guardian_up {int(facts['running'])}",
    ]
    names = {f: f for f in guardian.FIGURES} | {
        "failed": "failed",
        "duration_s": "duration_seconds",
        "finished_at": "finished_timestamp_seconds",
    }
    for figure, suffix in names.items():
        name = "appliance_guardian_last_run_" + suffix
        lines.append(f"# TYPE {name} gauge")
        shown: set[str] = set()
        for run in facts["runs"]:
            value = run.get(figure)
            if isinstance(value, bool):
                value = int(value)
            table = label_value(run.get("table_name") or "")
            # Two stored names can escape alike ("A<ESC>", "A\\x1b"): a series
            # twice would fail the whole scrape (breaker run 2), so once only.
            if isinstance(value, (int, float)) and table not in shown:
                shown.add(table)
                lines.append(f'{name}{{table="{table}"}} {value}')
    return lines
