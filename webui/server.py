"""Serve the page over TLS, one request loop that also pings systemd's watchdog.

``python -m webui.server [--config FILE]``: reads the box settings, makes the
certificate at first start (``webui.state_dir``), prints the setup code when
no technician exists yet, then serves HTTPS on ``webui.bind:webui.port``.

Invariants: the loop waits at most ``POLL_S`` for a request, so it pings the
watchdog (Type=notify) and notices SIGTERM within that bound; requests run in
threads (werkzeug's threaded server), each bounded by the socket timeout.
At most ``MAX_PER_CLIENT`` connections of one address and ``MAX_CONNECTIONS``
in all are open at once; more are closed at accept (breaker run 2: 1,200
slowloris connections, each sending a byte every 20 s, held 1,200 threads,
past the 1,024 open files systemd gives a unit by default).
The access log names the path only (a query string may carry a token), and
the Server header names neither werkzeug nor Python.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from werkzeug.serving import BaseWSGIServer, ThreadedWSGIServer, WSGIRequestHandler

from appliance import config, daemon, logs
from appliance.errors import ConfigError
from webui.app import create_app
from webui.display import visible
from webui.security import ensure_certificate

logger = logging.getLogger(__name__)

POLL_S = 1.0
REQUEST_TIMEOUT_S = 30
SERVER_NAME = "appliance-webui"
MAX_CONNECTIONS = 200  # under systemd's default limit of 1,024 open files
MAX_PER_CLIENT = 16  # a browser opens about 6 per site
# A query string inside a logged request line (a bad one is logged whole).
_QUERY = re.compile(r"\?[^\s'\"]*")


def build_server(settings: config.BoxSettings) -> BaseWSGIServer:
    """The HTTPS server of the page (certificate made if missing)."""
    web = settings.webui
    app = create_app(settings)
    names = [web.bind, socket.gethostname(), "localhost"]
    cert, key = ensure_certificate(web.state_dir, names)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    server = _Server(web.bind, web.port, app, handler=_Handler)
    # TLS is added here rather than by werkzeug so that the handshake runs in
    # the request's own thread, under its timeout: a client that connects and
    # says nothing must not hold the accept loop (and the watchdog) hostage.
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    server.ssl_context = context  # tells werkzeug the scheme is https
    server.timeout = POLL_S
    return server


class _Server(ThreadedWSGIServer):
    """A thread per connection, but only so many connections (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: dict[Any, str] = {}
        self._open_lock = threading.Lock()
        self._refused = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        client = str(client_address[0] if client_address else "?")
        refused = 0
        with self._open_lock:
            mine = sum(1 for c in self._open.values() if c == client)
            full = len(self._open) >= MAX_CONNECTIONS or mine >= MAX_PER_CLIENT
            if full:
                self._refused += 1
                refused = self._refused
            else:
                self._open[request] = client
        if full and refused % 100 == 1:  # the first, then one line per 100
            logger.warning(
                "connection refused reason=too_many client=%s refused=%d",
                client,
                refused,
            )
        return not full

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)


class _Handler(WSGIRequestHandler):
    """Every connection, handshake included, is bounded by REQUEST_TIMEOUT_S;
    logs carry no query string; the Server header says only our name."""

    timeout = REQUEST_TIMEOUT_S

    @property
    def server_version(self) -> str:  # type: ignore[override]
        return SERVER_NAME

    def version_string(self) -> str:
        return SERVER_NAME

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # A refused "?token=..." was logged whole by werkzeug (breaker run).
        path = urlsplit(str(getattr(self, "path", "") or "")).path
        method = str(getattr(self, "command", "") or "-")
        self.log("info", '"%s %s" %s %s', method, visible(path), code, size)

    def log_error(self, format: str, *args: Any) -> None:
        # http.server puts a malformed request line, query and all, in args.
        kept = [_QUERY.sub("?", a) if isinstance(a, str) else a for a in args]
        self.log("error", format, *kept)


def serve(server: BaseWSGIServer, stopper: daemon.Stopper) -> None:
    """Handle requests until stopped, pinging the watchdog between them."""
    daemon.notify("READY=1\nSTATUS=serving")
    host, port = server.server_address[:2]
    logger.info("web page serving host=%s port=%s", host, port)
    try:
        while not stopper.stopping:
            # Returns after one request or POLL_S idle: either way, alive.
            server.handle_request()
            daemon.notify("WATCHDOG=1")
    finally:
        daemon.notify("STOPPING=1")
        server.server_close()
        logger.info("web page stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance-webui")
    parser.add_argument("--config", help="box settings file")
    args = parser.parse_args(argv)
    try:
        settings = config.load_box(
            config.config_path(args.config, config.DEFAULT_BOX_CONFIG)
        )
    except ConfigError as exc:
        print(exc)
        return 78
    logs.setup(settings.log_level, "webui")
    server = build_server(settings)
    stopper = daemon.Stopper()
    stopper.install()
    serve(server, stopper)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
