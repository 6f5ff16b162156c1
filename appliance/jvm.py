"""The one JVM of a process (JPype can start it only once per process).

Every user of Java (the enricher's BeanShell and Rhino, the emulator's JT400
encoder) calls :func:`ensure_started`; the class path is the union of all of
them, decided at first start.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import jpype

logger = logging.getLogger(__name__)

DEBIAN_JARS = (
    Path("/usr/share/java/bsh.jar"),
    Path("/usr/share/java/rhino.jar"),
    Path("/usr/share/java/jt400.jar"),
)
_lock = threading.Lock()


def ensure_started(extra: tuple[Path, ...] | list[Path] = ()) -> None:
    """Start the JVM with the Debian jars (and ``extra``) unless it runs."""
    with _lock:
        if jpype.isJVMStarted():
            return
        jars = [str(p) for p in (*DEBIAN_JARS, *extra) if p.exists()]
        # -Xrs: the JVM must not take SIGTERM/SIGINT from Python, or a leg
        # dies with 143 instead of stopping between two steps.
        # Strings stay Java strings until asked for: fewer hidden copies.
        # Memory (issue 9, docs/benchmarks.md): the default collector sizes
        # its young generation from the machine's RAM and the enricher's RSS
        # grew to ~225 MB at full rate; the serial collector with a 16 MB
        # young generation and the C1 compiler only (the scripts are short:
        # C2 bought no CPU) keeps it near 115 MB with the same CPU per change.
        jpype.startJVM(
            "-Xms24m",
            "-Xmx256m",
            "-Xmn16m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:ReservedCodeCacheSize=32m",
            "-Xss512k",
            "-Xrs",
            classpath=jars,
            convertStrings=False,
        )
        logger.info("jvm started jars=%d", len(jars))
