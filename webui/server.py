"""Serve the page over TLS, one request loop that also pings systemd's watchdog.

``python -m webui.server [--config FILE]``: reads the box settings, makes the
certificate at first start (``webui.state_dir``), prints the setup code when
no technician exists yet, then serves HTTPS on ``webui.bind:webui.port``.

Invariants: the loop waits at most ``POLL_S`` for a request, so it pings the
watchdog (Type=notify) and notices SIGTERM within that bound; requests run in
threads (werkzeug's threaded server), each bounded by the socket timeout.
"""

from __future__ import annotations

import argparse
import logging
import socket
import ssl
from collections.abc import Sequence

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from appliance import config, daemon, logs
from appliance.errors import ConfigError
from webui.app import create_app
from webui.security import ensure_certificate

logger = logging.getLogger(__name__)

POLL_S = 1.0
REQUEST_TIMEOUT_S = 30


def build_server(settings: config.BoxSettings) -> BaseWSGIServer:
    """The HTTPS server of the page (certificate made if missing)."""
    web = settings.webui
    app = create_app(settings)
    names = [web.bind, socket.gethostname(), "localhost"]
    cert, key = ensure_certificate(web.state_dir, names)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    server = make_server(
        web.bind, web.port, app, threaded=True, request_handler=_Handler
    )
    # TLS is added here rather than by werkzeug so that the handshake runs in
    # the request's own thread, under its timeout: a client that connects and
    # says nothing must not hold the accept loop (and the watchdog) hostage.
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    server.ssl_context = context  # tells werkzeug the scheme is https
    server.timeout = POLL_S
    return server


class _Handler(WSGIRequestHandler):
    """Every connection, handshake included, is bounded by REQUEST_TIMEOUT_S."""

    timeout = REQUEST_TIMEOUT_S


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
