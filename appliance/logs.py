"""Logging set-up: journald with structured fields under systemd, else stderr.

Level policy (CONTRIBUTING.md): ERROR = data lost or an operator must act;
WARNING = unexpected, recovered, nothing lost; INFO = lifecycle; DEBUG never
per record.
"""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str, leg: str) -> None:
    """Route the root logger to journald (when started by systemd) or stderr."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    handler: logging.Handler
    # The journal stamps every line itself: under systemd a line carries no
    # time of its own, or `journalctl` would show two.
    stamp = "%(asctime)s "
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        stamp = ""
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER=f"appliance-{leg}")
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(stamp + "%(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    # librdkafka and py4j-style chatter stays out unless asked for.
    logging.getLogger("confluent_kafka").setLevel(max(logging.WARNING, root.level))
