"""The pages: setup, login, account, overview, journal, outbox, dead letters,
guardian, actions (skip of an unusable journal entry included), audit.

Each action page only requests a command (:func:`request_command`) and says
that it was queued; the leg carries it out and the audit page shows the
outcome.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, session
from flask import url_for as url
from werkzeug.wrappers import Response as BaseResponse

from appliance import commands
from webui import forms, guardian, state
from webui.app import current_user, db, ext, start_session, text
from webui.security import MIN_PASSWORD, normal_password

logger = logging.getLogger(__name__)

bp = Blueprint("ui", __name__)


def _client() -> str:
    return request.remote_addr or "?"


@bp.route("/setup", methods=["GET", "POST"])
def setup() -> str | BaseResponse | tuple[str, int]:
    users = ext()["users"]
    if users.configured():  # refused once an account exists (app module doc)
        return redirect(url("ui.login"))
    limiter = ext()["limiter"]
    if request.method == "GET":
        return render_template("setup.html")
    delay = limiter.attempt(_client())
    if delay is None:
        return render_template("setup.html", error=text("login.blocked")), 429
    form = request.form
    if not ext()["setup_code"].check(form.get("code", "")):
        time.sleep(delay)
        logger.warning("setup refused reason=code client=%s", _client())
        return render_template("setup.html", error=text("setup.bad_code")), 401
    user = form.get("user", "").strip()[:40]
    password = form.get("password", "")
    if not user or len(password) < MIN_PASSWORD or password != form.get("confirm"):
        return render_template("setup.html", error=text("setup.bad_password")), 400
    tokens = users.create(user, password)
    if tokens is None:  # another setup form made the account meanwhile
        logger.warning("setup refused reason=configured client=%s", _client())
        return redirect(url("ui.login"))
    ext()["setup_code"].used()
    limiter.succeeded(_client())
    commands.audit(db(), user, "setup", "first technician account created")
    logger.info("technician account created")
    return render_template("setup_done.html", tokens=tokens)


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | BaseResponse | tuple[str, int]:
    users = ext()["users"]
    if not users.configured():
        return redirect(url("ui.setup"))
    if request.method == "GET":
        return render_template("login.html")
    limiter = ext()["limiter"]
    client = _client()
    delay = limiter.attempt(client)
    if delay is None:
        logger.warning("login refused reason=rate_limited client=%s", client)
        return render_template("login.html", error=text("login.blocked")), 429
    user = request.form.get("user", "")[:40]
    if not users.check(user, request.form.get("password", "")):
        time.sleep(delay)
        logger.warning("login failed client=%s", client)
        return render_template("login.html", error=text("login.bad")), 401
    limiter.succeeded(client)
    start_session(user)
    logger.info("login client=%s", client)
    return redirect(url("ui.overview"))


@bp.route("/logout", methods=["POST"])
def logout() -> BaseResponse:
    """End every session of the account: a copied cookie dies too."""
    ext()["users"].end_sessions(current_user())
    session.clear()
    return redirect(url("ui.login"))


@bp.route("/account", methods=["GET", "POST"])
def account() -> str | BaseResponse | tuple[str, int]:
    """Change the password; every other session of the account ends."""
    if request.method == "GET":
        return render_template("account.html")
    user, form = current_user(), request.form
    delay = ext()["limiter"].attempt(_client())
    if delay is None:
        return render_template("account.html", error=text("login.blocked")), 429
    if not ext()["users"].check(user, form.get("current", "")):
        time.sleep(delay)
        logger.warning("password change refused reason=password client=%s", _client())
        return render_template("account.html", error=text("login.bad")), 401
    ext()["limiter"].succeeded(_client())
    password = form.get("password", "")
    if len(password) < MIN_PASSWORD or password != form.get("confirm"):
        return render_template("account.html", error=text("setup.bad_password")), 400
    if normal_password(password) == normal_password(form.get("current", "")):
        # Breaker run 2: "changing" to the same password was taken.
        return render_template("account.html", error=text("account.same")), 400
    nonce = ext()["users"].set_password(user, password)
    session["nonce"] = nonce  # this session goes on; the others end
    commands.audit(db(), user, "password", "password changed, other sessions ended")
    flash(text("account.changed"), "info")
    return redirect(url("ui.account"))


@bp.route("/lang", methods=["POST"])
def switch_language() -> BaseResponse:
    session["lang"] = "en" if request.form.get("lang") == "en" else "fr"
    return redirect(url("ui.overview"))


def stalled_after() -> float:
    return float(ext()["settings"].webui.stalled_after_s)


@bp.route("/")
def overview() -> str:
    facts = state.overview(db(), ext()["rates"], stalled_after())
    skip = state.skip_args(state.bad_entry_row(db()))
    return render_template("overview.html", o=facts, skip=skip)


@bp.route("/journal")
def journal() -> str:
    return render_template("journal.html", j=state.journal(db()))


@bp.route("/outbox")
def outbox() -> str:
    box = state.outbox(db())
    return render_template(
        "outbox.html", b=box, chart=state.chart_svg(box["per_minute"])
    )


@bp.route("/dead-letters")
def dead_letters() -> str:
    return render_template("dead_letters.html", letters=state.dead_letters(db()))


@bp.route("/dead-letters/<int:letter_id>")
def dead_letter(letter_id: int) -> str:
    letter = state.dead_letter(db(), letter_id)
    if letter is None:
        abort(404)
    decoded: Any = None
    if letter["payload"]:
        try:
            decoded = json.loads(letter["payload"])
        except ValueError:
            decoded = None
    pretty = json.dumps(decoded, indent=2, ensure_ascii=False) if decoded else ""
    return render_template(
        "dead_letter.html",
        d=letter,
        decoded=pretty,
        retryable=str(letter["stage"]) in commands.KINDS["retry_dead_letter"],
    )


@bp.route(
    "/dead-letters/<int:letter_id>/<any(retry, discard):action>", methods=["POST"]
)
def dead_letter_action(letter_id: int, action: str) -> BaseResponse:
    """Queue a retry or discard in the letter's own leg.

    Every outcome is told in the page's language: a letter no longer parked,
    or of a stage that cannot carry the action out (a guardian letter is never
    retried), is refused here rather than with the command check's English.
    """
    letter = state.dead_letter(db(), letter_id)
    if letter is None:
        abort(404)
    stage, kind = str(letter["stage"]), f"{action}_dead_letter"
    if letter["state"] != "parked":
        flash(text("dead.not_parked", id=letter_id), "error")
    elif stage not in commands.KINDS[kind]:
        flash(text(_refusal(stage, action), stage=stage), "error")
    else:
        request_command(stage, kind, {"id": letter_id})
    return redirect(url("ui.dead_letter", letter_id=letter_id))


def _refusal(stage: str, action: str) -> str:
    """The message key of an action the letter's stage cannot carry out."""
    if action == "retry":
        return "dead.no_retry_control" if stage == "control" else "dead.no_retry"
    return "dead.no_action"


