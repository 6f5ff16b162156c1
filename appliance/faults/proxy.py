"""A TCP fault proxy on loopback: the network between the shipper and Kafka.

The broker's PROXIED listener advertises the proxy's port
(``scripts/services.py set_kafka_proxy``), so a client bootstrapped through
the proxy keeps every connection on it. The proxy runs an asyncio loop in a
thread of the harness and has three modes:

- ``pass``: bytes flow both ways;
- ``cut``: every open connection is closed and new ones are closed at once
  (the link is down);
- ``mute_down``: client -> broker bytes still flow but broker -> client
  bytes are thrown away: produce requests reach the broker (the hub applies
  them) while their acknowledgements and the confirmations never come back.
  Leaving this mode closes every connection, since the streams lost bytes.

Invariant: the proxy binds 127.0.0.1 only and forwards only to the one
loopback backend port it was given.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Literal

logger = logging.getLogger(__name__)

Mode = Literal["pass", "cut", "mute_down"]
LOOPBACK = "127.0.0.1"
_CHUNK = 65536


class FaultProxy:
    """Forward ``127.0.0.1:listen_port`` to ``127.0.0.1:backend_port``."""

    def __init__(self, listen_port: int, backend_port: int) -> None:
        self.listen_port = listen_port
        self.backend_port = backend_port
        self.mode: Mode = "pass"
        self.connections = 0
        self.dropped_bytes = 0
        self.muted_up_bytes = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="proxy")
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start listening (in a daemon thread); bounded wait for the bind."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("fault proxy did not start")

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; leaving ``pass`` or ``mute_down`` resets the streams."""
        previous, self.mode = self.mode, mode
        logger.info("proxy mode from=%s to=%s", previous, mode)
        if mode == "cut" or previous == "mute_down":
            self._loop.call_soon_threadsafe(self._close_all)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close everything and end the thread (bounded)."""
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(timeout_s)

    # -- the loop ------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, LOOPBACK, self.listen_port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(
                asyncio.gather(*tasks, return_exceptions=True)
            )
            self._loop.run_until_complete(self._server.wait_closed())
        finally:
            self._loop.close()

    def _shutdown(self) -> None:
        self._close_all()
        if self._server is not None:
            self._server.close()
        self._loop.stop()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        if self.mode == "cut":
            client_w.transport.abort()
            return
        try:
            broker_r, broker_w = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.backend_port), 5.0
            )
        except (OSError, TimeoutError):
            client_w.transport.abort()
            return
        self.connections += 1
        self._writers |= {client_w, broker_w}
        await asyncio.gather(
            self._pump(client_r, broker_w, upstream=True),
            self._pump(broker_r, client_w, upstream=False),
        )
        self._writers -= {client_w, broker_w}

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if self.mode == "cut":
                    break
                if self.mode == "mute_down":
                    if not upstream:
                        self.dropped_bytes += len(data)
                        continue
                    self.muted_up_bytes += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()
