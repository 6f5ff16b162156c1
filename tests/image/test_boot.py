"""Boot the disk image in qemu (TCG, UEFI) and check the box from outside.

The test image is the production build with two settings pointed at qemu's
user network: the management and store networks are qemu's 10.0.2.0/24 (the
guest sees forwarded connections from 10.0.2.2), and root's authorized key is
a key made for this test. Everything else is what a NUC gets.
"""

from __future__ import annotations

import http.client
import shlex
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_support import OUT, Vm, wait_for

# The VM reaches no IBM i and no Kafka: every leg must still be READY (the
# miner and the shipper retry their peer in their steps).
LEGS = ["miner", "transformer", "enricher", "shipper"]
UNITS = ["appliance.target", *(f"appliance-{leg}.service" for leg in LEGS)]
SECRETS = {"ibmi-password": "ibmi-boot-Secret", "kafka-password": "kafka-boot-Secret"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _boot(disk: Path, *, secure_boot: bool) -> Vm:
    vm = Vm(
        disk,
        OUT,
        secure_boot=secure_boot,
        ssh_port=_free_port(),
        probe=_free_port(),
        webui=_free_port(),
    )
    vm.start()
    return vm


def _all_active(vm: Vm, key: Path, units: list[str]) -> bool:
    # `systemctl is-active` exits 0 when any one is active: read every line.
    out = vm.ssh(key, "systemctl is-active " + " ".join(units), check=False)
    return out.stdout.split() == ["active"] * len(units)


def _webui_installed(vm: Vm, key: Path) -> bool:
    found = vm.ssh(key, "systemctl cat appliance-webui.service", check=False)
    return found.returncode == 0


def _provision_and_wait(vm: Vm, key: Path) -> None:
    wait_for(
        "sshd",
        lambda: vm.ssh(key, "true", check=False, timeout=30).returncode == 0,
        600,
    )
    for name, value in SECRETS.items():
        vm.ssh(key, f"printf %s {shlex.quote(value)} | appliance-set-secret {name}")
    vm.ssh(key, "systemctl reset-failed; systemctl --no-block restart appliance.target")
    units = [*UNITS, "appliance-webui.service"] if _webui_installed(vm, key) else UNITS
    # Under TCG the JVM alone takes about a minute to start.
    wait_for("every unit active", lambda: _all_active(vm, key, units), 600)


def _refused_from_outside(port: int) -> bool:
    """True when a request to the forwarded port gets no answer at all."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(64) == b""
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            return True


@pytest.fixture(scope="module")
def uefi_vm(disk: Path, ssh_key: Path) -> Iterator[Vm]:
    vm = _boot(disk, secure_boot=False)
    try:
        _provision_and_wait(vm, ssh_key)
        yield vm
    finally:
        vm.stop()


def test_every_unit_is_active_after_boot(uefi_vm: Vm, ssh_key: Path) -> None:
    out = uefi_vm.ssh(ssh_key, "systemctl is-active " + " ".join(UNITS))
    assert out.stdout.split() == ["active"] * len(UNITS)
    failed = uefi_vm.ssh(ssh_key, "systemctl --failed --plain --no-legend").stdout
    assert "appliance" not in failed, failed


def test_the_shipper_without_kafka_retries_in_its_steps(
    uefi_vm: Vm, ssh_key: Path
) -> None:
    journal = "journalctl -u appliance-shipper -o cat"
    wait_for(
        "a shipper retry",
        lambda: "will retry" in uefi_vm.ssh(ssh_key, journal).stdout,
        300,
    )
    assert "Traceback" not in uefi_vm.ssh(ssh_key, journal).stdout


def test_the_web_page_answers_over_tls_when_installed(
    uefi_vm: Vm, ssh_key: Path
) -> None:
    if not _webui_installed(uefi_vm, ssh_key):
        pytest.skip("appliance-webui.service is not in the image")
    _assert_webui_over_tls(uefi_vm)


def _assert_webui_over_tls(vm: Vm) -> None:
    """From outside, through the firewall (the test's store LAN is qemu's)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the box's own self-signed certificate
    conn = http.client.HTTPSConnection(
        "127.0.0.1", vm.webui, timeout=30, context=context
    )
    conn.connect()
    assert isinstance(conn.sock, ssl.SSLSocket)
    assert conn.sock.version() in {"TLSv1.2", "TLSv1.3"}
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status in {200, 302, 303}
    conn.close()


def test_a_port_not_in_the_firewall_is_closed(uefi_vm: Vm, ssh_key: Path) -> None:
    uefi_vm.ssh(
        ssh_key,
        "systemd-run --unit=probe-9999 python3 -m http.server 9999 --bind 0.0.0.0",
    )
    # Inside the box the server answers (loopback is allowed)...
    local = (
        "import urllib.request as u,time\n"
        "for _ in range(20):\n"
        "  try: print(u.urlopen('http://127.0.0.1:9999/').status); break\n"
        "  except OSError: time.sleep(0.5)\n"
    )
    assert uefi_vm.ssh(ssh_key, f"python3 -c {shlex.quote(local)}").stdout.strip() == (
        "200"
    )
    # ...from the network it gets nothing, while SSH on the same path works.
    assert _refused_from_outside(uefi_vm.probe)
    with socket.create_connection(("127.0.0.1", uefi_vm.ssh_port), timeout=10) as s:
        assert s.recv(8).startswith(b"SSH-2.0")


def test_no_password_logins_and_root_locked(uefi_vm: Vm, ssh_key: Path) -> None:
    config = uefi_vm.ssh(ssh_key, "sshd -T").stdout
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    assert "authenticationmethods publickey" in config
    assert uefi_vm.ssh(ssh_key, "passwd -S root").stdout.split()[1] == "L"
    shadow = uefi_vm.ssh(ssh_key, "getent shadow root appliance").stdout
    for line in shadow.splitlines():
        assert line.split(":")[1].startswith(("!", "*")), line.split(":")[0]


def test_firewall_audit_and_journal_are_on(uefi_vm: Vm, ssh_key: Path) -> None:
    rules = uefi_vm.ssh(ssh_key, "nft list ruleset").stdout
    assert rules.count("policy drop") == 3  # input, forward, output
    assert uefi_vm.ssh(ssh_key, "systemctl is-active auditd").stdout.strip() == "active"
    audit = uefi_vm.ssh(ssh_key, "auditctl -l").stdout
    assert "appliance-credentials" in audit
    cmdline = uefi_vm.ssh(ssh_key, "cat /proc/cmdline").stdout
    assert "audit=0" not in cmdline
    journal = uefi_vm.ssh(ssh_key, "ls /var/log/journal/$(cat /etc/machine-id)")
    assert "system.journal" in journal.stdout


def test_secure_boot_boots_the_signed_image(disk: Path, ssh_key: Path) -> None:
    vm = _boot(disk, secure_boot=True)
    try:
        _provision_and_wait(vm, ssh_key)
        kernel = vm.ssh(ssh_key, "journalctl -k -b --no-pager -o cat").stdout
        assert "Secure boot enabled" in kernel
        out = vm.ssh(ssh_key, "systemctl is-active " + " ".join(UNITS))
        assert out.stdout.split() == ["active"] * len(UNITS)
        assert _refused_from_outside(vm.probe)
        _assert_webui_over_tls(vm)
    finally:
        vm.stop()


def test_secure_boot_refuses_the_unsigned_image(disk: Path) -> None:
    vm = _boot(disk.with_name("appliance-unsigned.raw"), secure_boot=True)
    try:
        console = vm.wait_console(r"Access Denied", 300)
        assert "Access Denied" in console
        time.sleep(5)
        assert "Linux version" not in vm.console()
    finally:
        vm.stop()
