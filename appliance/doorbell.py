"""Doorbells: a leg that committed work for the next leg wakes it at once.

The box legs hand work to each other through the pipeline database and poll
it: an idle leg pauses between two looks (``daemon.run``: 5 ms after work,
doubling up to 200 ms). At a steady rate that pause is paid at every leg a
change goes through, and adds up to most of the latency from journal entry
to ODH row (docs/benchmarks.md). A doorbell is a Unix datagram socket per
leg: after a step that wrote work, the leg sends one byte to the next leg's
socket; an idle leg waits on its own socket with the pause as the timeout,
so it looks again as soon as the byte arrives.

A doorbell is only a hint. The database stays the only hand-over: a ring
that is lost (the next leg restarting, its socket missing, a full socket
buffer) costs one pause, as before, never data. Rings are never waited for
(non-blocking sends, errors ignored).

The sockets live in ``<pipeline directory>/wake/`` (mode 0700, same user as
the legs; a unit with ``PrivateNetwork=`` still reaches them, as a file). A
path too long for a socket address (deep test directories) falls back to a
Linux abstract name derived from the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_MAX_PATH = 100  # sun_path holds 108 bytes, the terminating NUL included


def address(directory: Path, leg: str) -> str:
    """The socket address of ``leg``'s doorbell for a pipeline directory."""
    path = str(directory / "wake" / leg)
    if len(path.encode()) <= _MAX_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:24]
    return f"\0appliance-wake-{digest}-{leg}"


class Doorbell:
    """One leg's socket (to be woken) and the addresses it rings."""

    def __init__(self, directory: Path, leg: str, rings: Sequence[str] = ()) -> None:
        self.directory = directory
        self.leg = leg
        self.own = address(directory, leg)
        self.targets = [address(directory, name) for name in rings]
        self._listen: socket.socket | None = None
        self._send: socket.socket | None = None

    def open(self) -> None:
        """Bind the leg's socket (replacing one a dead process left)."""
        listen = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if not self.own.startswith("\0"):
                Path(self.own).parent.mkdir(mode=0o700, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.own)
            listen.bind(self.own)
        except OSError as exc:
            listen.close()
            logger.warning(
                "doorbell not bound, polling only stage=%s error=%s", self.leg, exc
            )
        else:
            listen.setblocking(False)
            self._listen = listen
        send = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        send.setblocking(False)
        self._send = send

    @property
    def bound(self) -> bool:
        """Whether rings can reach this leg (else it only polls)."""
        return self._listen is not None

    def ring(self) -> None:
        """Wake the legs after this one (never blocks, never fails)."""
        if self._send is None:
            return
        for target in self.targets:
            with contextlib.suppress(OSError):  # not listening, buffer full...
                self._send.sendto(b"\1", target)

    def interrupt(self) -> None:
        """Wake this leg itself (a stop request during a wait)."""
        if self._send is not None:
            with contextlib.suppress(OSError):
                self._send.sendto(b"\0", self.own)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a ring; True when one came."""
        if self._listen is None:
            return False
        try:
            ready, _, _ = select.select([self._listen], [], [], max(0.0, timeout_s))
        except (OSError, ValueError):  # closed under us: the leg is stopping
            return False
        if not ready:
            return False
        # Several rings while the leg worked are one reason to look again.
        while True:
            try:
                self._listen.recv(64)
            except (BlockingIOError, OSError):
                return True

    def close(self) -> None:
        """Close the sockets; the socket file stays (a ring to it fails
        quietly, and the next start of the leg replaces it), so a stopping
        process never removes the file a new one just bound."""
        for sock in (self._listen, self._send):
            if sock is not None:
                sock.close()
        self._listen = self._send = None
