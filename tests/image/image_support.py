"""Drive a booted image: an nspawn container (nsenter) or a qemu VM (serial).

Every wait is bounded; every process started here is ended by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("IMAGE_OUT", REPO / ".cache" / "image"))


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


def _end(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# What a container cannot have: the kernel's audit and nftables belong to the
# host, and with only loopback "network online" would wait its full timeout.
# The qemu boot tests cover these three.
CONTAINER_MASKS = (
    "auditd.service",
    "nftables.service",
    "systemd-networkd-wait-online.service",
)
# A container sharing the host's network must not manage it: no networkd, no
# time sync or package timers reaching out (everything stays on loopback).
SHARED_NETWORK_MASKS = (
    *CONTAINER_MASKS,
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-network-generator.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)


class Container:
    """``systemd-nspawn -b`` of the tree, private network, volatile overlay.

    ``--volatile=overlay`` keeps the built tree untouched: every boot starts
    from the image as flashed (empty machine-id, no keys, no secrets).
    """

    def __init__(
        self,
        tree: Path,
        log: Path,
        *,
        private_network: bool = True,
        volatile: bool = True,
        name: str = "",
        masks: Sequence[str] = CONTAINER_MASKS,
    ) -> None:
        """``private_network=False`` shares the host's network namespace (the
        fleet test: each box's sshd and page on its own loopback port);
        ``volatile=False`` boots ``tree`` as it is, writes included (the
        caller gives each box its own copy or overlay mount)."""
        self.tree = tree
        self.log = log
        self.private_network = private_network
        self.volatile = volatile
        self.name = name or f"appliance-test-{os.getpid()}"
        self.masks = tuple(masks)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's systemd, as seen from here

    def boot(self, timeout: float = 180) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--keep-unit",
                    "--register=no",
                    "--quiet",
                    *(["--private-network"] if self.private_network else []),
                    *(["--volatile=overlay"] if self.volatile else []),
                    f"--machine={self.name}",
                    "-D",
                    str(self.tree),
                    "-b",
                    *(f"systemd.mask={unit}" for unit in self.masks),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for("container systemd", self._find_init, 30)
        wait_for("boot finished", self._booted, timeout)

    def _find_init(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nspawn exited: {self.log.read_text()[-2000:]}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        if pids:
            self.pid = int(pids[0])
        return bool(pids)

    def _booted(self) -> bool:
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        return state in {"running", "degraded"}

    def run(
        self,
        *argv: str,
        check: bool = True,
        stdin: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces, as root)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout

    def poweroff(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.pid:
            self.run("systemctl", "poweroff", check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        _end(self.proc, 10)


class Vm:
    """qemu (TCG) booting the disk image under OVMF, serial console to a file.

    User-mode network with ``restrict=on`` (the guest reaches nothing) and two
    forwards bound to 127.0.0.1 only: SSH, and a probe port that the image's
    firewall does not open, and the web page's port.
    """

    def __init__(
        self,
        disk: Path,
        workdir: Path,
        *,
        secure_boot: bool,
        ssh_port: int,
        probe: int,
        webui: int,
    ) -> None:
        self.disk = disk
        self.workdir = workdir
        self.secure_boot = secure_boot
        self.ssh_port = ssh_port
        self.probe = probe
        self.webui = webui
        self.serial = workdir / ("serial-sb.log" if secure_boot else "serial.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ovmf = Path("/usr/share/OVMF")
        if self.secure_boot:
            code, vars_ = "OVMF_CODE_4M.snakeoil.fd", "OVMF_VARS_4M.snakeoil.fd"
        else:
            code, vars_ = "OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"
        own_vars = self.workdir / f"vars-{self.secure_boot}-{self.disk.stem}.fd"
        shutil.copyfile(ovmf / vars_, own_vars)
        forwards = (
            f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
            f"hostfwd=tcp:127.0.0.1:{self.probe}-:9999,"
            f"hostfwd=tcp:127.0.0.1:{self.webui}-:8443"
        )
        argv = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "q35,smm=on" if self.secure_boot else "q35",
            "-smp",
            "2",
            "-m",
            "2048",
            "-nographic",
            "-no-reboot",
            "-nic",
            f"user,restrict=on,model=virtio-net-pci,{forwards}",
            "-serial",
            f"file:{self.serial}",
            "-monitor",
            "none",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf / code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={own_vars}",
            "-drive",
            f"if=virtio,format=raw,file={self.disk},snapshot=on",
        ]
        if self.secure_boot:
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        self.serial.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )

    def console(self) -> str:
        if not self.serial.exists():
            return ""
        raw = self.serial.read_bytes().decode("utf-8", "replace")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)

    def wait_console(self, pattern: str, timeout: float) -> str:
        """Wait for ``pattern`` on the serial console; the console so far."""

        def seen() -> bool:
            assert self.proc is not None
            return (
                bool(re.search(pattern, self.console())) or self.proc.poll() is not None
            )

        wait_for(f"console {pattern!r}", seen, timeout)
        return self.console()

    def ssh(
        self, key: Path, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ssh",
                "-i",
                str(key),
                "-p",
                str(self.ssh_port),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
                "root@127.0.0.1",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def stop(self) -> None:
        if self.proc is not None:
            _end(self.proc, 20)
