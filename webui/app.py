"""The Flask application: factory, login, CSRF, security headers.

Invariants:

- Every endpoint needs a live logged-in session, except ``PUBLIC`` (the login and
  setup forms, the stylesheet); the API and /metrics also take a bearer
  token (``api``: everything under /api/v1; ``metrics``: /metrics only).
- While no technician account exists, every page (the login form too) sends
  the browser to the setup form; once one exists, the setup form is refused
  (it sends to the login form and creates nothing).
- A session is live while (1) its cookie is younger than ``SESSION_HOURS``
  since the last request (idle timeout, checked by the cookie's signed
  time), (2) it began less than ``webui.session_max_h`` ago (absolute
  lifetime: activity does not extend it), and (3) it carries its account's
  current session nonce (:class:`webui.security.Users`), which logout and a
  password change replace: a cookie copied before either is dead after it.
- Templates print every value through :func:`webui.display.visible`: no raw
  control or bidi character from store data reaches the page.
- Every POST from a session carries the session's CSRF token, as the form
  field ``csrf_token`` or the ``X-CSRF-Token`` header; a bearer-token call
  carries no cookie, so it needs none.
- The page writes nothing to the pipeline but command requests (with their
  audit rows): see :mod:`appliance.commands`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    request,
    session,
    url_for,
)
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from appliance import commands, store
from appliance.config import BoxSettings
from webui import i18n, security
from webui.display import visible
from webui.state import Rates

logger = logging.getLogger(__name__)

PUBLIC = frozenset({"ui.login", "ui.setup", "static"})
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
    " frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
SESSION_HOURS = 8


def create_app(settings: BoxSettings, *, login_delay_s: float = 0.5) -> Flask:
    """The web page on ``settings`` (state dir prepared, setup code issued)."""
    web = settings.webui
    state_dir = Path(web.state_dir)
    security.prepare_dir(state_dir)
    app = Flask(__name__)
    # An id past 64 bits cannot name a row: "not found", not a 500.
    app.register_error_handler(OverflowError, lambda _exc: ("not found", 404))
    app.config.update(
        SECRET_KEY=security.session_key(state_dir),
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="__Host-appliance",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=SESSION_HOURS),
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    users = security.Users(state_dir)
    setup_code = security.SetupCode(state_dir)
    if not users.configured():
        setup_code.issue()
    ext: dict[str, Any] = {
        "settings": settings,
        "users": users,
        "setup_code": setup_code,
        "limiter": security.LoginLimiter(web.login_failures, login_delay_s),
        "rates": Rates(),
    }
    app.extensions["appliance"] = ext
    conn = store.connect(settings.pipeline.db_path)
    commands.ensure_schema(conn)
    conn.close()

    from webui import api, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.before_request(_guard)
    app.after_request(_headers)
    app.teardown_appcontext(_close_db)
    app.jinja_env.globals.update(_=text, csrf_token=csrf_token, lang=language)
    app.jinja_env.filters["when"] = _when
    app.jinja_env.finalize = _finalize
    return app


def ext() -> dict[str, Any]:
    found: dict[str, Any] = current_app.extensions["appliance"]
    return found


def db() -> sqlite3.Connection:
    """This request's connection to the pipeline database."""
    if "db" not in g:
        path = ext()["settings"].pipeline.db_path
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=10000")
        g.db = conn
    return g.db  # type: ignore[no-any-return]


def _close_db(exc: BaseException | None) -> None:
    del exc
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def language() -> str:
    lang = session.get("lang") or ext()["settings"].webui.language
    return lang if lang in i18n.LANGUAGES else "fr"


def text(key: str, **values: object) -> str:
    return i18n.translate(language(), key, **values)


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def current_user() -> str:
    """Who acts: the session's user, or 'api-token'."""
    return str(g.get("user") or "")


def _bearer_role() -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    role: str | None = ext()["users"].token_role(header[7:].strip())
    return role


def _guard() -> BaseResponse | None:
    """Login on every endpoint; CSRF on every session POST (module doc)."""
    endpoint = request.endpoint or ""
    if endpoint in PUBLIC:
        if request.method == "POST":
            _check_csrf()
        return None
    is_api = endpoint.startswith("api.")
    role = _bearer_role() if is_api else None
    if role is not None:
        if role == "metrics" and endpoint != "api.metrics":
            abort(403)
        g.user = f"token:{role}"
        return None
    user = session.get("user")
    if user and not _session_live(str(user)):
        session.clear()
        user = None
    if not user:
        if is_api or request.method != "GET":
            abort(401)
        # A fresh box has no account to log in to: straight to the setup.
        first = "ui.login" if ext()["users"].configured() else "ui.setup"
        return redirect(url_for(first))
    g.user = user
    if request.method == "POST":
        _check_csrf()
    return None


def start_session(user: str) -> None:
    """A new session for ``user`` (no fixation: nothing of the old one but
    the language)."""
    lang = session.get("lang")
    session.clear()
    session.permanent = True
    session["user"] = user
    session["nonce"] = ext()["users"].session_nonce(user)
    session["since"] = time.time()
    if lang:
        session["lang"] = lang


def _session_live(user: str) -> bool:
    """Absolute lifetime and server-side nonce (module doc, points 2 and 3)."""
    max_s = float(ext()["settings"].webui.session_max_h) * 3600
    try:
        since = float(session.get("since", 0))
    except (TypeError, ValueError):
        since = 0.0
    if not 0 <= time.time() - since < max_s:
        logger.info("session ended reason=lifetime")
        return False
    if not ext()["users"].session_valid(user, str(session.get("nonce", ""))):
        logger.info("session ended reason=nonce")
        return False
    return True


def _check_csrf() -> None:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token", "")
    expected = session.get("csrf", "")
    # As bytes: compare_digest refuses a str with non-ASCII characters
    # (TypeError, a 500), and a forged token may hold any.
    if not expected or not sent:
        logger.warning("form refused reason=csrf endpoint=%s", request.endpoint)
        abort(400, description="csrf")
    if not hmac.compare_digest(str(expected).encode(), sent.encode("utf-8", "replace")):
        logger.warning("form refused reason=csrf endpoint=%s", request.endpoint)
        abort(400, description="csrf")


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Strict-Transport-Security"] = "max-age=31536000"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: browsers then keep our own Referer.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _finalize(value: Any) -> Any:
    """Every printed value: store text made visible (module doc)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible(value)
    return value


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    try:
        at = dt.datetime.fromtimestamp(value, tz=dt.UTC)
    except (OverflowError, ValueError, OSError):
        # A time no calendar holds (1e20, NaN) is shown as stored (breaker run 2).
        return str(value)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")
