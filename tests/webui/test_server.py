"""The HTTPS loop: a silent client cannot stall the page or its watchdog."""

from __future__ import annotations

import socket
import ssl
import threading
import urllib.request
from pathlib import Path

import pytest
from webui_support import settings_for

from appliance import daemon, store
from webui import server


def test_an_idle_connection_does_not_block_other_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a breaker run: one idle TCP connection froze every request.

    The TLS handshake now runs in the request thread under its timeout, so the
    accept loop keeps serving (and pinging the watchdog).
    """
    settings = settings_for(tmp_path)
    settings = settings.model_copy(
        update={"webui": settings.webui.model_copy(update={"port": _free_port()})}
    )
    store.connect(settings.pipeline.db_path).close()
    httpd = server.build_server(settings)
    stopper = daemon.Stopper()
    thread = threading.Thread(target=server.serve, args=(httpd, stopper))
    thread.start()
    idle = socket.create_connection(("127.0.0.1", settings.webui.port))
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{settings.webui.port}/static/style.css"
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            assert answer.status == 200
    finally:
        idle.close()
        stopper.event.set()
        thread.join(10)
    assert not thread.is_alive()
    capsys.readouterr()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
