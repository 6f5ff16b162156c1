"""The loopback fault proxy, with real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from appliance.faults.proxy import FaultProxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Echo:
    """A TCP server that records what it gets and sends it back."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    self.received += data
                    conn.sendall(data)
            except OSError:
                return  # the proxy aborted the connection: that is the test


@pytest.fixture
def rig() -> Iterator[tuple[FaultProxy, Echo]]:
    echo = Echo()
    proxy = FaultProxy(free_port(), echo.port)
    proxy.start()
    yield proxy, echo
    proxy.stop()
    echo.sock.close()


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=2)
    sock.settimeout(1.0)
    return sock


def test_pass_mode_forwards_both_ways(rig: tuple[FaultProxy, Echo]) -> None:
    """Bytes reach the backend and its replies come back."""
    proxy, _ = rig
    with connect(proxy) as sock:
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"


def test_mute_down_delivers_but_drops_the_replies(
    rig: tuple[FaultProxy, Echo],
) -> None:
    """One-way loss: the backend gets the request, the client never the answer."""
    proxy, echo = rig
    with connect(proxy) as sock:
        proxy.set_mode("mute_down")
        sock.sendall(b"produce")
        with pytest.raises(TimeoutError):
            sock.recv(16)
    assert bytes(echo.received) == b"produce"
    assert proxy.dropped_bytes == len(b"produce")
    assert proxy.muted_up_bytes == len(b"produce")


def test_cut_closes_open_and_new_connections_until_restored(
    rig: tuple[FaultProxy, Echo],
) -> None:
    """While cut nothing gets through; after pass a new connection works."""
    proxy, _ = rig
    with connect(proxy) as sock:
        proxy.set_mode("cut")
        try:
            sock.sendall(b"x")
            got = sock.recv(16)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        assert got == b""
    with connect(proxy) as sock:
        try:
            got = sock.recv(16)
        except ConnectionResetError:
            got = b""
        assert got == b""
    proxy.set_mode("pass")
    with connect(proxy) as sock:
        sock.sendall(b"back")
        assert sock.recv(16) == b"back"
