"""The fleet rollout (ansible/) applied to four fake boxes on this machine.

Each "box" is a directory standing for "/" (``appliance_root``), reached with
``ansible_connection=local``, with its own fake web UI health endpoint on
127.0.0.1 and ``tests/ansible/fake_box.py`` as its systemctl and its
``appliance status --json``. What is real: the two wheels of this repository
(versions 0.1.0 and 0.2.0) installed into release venvs with pip from a
wheelhouse, each release's ``appliance check-config`` on its templated
settings, ``systemd-analyze verify`` of the installed units, the vault, and
``systemd-creds`` encryption with a host key under the box's root. What is
not: the legs never run (no systemd here), so "drained" and "healthy" are
what the fakes report; the test shows the ORDER of operations (miner
stopped, outbox at 0, then the switch) and the rollback, not a relay
surviving an upgrade end to end.

Fleet: mq-001 (canary), gp-001 and re-001 (wave1, one batch of 2,
max_fail_percentage 25), gf-001 (wave2). gp-001 fails its gate on 0.2.0.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ansible_support import REPO, VENV, Run, locked_wheels, run_playbook

pytestmark = pytest.mark.ansible

FAKE_BOX = Path(__file__).with_name("fake_box.py")
OLD, NEW = "0.1.0", "0.2.0"
LEG_UNITS = [f"appliance-{leg}.service" for leg in ("miner", "transformer", "enricher")]
SHIPPER = "appliance-shipper.service"
# Box services of systemd/ beside the legs and the page (the guardian...):
# the role finds them there and stops them after the legs, before the page.
OTHER_UNITS = sorted(
    p.name
    for p in (REPO / "systemd").glob("appliance*.service")
    if p.name
    not in {
        *LEG_UNITS,
        SHIPPER,
        "appliance-webui.service",
        "appliance-sink.service",
        "appliance-firstboot.service",
    }
)


@dataclass
class Box:
    """One fake store box: its inventory facts and its directory."""

    name: str
    territory: str
    wave: str
    store_id: str
    bad_version: str = ""
    root: Path = Path()
    port: int = 0
    token: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    reads: int = 0

    def ops(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The fake's operations log, from `since` on."""
        path = self.root / "fake" / "ops.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["t"] >= since]

    def current(self) -> str:
        """Release the box's `current` link points at."""
        return os.readlink(self.root / "opt" / "appliance" / "current")


BOXES = [
    Box("mq-001", "martinique", "canary", "MQ001"),
    Box("gp-001", "guadeloupe", "wave1", "GP001", bad_version=NEW),
    Box("re-001", "reunion", "wave1", "RE001"),
    Box("gf-001", "guyane", "wave2", "GF001"),
]


def _health_handler(box: Box) -> type[BaseHTTPRequestHandler]:
    """/api/v1/state of one box, computed from its fake state and release."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {box.token}":
                self.send_error(401)
                return
            state = json.loads((box.root / "fake" / "state.json").read_text())
            release = os.path.basename(box.current())
            box.reads += 1
            broken = release == box.bad_version
            running = set(state["running"])
            body = {
                "legs": [
                    {
                        "leg": u.removeprefix("appliance-").removesuffix(".service"),
                        "state": "running" if u in running else "stopped",
                    }
                    for u in [*LEG_UNITS, SHIPPER]
                ],
                # The bad release parks a dead letter a read, confirms nothing.
                "dead_letters": box.reads if broken else 0,
                "unconfirmed": 5 if broken else state["unconfirmed"],
                "lag_entries": 5 + box.reads if broken else 0,
                "lag_s": 1.5,
                "oldest": None,
                "alarms": [],
                "counters": {"shipper.confirmed": 7 if broken else box.reads},
            }
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: pytest shows the playbook output instead."""

    return Handler


