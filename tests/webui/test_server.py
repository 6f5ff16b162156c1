"""The HTTPS loop: a silent client cannot stall the page or its watchdog."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import urllib.error
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


def test_logs_name_the_path_only_and_the_server_header_names_no_software(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Breaker run: a refused ``?token=`` was logged whole, and the Server
    header said Werkzeug/3.x Python/3.11."""
    caplog.set_level(logging.INFO)
    settings = settings_for(tmp_path)
    settings = settings.model_copy(
        update={"webui": settings.webui.model_copy(update={"port": _free_port()})}
    )
    store.connect(settings.pipeline.db_path).close()
    httpd = server.build_server(settings)
    stopper = daemon.Stopper()
    thread = threading.Thread(target=server.serve, args=(httpd, stopper))
    thread.start()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    base = f"https://127.0.0.1:{settings.webui.port}"
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                base + "/api/v1/state?token=SECRET-IN-QUERY",
                context=context,
                timeout=30,
            )
        assert refused.value.code == 401
        server_header = refused.value.headers["Server"]
        refused.value.close()
        raw = socket.create_connection(("127.0.0.1", settings.webui.port))
        with context.wrap_socket(raw) as tls:
            # Two words, not GET: http.server logs "Bad request syntax (line)".
            tls.sendall(b"POST /x?token=SECRET-IN-BAD-LINE\r\n\r\n")
            assert b"400" in tls.recv(4096)
    finally:
        stopper.event.set()
        thread.join(10)
    assert not thread.is_alive()
    assert server_header == server.SERVER_NAME
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/v1/state" in logged
    assert "SECRET" not in logged
    assert "SECRET" not in capsys.readouterr().err


def test_one_address_cannot_hold_every_connection(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Breaker run 2: 1,200 slowloris connections (a byte every 20 s) each
    held a thread, past systemd's default 1,024 open files. One address now
    gets ``MAX_PER_CLIENT`` connections at once; more are closed at accept,
    and a slot is free again once its connection ends."""
    monkeypatch.setattr(server, "MAX_PER_CLIENT", 2)
    settings = settings_for(tmp_path)
    settings = settings.model_copy(
        update={"webui": settings.webui.model_copy(update={"port": _free_port()})}
    )
    store.connect(settings.pipeline.db_path).close()
    httpd = server.build_server(settings)
    stopper = daemon.Stopper()
    thread = threading.Thread(target=server.serve, args=(httpd, stopper))
    thread.start()
    address = ("127.0.0.1", settings.webui.port)
    idle = [socket.create_connection(address) for _ in range(2)]
    try:
        extra = socket.create_connection(address, timeout=20)
        with extra:
            try:
                closed = extra.recv(1) == b""
            except ConnectionResetError:
                closed = True
        assert closed
        for sock in idle:
            sock.close()
        idle = []
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        url = f"https://{address[0]}:{address[1]}/static/style.css"
        status = 0
        for _ in range(60):  # the idle connections' threads end on their own
            try:
                with urllib.request.urlopen(url, context=context, timeout=20) as answer:
                    status = answer.status
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert status == 200
    finally:
        for sock in idle:
            sock.close()
        stopper.event.set()
        thread.join(10)
    assert not thread.is_alive()
    capsys.readouterr()