@bp.route("/actions")
def actions() -> str:
    legs = state.legs(db(), stalled_after())
    tables = ext()["settings"].ibmi.tables
    return render_template("actions.html", legs=legs, tables=tables)


@bp.route("/actions/resend", methods=["POST"])
def resend() -> BaseResponse:
    args: dict[str, Any] = {}
    table = request.form.get("table", "")
    try:
        if table:
            args["table"] = forms.table_name(table)
        form = request.form
        args |= forms.time_range(form.get("since", ""), form.get("until", ""))
        commands.resend_args(args)
    except (ValueError, commands.CommandError) as exc:
        flash(text("act.bad", detail=str(exc)[:200]), "error")
        return redirect(url("ui.actions"))
    request_command("enricher", "resend", args)
    return redirect(url("ui.actions"))


@bp.route("/actions/<any(pause, resume):kind>/<leg>", methods=["POST"])
def pause_resume(kind: str, leg: str) -> BaseResponse:
    if leg not in commands.LEGS:
        abort(404)
    request_command(leg, kind, {})
    return redirect(url("ui.actions"))


@bp.route("/actions/rewind", methods=["GET", "POST"])
def rewind() -> str | BaseResponse:
    """GET: what a rewind to ?sequence=N will send again; POST: queue it."""
    bookmark = state.journal(db())["bookmark"]
    try:
        sequence = int(request.values.get("sequence", ""))
    except ValueError:
        sequence = 0
    if bookmark is None or not 0 < sequence <= int(bookmark["sequence"]):
        flash(text("act.bad", detail=f"sequence {sequence}"), "error")
        return redirect(url("ui.actions"))
    if request.method == "POST":
        args = {"receiver": bookmark["receiver_name"], "sequence": sequence}
        request_command("miner", "rewind", args)
        return redirect(url("ui.actions"))
    plan = {
        "start": sequence,
        "end": bookmark["sequence"],
        "receiver": bookmark["receiver_name"],
        "count": int(bookmark["sequence"]) - sequence + 1,
    }
    return render_template("rewind.html", plan=plan)


