"""What both Ansible tests need: the controller venv, the locked dependency
wheels (downloaded once) and one way to run a playbook."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
VENV = Path(os.environ.get("APPLIANCE_ANSIBLE_VENV", REPO / ".cache" / "ansible-venv"))
DEPS_CACHE = REPO / ".cache" / "ansible-test" / "deps"


@dataclass
class Run:
    """One ansible-playbook run: exit status, output, wall start and duration."""

    rc: int
    out: str
    started: float
    seconds: float


def locked_wheels() -> Path:
    """The wheels of image/requirements.lock (hash-checked), fetched once."""
    DEPS_CACHE.mkdir(parents=True, exist_ok=True)
    lock = REPO / "image" / "requirements.lock"
    wanted = sum(1 for line in lock.read_text().splitlines() if "==" in line)
    if len(list(DEPS_CACHE.glob("*.whl"))) < wanted:
        subprocess.run(
            [
                REPO / ".venv/bin/pip",
                "download",
                "-q",
                "--no-deps",
                "--require-hashes",
                "--dest",
                DEPS_CACHE,
                "-r",
                lock,
            ],
            check=True,
        )
    return DEPS_CACHE


def run_playbook(
    work: Path,
    inv: Path,
    password_file: Path,
    name: str,
    *extra: str,
    env: dict[str, str] | None = None,
    tail: int = 6000,
) -> Run:
    """``ansible-playbook`` of ``ansible/<name>`` with the fleet inventory."""
    full_env = os.environ | {
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOG_PATH": str(work / f"{name}.log"),
        "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
        **(env or {}),
    }
    started, clock = time.time(), time.monotonic()
    done = subprocess.run(
        [
            VENV / "bin/ansible-playbook",
            "-i",
            inv / "hosts.yml",
            "--vault-password-file",
            password_file,
            ANSIBLE_DIR / name,
            *extra,
        ],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=ANSIBLE_DIR,
        check=False,
    )
    seconds = time.monotonic() - clock
    sys.stdout.write(f"--- {name}: rc={done.returncode} in {seconds:.1f} s\n")
    sys.stdout.write(done.stdout[-tail:])
    sys.stderr.write(done.stderr[-3000:])
    return Run(done.returncode, done.stdout + done.stderr, started, seconds)