def _wheelhouses(work: Path) -> str:
    """Tars of the locked dependencies (downloaded once) plus this repo as
    0.1.0, resp. 0.2.0; returns the role's archive path, templated."""
    deps = locked_wheels()
    for version in (OLD, NEW):
        house = work / f"wheelhouse-{version}"
        shutil.copytree(deps, house)
        src = work / f"src-{version}"
        for part in ("appliance", "webui"):
            shutil.copytree(
                REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        shutil.copy(REPO / "README.md", src)
        text = (REPO / "pyproject.toml").read_text()
        (src / "pyproject.toml").write_text(
            text.replace('version = "0.1.0"', f'version = "{version}"', 1)
        )
        subprocess.run(
            [
                REPO / ".venv/bin/pip",
                "wheel",
                "-q",
                "--no-deps",
                "--wheel-dir",
                house,
                src,
            ],
            check=True,
            cwd=work,
        )
        shutil.make_archive(str(house), "tar", house)
    return str(work / "wheelhouse-{{ appliance_version }}.tar")


def _inventory(work: Path, archive: str, password_file: Path) -> Path:
    """hosts.yml by territory and wave, host_vars with an encrypted vault each."""
    inv = work / "inventory"
    groups: dict[str, Any] = {}
    for box in BOXES:
        for group in (box.territory, box.wave):
            groups.setdefault(group, {"hosts": {}})["hosts"][box.name] = None
        hv = inv / "host_vars" / box.name
        hv.mkdir(parents=True)
        fake = ["/usr/bin/python3", str(FAKE_BOX), str(box.root)]
        facts = {
            "ansible_connection": "local",
            "ansible_python_interpreter": str(VENV / "bin" / "python"),
            "appliance_root": str(box.root),
            "appliance_store_id": box.store_id,
            "appliance_ibmi_host": "127.0.0.1",
            "appliance_ibmi_tables": ["ARTICLE", "PRIX"],
            "appliance_user": "root",
            "appliance_group": "root",
            "appliance_systemctl": [*fake, "systemctl"],
            "appliance_status_command": [*fake, "status"],
            "appliance_gate_url": f"http://127.0.0.1:{box.port}/api/v1/state",
            "appliance_gate_ca_path": "",
        }
        (hv / "vars.yml").write_text(json.dumps(facts, indent=1))
        vault = hv / "vault.yml"
        vault.write_text(
            json.dumps(
                {
                    "vault_appliance_ibmi_password": box.secrets["ibmi"],
                    "vault_appliance_kafka_password": box.secrets["kafka"],
                    "vault_appliance_api_token": box.token,
                }
            )
        )
        subprocess.run(
            [
                VENV / "bin/ansible-vault",
                "encrypt",
                "--vault-password-file",
                password_file,
                vault,
            ],
            check=True,
            capture_output=True,
        )
    common = {
        "appliance_wheelhouse_archive": archive,
        "appliance_pip_extra_args": ["--no-compile"],
        "appliance_drain_timeout_s": 30,
        "appliance_drain_poll_s": 1,
        "appliance_gate_interval_s": 1,
        "appliance_gate_start_timeout_s": 10,
        "rollout_report_dir": str(work / "reports" / "rollout"),
        "status_report": str(work / "reports" / "status.json"),
    }
    (inv / "group_vars").mkdir()
    (inv / "group_vars" / "all.yml").write_text(json.dumps(common, indent=1))
    (inv / "hosts.yml").write_text(json.dumps({"all": {"children": groups}}, indent=1))
    return inv


@dataclass
class Fleet:
    """Everything the module's tests look at."""

    work: Path
    site: Run
    site_again: Run
    rollout: Run
    status: Run
    secrets_seen: list[str]


def _playbook(
    work: Path, inv: Path, password_file: Path, name: str, *extra: str
) -> Run:
    return run_playbook(work, inv, password_file, name, *extra)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Install 0.1.0 on the four boxes, then roll out 0.2.0, then collect."""
    if not (VENV / "bin" / "ansible-playbook").exists():
        pytest.skip(f"no Ansible venv at {VENV}: make ansible-check makes it")
    work = tmp_path_factory.mktemp("fleet")
    password_file = work / "vault-password"
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    servers = []
    for box in BOXES:
        box.root = work / "hosts" / box.name
        box.token = secrets.token_hex(16)
        box.secrets = {
            "ibmi": secrets.token_urlsafe(12),
            "kafka": secrets.token_urlsafe(12),
        }
        # What a Debian box has that `systemd-analyze verify --root` needs.
        shutil.copytree(
            "/usr/lib/systemd/system",
            box.root / "usr/lib/systemd/system",
            symlinks=True,
        )
        # The venvs' python links to /usr/bin/python3, which verify looks up
        # under the root too.
        (box.root / "usr/bin").mkdir(parents=True)
        shutil.copy2(os.path.realpath("/usr/bin/python3"), box.root / "usr/bin/python3")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _health_handler(box))
        box.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        inv = _inventory(work, _wheelhouses(work), password_file)
        site = _playbook(work, inv, password_file, "site.yml")
        site_again = _playbook(work, inv, password_file, "site.yml")
        for box in BOXES:  # messages in flight when the rollout starts
            state = json.loads((box.root / "fake/state.json").read_text())
            (box.root / "fake/state.json").write_text(
                json.dumps(state | {"unconfirmed": 3})
            )
        rollout = _playbook(
            work,
            inv,
            password_file,
            "rollout.yml",
            "-e",
            f"appliance_version={NEW}",
            # play keywords: from extra vars, never inventory
            "-e",
            "rollout_wave1_serial=2 rollout_wave1_max_fail=25",
        )
        status = _playbook(work, inv, password_file, "status.yml")
        seen = [v for b in BOXES for v in [*b.secrets.values(), b.token]]
        yield Fleet(work, site, site_again, rollout, status, seen)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_role_installs_release_settings_units_and_credentials(fleet: Fleet) -> None:
    """site.yml leaves each box on 0.1.0 with settings, units and credentials."""
    assert fleet.site.rc == 0, fleet.site.out[-3000:]
    for box in BOXES:
        home = box.root / "opt" / "appliance"
        settings = (box.root / "etc/appliance/appliance.toml").read_text()
        assert f'id = "{box.store_id}"' in settings
        assert os.readlink(box.root / "etc/appliance/appliance.toml") == (
            "../../opt/appliance/current/appliance.toml"
        )
        assert os.readlink(home / "venv") == "current/venv"
        assert (box.root / "etc/systemd/system/appliance-miner.service").exists()
        # the release keeps its own units; the unit directory has exactly them
        kept = sorted(p.name for p in (home / "releases" / OLD / "units").iterdir())
        installed = sorted(
            p.name
            for p in (box.root / "etc/systemd/system").glob("appliance*")
            if p.suffix in (".service", ".target")
        )
        assert kept == installed
        assert "appliance-sink.service" not in kept
        for name, secret in (
            ("ibmi-password", box.secrets["ibmi"]),
            ("kafka-password", box.secrets["kafka"]),
        ):
            sealed = box.root / "etc/credstore.encrypted" / name
            assert secret.encode() not in sealed.read_bytes()
            opened = subprocess.run(
                ["systemd-creds", "decrypt", f"--name={name}", sealed, "-"],
                env=os.environ
                | {
                    "SYSTEMD_CREDENTIAL_SECRET": str(
                        box.root / "var/lib/systemd/credential.secret"
                    )
                },
                capture_output=True,
                check=True,
            )
            assert opened.stdout == secret.encode()


def test_role_applied_twice_changes_nothing(fleet: Fleet) -> None:
    """The second site.yml reports changed=0 on every box."""
    assert fleet.site_again.rc == 0, fleet.site_again.out[-3000:]
    recap = [line for line in fleet.site_again.out.splitlines() if "ok=" in line]
    assert len(recap) == len(BOXES)
    assert all("changed=0" in line for line in recap), recap


def test_rollout_rolls_back_failing_box_and_stops_at_the_wave(fleet: Fleet) -> None:
    """gp-001 fails its gate and returns to 0.1.0; wave2 is never touched."""
    assert fleet.rollout.rc != 0
    assert "NO MORE HOSTS LEFT" in fleet.rollout.out  # the budget stopped the run
    by_name = {b.name: b for b in BOXES}
    assert by_name["mq-001"].current() == f"releases/{NEW}"
    assert by_name["re-001"].current() == f"releases/{NEW}"
    bad = by_name["gp-001"]
    assert bad.current() == f"releases/{OLD}"
    starts = [
        e["current"] for e in bad.ops(fleet.rollout.started) if e["op"] == "start"
    ]
    assert starts == [NEW, OLD]  # started on the new release, then on the old
    untouched = by_name["gf-001"]
    assert untouched.current() == f"releases/{OLD}"
    assert untouched.ops(fleet.rollout.started) == []
    assert not (untouched.root / "opt/appliance/releases" / NEW).exists()
    reports = fleet.work / "reports" / "rollout"
    outcomes = {
        p.stem: json.loads(p.read_text())["outcome"] for p in reports.glob("*.json")
    }
    assert outcomes == {
        "mq-001": "upgraded",
        "gp-001": "rolled_back",
        "re-001": "upgraded",
    }
    assert (
        "health gate failed"
        in json.loads((reports / "gp-001.json").read_text())["reason"]
    )


def test_rollout_drains_the_outbox_before_switching(fleet: Fleet) -> None:
    """Miner stopped, unconfirmed read down to 0, others stopped, then the switch."""
    for box in BOXES[:3]:
        ops = box.ops(fleet.rollout.started)
        stops = [i for i, e in enumerate(ops) if e["op"] == "stop"]
        assert ops[stops[0]]["units"] == ["appliance-miner.service"]
        reads = [e for e in ops[stops[0] : stops[1]] if e["op"] == "status"]
        # 3 in flight; the first read already shows one confirmed
        assert [r["unconfirmed"] for r in reads] == [2, 1, 0]
        order = [*LEG_UNITS[1:], SHIPPER, *OTHER_UNITS, "appliance-webui.service"]
        stopped_in_order = [
            e["units"][0] for e in ops[stops[1] : stops[1] + len(order)]
        ]
        assert stopped_in_order == order
        # Everything up to the last stop ran on the old release; the first
        # start after it on the new one.
        assert {e["current"] for e in ops[: stops[1] + len(order)]} == {OLD}
        assert next(e for e in ops if e["op"] == "start")["current"] == NEW


def test_rollout_keeps_secrets_out_of_the_output(fleet: Fleet) -> None:
    """No vault value shows in any playbook's output."""
    for run in (fleet.site, fleet.site_again, fleet.rollout, fleet.status):
        assert not [s for s in fleet.secrets_seen if s in run.out]


def test_status_report_has_every_store(fleet: Fleet) -> None:
    """status.yml writes one report with each store's release, lag and alarms."""
    assert fleet.status.rc == 0, fleet.status.out[-3000:]
    report = json.loads((fleet.work / "reports" / "status.json").read_text())
    stores = {s["store_id"]: s for s in report["stores"]}
    assert {k: v["version"] for k, v in stores.items()} == {
        "MQ001": NEW,
        "GP001": OLD,
        "RE001": NEW,
        "GF001": OLD,
    }
    assert all("lag_entries" in s and "alarms" in s for s in stores.values())