@bp.route("/actions/skip-entry", methods=["GET", "POST"])
def skip_entry() -> str | BaseResponse:
    """GET: what skipping the alarm's journal entry does; POST: queue it.

    The command's arguments are the alarm's as stored at the POST, never the
    form's: the form carries back only the name of the entry confirmed
    (:func:`webui.state.skip_key`), and an alarm that cleared or now names
    another entry is refused with nothing queued. The miner checks the alarm
    once more when it carries the command out.
    """
    stored = state.bad_entry_row(db())
    alarm = state.bad_entry(stored)
    args = state.skip_args(stored)
    if alarm is None or args is None:
        gone = "skip.gone" if request.method == "POST" else "skip.no_alarm"
        flash(text(gone if alarm is None else "skip.cli_only"), "error")
        return redirect(url("ui.overview"))
    if request.method == "POST":
        # The entry AND the fault confirmed: the same entry unusable for
        # another column is another decision.
        named = _entry_words(args)
        if request.form.get("entry", "") != state.skip_key(args):
            flash(text("skip.changed", named=named), "error")
            return redirect(url("ui.overview"))
        if request.form.get("field", "") != alarm.facts["field"]:
            field = alarm.facts["field"]
            flash(text("skip.changed_fault", named=named, field=field), "error")
            return redirect(url("ui.overview"))
        # Queued or a twin still pending: the audit log shows the command
        # and, once the miner has carried it out, its answer.
        request_command("miner", "skip_entry", args)
        return redirect(url("ui.audit"))
    return render_template(
        "skip_entry.html",
        facts=alarm.facts,
        entry=_entry_words(args),
        key=state.skip_key(args),
    )


def _entry_words(args: dict[str, Any]) -> str:
    """The entry of ``skip_entry`` arguments in the page's language."""
    if "sequence" in args:
        return text("skip.name_sequence", **args)
    return text("skip.name_null", receiver=args["receiver"], after=args["null_after"])


@bp.route("/guardian")
def guardian_page() -> str:
    facts = guardian.guardian(db())
    configured = list(ext()["settings"].ibmi.tables)
    seen = [str(r.get("table_name")) for r in facts["runs"]]
    tables = sorted(set(configured) | {t for t in seen if t})
    return render_template("guardian.html", g=facts, tables=tables)


@bp.route("/guardian/<any(check, load):kind>", methods=["GET", "POST"])
def guardian_action(kind: str) -> str | BaseResponse:
    """GET: what the command will do, to confirm; POST: queue it (leg control)."""
    try:
        args = forms.guardian_args(kind, request.values)
    except commands.CommandError as exc:
        flash(text("act.bad", detail=str(exc)[:200]), "error")
        return redirect(url("ui.guardian_page"))
    if request.method == "POST":
        request_command("control", kind, args)
        return redirect(url("ui.guardian_page"))
    return render_template("guardian_confirm.html", kind=kind, args=args)


@bp.route("/audit")
def audit() -> str:
    return render_template("audit.html", rows=state.audit(db()))


def request_command(leg: str, kind: str, args: dict[str, Any]) -> int | None:
    """Queue a command as the current user (unless the same one is still
    pending: :func:`appliance.commands.request_once`); flash the outcome."""
    try:
        command_id, created = commands.request_once(
            db(), leg, kind, args, current_user()
        )
    except (commands.CommandError, ValueError) as exc:
        flash(text("act.bad", detail=str(exc)[:200]), "error")
        return None
    if not created:
        flash(text("act.twin", id=command_id), "error")
        return None
    flash(text("act.queued", id=command_id), "info")
    return command_id
