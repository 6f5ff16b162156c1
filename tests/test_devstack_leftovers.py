"""A second run of a dev stack first stops the legs a killed run left behind.

Newcomer report: a second `make demo` while the first one's legs still ran
deleted their pipeline and databases under them. Only processes whose
command line names this stack's settings file are signalled.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.devstack import Services, Stack

SLEEPER = "import sys, time; time.sleep(120)"


def test_leftover_legs_of_this_stack_are_stopped_others_left(tmp_path: Path) -> None:
    services = Services(
        pg_host="127.0.0.1",
        pg_port=1,
        pg_user="nobody",
        pg_password_file=tmp_path / "none",
        kafka_bootstrap="127.0.0.1:1",
    )
    stack = Stack(services, tmp_path / "stack", name="leftover")
    stack.workdir.mkdir()
    ours = subprocess.Popen([sys.executable, "-c", SLEEPER, str(stack.box_config)])
    other = subprocess.Popen([sys.executable, "-c", SLEEPER, "/elsewhere/box.toml"])
    try:
        (stack.workdir / "legs.pids").write_text(f"{ours.pid} {other.pid} 999999999")
        stack._stop_leftover_legs(timeout_s=10)
        assert ours.wait(10) == -15  # SIGTERM
        assert other.poll() is None
        assert not (stack.workdir / "legs.pids").exists()
    finally:
        for proc in (ours, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
