"""The fleet rollout on four booted image boxes, relaying for real (issue #8).

Each box is the built image tree (``.cache/image/tree``) under its own
overlay mount, booted with ``systemd-nspawn -b`` (systemd as PID 1) sharing
the host's network, its sshd on a loopback port of its own (root by a key made
for this run; passwords stay off) and its web page on another. Ansible
reaches every box over SSH on 127.0.0.1 and applies the role like on a NUC:
release venvs from a wheelhouse, settings, units, sealed credentials.

Each store has its own emulated IBM i (PostgreSQL behind psqlODBC inside the
box), its own Kafka topics and its own hub sink on the host writing its ODH
database (``appliance.devstack.Stack``). The legs in the boxes are the real
ones under the image's systemd units.

Fleet: mq (canary), gp and re (wave1: one batch of 2, max_fail_percentage
25), gf (wave2). Releases 0.1.0 and 0.2.0 are wheels of this repository built
from a clean export of git HEAD (other work in progress in the tree stays out).
gp's 0.2.0 settings name a Kafka broker nobody listens to: its shipper runs
but confirms nothing, so gp fails its health gate while its store writes.

The image tree already holds what the role makes (image/build.sh installs
release 0.1.0 with this role through the appliance_chroot connection), so
site.yml finds 0.1.0 installed, as on a freshly flashed NUC, and gives each
box its store's settings and sealed credentials.

Preparation that a NUC does not need (the test's box, not the role's): the
boxes share the host's network, so the image's relay and page stay off until
site.yml gives them their store's settings (a preset and no wants links:
the image's settings name a real store's peers and bind the page to every
address); psqlODBC, which stands for IBM's ODBC driver here, is copied from
the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.devstack import Services, Stack
from appliance.emulator import workload

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "image"))
from image_support import OUT, SHARED_NETWORK_MASKS, Container, wait_for  # noqa: E402

pytestmark = pytest.mark.fleet

from ansible_support import ANSIBLE_DIR, VENV, Run, locked_wheels, run_playbook  # noqa: E402

TREE = OUT / "tree"
OLD, NEW = "0.1.0", "0.2.0"
LEGS = ("miner", "transformer", "enricher", "shipper")
# Nothing listens there: the broken release's broker (loopback, never served).
DEAD_BROKER = "127.0.0.1:9"
UNIT_MARK = f"# release {NEW} (fleet test)\n"
PSQLODBC = Path("/usr/lib/x86_64-linux-gnu/odbc/psqlodbcw.so")
# Enabled in the image, held in the fleet test's boxes until site.yml.
HELD_UNITS = ("appliance.target", "appliance-webui.service")


@dataclass
class Box:
    """One store box: inventory facts, its container, its store's stack."""

    name: str
    territory: str
    wave: str
    store_id: str
    bad: bool = False
    ssh_port: int = 0
    web_port: int = 0
    root: Path = Path()  # the overlay mount the container boots
    container: Container | None = None
    stack: Stack | None = None
    token: str = ""
    kafka_secret: str = ""
    boot_s: float = 0.0
    written: int = 0
    workload_errors: list[str] = field(default_factory=list)

    def current(self) -> str:
        return os.readlink(self.root / "opt" / "appliance" / "current")

    def run(self, *argv: str, stdin: str | None = None) -> str:
        assert self.container is not None
        return self.container.run(*argv, stdin=stdin, timeout=120).stdout

    def active(self, unit: str) -> str:
        assert self.container is not None
        return self.container.run(
            "systemctl", "is-active", unit, check=False
        ).stdout.strip()


BOXES = [
    Box("mq-fdf", "martinique", "canary", "MQ101"),
    Box("gp-ptp", "guadeloupe", "wave1", "GP101", bad=True),
    Box("re-sd", "reunion", "wave1", "RE101"),
    Box("gf-cay", "guyane", "wave2", "GF101"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wheelhouses(work: Path) -> str:
    """Locked dependencies plus git HEAD of this repo as 0.1.0 and 0.2.0."""
    deps = locked_wheels()
    head = work / "src-head"
    head.mkdir()
    archive = subprocess.run(
        ["git", "-C", REPO, "archive", "HEAD"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", head], input=archive.stdout, check=True)
    pyproject = (head / "pyproject.toml").read_text()
    for version in (OLD, NEW):
        # Each release's own units (the role's appliance_units_src per
        # version); 0.2.0's carry a mark, to see which release's units run.
        units = shutil.copytree(head / "systemd", work / f"units-{version}")
        if version == NEW:
            for unit in units.glob("appliance*.*"):
                if unit.suffix in (".service", ".target"):
                    unit.write_text(unit.read_text() + UNIT_MARK)
        (head / "pyproject.toml").write_text(
            pyproject.replace('version = "0.1.0"', f'version = "{version}"', 1)
        )
        house = work / f"wheelhouse-{version}"
        shutil.copytree(deps, house)
        subprocess.run(
            [
                REPO / ".venv/bin/pip",
                "wheel",
                "-q",
                "--no-deps",
                "--wheel-dir",
                house,
                head,
            ],
            check=True,
            cwd=work,
        )
        shutil.rmtree(head / "build", ignore_errors=True)
        shutil.make_archive(str(house), "tar", house)
    return str(work / "wheelhouse-{{ appliance_version }}.tar")


def _copy_odbc_driver(root: Path) -> None:
    """psqlODBC and the libraries the tree lacks, from the host (same Debian)."""
    dest = root / PSQLODBC.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PSQLODBC, dest)
    host_libs = {}
    for line in subprocess.run(
        ["ldd", PSQLODBC], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>":
            host_libs[parts[0]] = parts[2]
    for _ in range(10):
        missing = [
            line.split()[0]
            for line in subprocess.run(
                ["chroot", root, "ldd", str(PSQLODBC)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            if "not found" in line
        ]
        if not missing:
            break
        for lib in missing:
            shutil.copy2(host_libs[lib], root / "usr/lib/x86_64-linux-gnu" / lib)
    subprocess.run(["chroot", root, "ldconfig"], check=True)
    ini = root / "etc/odbcinst.ini"
    text = ini.read_text() if ini.exists() else ""
    ini.write_text(text + f"\n[PostgreSQL Unicode]\nDriver={PSQLODBC}\nUsageCount=1\n")


def _prepare_root(box: Box, work: Path, public_key: str) -> None:
    """An overlay of the image tree for one box, with the test's own bits."""
    layer = work / "layers" / box.name
    upper, scratch, box.root = layer / "upper", layer / "work", layer / "root"
    for d in (upper, scratch, box.root):
        d.mkdir(parents=True)
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={TREE},upperdir={upper},workdir={scratch}",
            box.root,
        ],
        check=True,
    )
    root = box.root
    # The image's settings name a real store's IBM i and Kafka and bind the
    # page to every address: on the host's network nothing of the relay may
    # start before site.yml (whose handlers start it with the test's
    # settings). First boot applies presets, so a preset says so as well.
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in HELD_UNITS:
        (wants / unit).unlink(missing_ok=True)
    (root / "etc/systemd/system-preset/00-fleet-test.preset").write_text(
        "".join(f"disable {unit}\n" for unit in HELD_UNITS)
    )
    (root / "etc/ssh/sshd_config.d/00-fleet-test.conf").write_text(
        f"Port {box.ssh_port}\nListenAddress 127.0.0.1\n"
    )
    keys = root / "root/.ssh/authorized_keys"
    keys.parent.mkdir(mode=0o700, exist_ok=True)
    keys.write_text(public_key)
    keys.chmod(0o600)
    _copy_odbc_driver(root)


def _inventory(work: Path, archive: str, password_file: Path, key: Path) -> Path:
    """hosts.yml by territory and wave; host_vars with an encrypted vault each."""
    inv = work / "inventory"
    groups: dict[str, Any] = {}
    services = BOXES[0].stack.services if BOXES[0].stack else None
    assert services is not None
    for box in BOXES:
        assert box.stack is not None
        for group in (box.territory, box.wave):
            groups.setdefault(group, {"hosts": {}})["hosts"][box.name] = None
        hv = inv / "host_vars" / box.name
        hv.mkdir(parents=True)
        good = services.kafka_bootstrap
        facts = {
            "ansible_host": "127.0.0.1",
            "ansible_port": box.ssh_port,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key),
            "ansible_python_interpreter": "/usr/bin/python3",
            "appliance_store_id": box.store_id,
            "appliance_ibmi_dialect": "emulator",
            "appliance_ibmi_driver": "PostgreSQL Unicode",
            "appliance_ibmi_host": services.pg_host,
            "appliance_ibmi_port": services.pg_port,
            "appliance_ibmi_database": box.stack.ibmi_db,
            "appliance_ibmi_user": f"relay_{box.stack.name}",
            # gp's 0.2.0 settings name the dead broker; 0.1.0's the real one.
            "appliance_kafka_bootstrap": (
                "{{ '" + DEAD_BROKER + "' if appliance_version == '" + NEW + "'"
                " else '" + good + "' }}"
                if box.bad
                else good
            ),
            "appliance_kafka_changes_topic": box.stack.changes_topic,
            "appliance_kafka_confirm_topic": box.stack.confirm_topic,
            "appliance_webui_port": box.web_port,
        }
        (hv / "vars.yml").write_text(json.dumps(facts, indent=1))
        vault = hv / "vault.yml"
        ibmi_password = (box.stack.secrets / "ibmi-password").read_text().strip()
        vault.write_text(
            json.dumps(
                {
                    "vault_appliance_ibmi_password": ibmi_password,
                    "vault_appliance_kafka_password": box.kafka_secret,
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
        "appliance_units_src": str(work / "units-{{ appliance_version }}"),
        "appliance_drain_timeout_s": 300,
        "appliance_drain_poll_s": 3,
        "appliance_gate_interval_s": 20,
        "appliance_gate_start_timeout_s": 240,
        "rollout_report_dir": str(work / "reports" / "rollout"),
        "status_report": str(work / "reports" / "status.json"),
    }
    (inv / "group_vars").mkdir()
    (inv / "group_vars" / "all.yml").write_text(json.dumps(common, indent=1))
    (inv / "hosts.yml").write_text(json.dumps({"all": {"children": groups}}, indent=1))
    return inv


def _playbook(
    work: Path, inv: Path, password_file: Path, name: str, *extra: str
) -> Run:
    ssh = {
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": "-o UserKnownHostsFile=/dev/null -o BatchMode=yes "
        "-o ControlMaster=auto -o ControlPersist=120s",
    }
    return run_playbook(work, inv, password_file, name, *extra, env=ssh, tail=8000)


def _give_page_a_token(box: Box) -> None:
    """The page's first setup, done on the box: one technician, the API token."""
    from werkzeug.security import generate_password_hash

    webui = box.root / "var/lib/appliance/webui"
    wait_for(f"{box.name} page state", (webui / "tls.crt").exists, 180)
    users = {
        "users": {"technicien": generate_password_hash(secrets.token_urlsafe(16))},
        "tokens": {
            "api": hashlib.sha256(box.token.encode()).hexdigest(),
            "metrics": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
        },
    }
    box.run(
        "sh",
        "-c",
        "umask 077; f=/var/lib/appliance/webui/users.json;"
        ' cat > "$f.new" && chown appliance:appliance "$f.new" && mv "$f.new" "$f"',
        stdin=json.dumps(users),
    )


class Workload:
    """Store activity on every emulator while the rollout runs."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate = rate_per_s
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for number, box in enumerate(BOXES):
            thread = threading.Thread(target=self._one, args=(box, number), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _one(self, box: Box, number: int) -> None:
        assert box.stack is not None
        chunk = 0
        while not self.stop.is_set():
            chunk += 1
            try:
                done = workload.run(
                    box.stack.emulator(),
                    rate_per_s=self.rate,
                    duration_s=5,
                    seed=1000 * number + chunk,
                )
                box.written += int(done["changes"])
            except Exception as exc:
                box.workload_errors.append(repr(exc))
                return

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


@dataclass
class Fleet:
    work: Path
    site: Run
    rollout: Run
    status: Run
    before: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]
    counts: dict[str, dict[str, int]]
    written_during: dict[str, int]
    stopped: dict[str, list[str]]
    units_after: dict[str, dict[str, str]]
    secrets_seen: list[str]


def _relays(box: Box, timeout_s: float) -> dict[str, Any]:
    """Wait until the store's relay drained; its ODH compared with the source."""
    assert box.stack is not None
    box.stack.wait_drained(timeout_s=timeout_s, settle_s=3)
    return box.stack.compare()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Boot four boxes, install 0.1.0, roll out 0.2.0 under store activity."""
    if os.environ.get("APPLIANCE_FLEET_TESTS") != "1":
        pytest.skip("set APPLIANCE_FLEET_TESTS=1 (make fleet-check; root)")
    for need, what in (
        (os.geteuid() == 0, "root (nspawn, overlay mounts)"),
        ((TREE / "usr/bin/python3").exists(), f"a built image tree at {TREE}"),
        ((VENV / "bin/ansible-playbook").exists(), f"the Ansible venv at {VENV}"),
    ):
        if not need:
            pytest.fail(f"the fleet test needs {what}")
    sys.path.insert(0, str(REPO / "scripts"))
    import services as services_script

    services = Services.from_state(services_script.ensure_up())
    work = tmp_path_factory.mktemp("fleet")
    key = work / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f", key],
        check=True,
    )
    password_file = work / "vault-password"
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    tag = f"fl{os.getpid()}"
    mounted: list[Path] = []
    workload_run = Workload(rate_per_s=3)
    try:
        archive = _wheelhouses(work)
        for box in BOXES:
            box.ssh_port, box.web_port = _free_port(), _free_port()
            box.token = secrets.token_urlsafe(24)
            box.kafka_secret = secrets.token_urlsafe(12)
            _prepare_root(box, work, (key.with_suffix(".pub")).read_text())
            mounted.append(box.root)
            box.stack = Stack(
                services,
                work / "stacks" / box.name,
                name=f"{tag}_{box.store_id.lower()}",
                store_id=box.store_id,
                pipeline_dir=box.root / "var/lib/appliance",
            )
            box.stack.prepare()
            workload.seed_store(box.stack.emulator(), articles=40, seed=7)
            box.stack.legs.append(box.stack.spawn_leg("sink"))
        for box in BOXES:
            box.container = Container(
                box.root,
                work / f"nspawn-{box.name}.log",
                private_network=False,
                volatile=False,
                name=f"{tag}-{box.name}",
                masks=SHARED_NETWORK_MASKS,
            )
            started = time.monotonic()
            box.container.boot(timeout=300)
            box.boot_s = round(time.monotonic() - started, 1)
            sys.stdout.write(f"--- {box.name} booted in {box.boot_s} s\n")
        inv = _inventory(work, archive, password_file, key)
        site = _playbook(work, inv, password_file, "site.yml")
        assert site.rc == 0, site.out[-4000:]
        for box in BOXES:
            _give_page_a_token(box)
        before = {box.name: _relays(box, 600) for box in BOXES}
        workload_run.start()
        time.sleep(10)  # changes in flight on every box when the rollout starts
        rollout_started = int(time.time()) - 1
        rollout = _playbook(
            work,
            inv,
            password_file,
            "rollout.yml",
            "-e",
            f"appliance_version={NEW}",
            "-e",
            "rollout_wave1_serial=2 rollout_wave1_max_fail=25",
        )
        workload_run.finish()
        written_during = {box.name: box.written for box in BOXES}
        # What each box's systemd stopped during the rollout, in order.
        stopped = {
            box.name: re.findall(
                r"^Stopped (appliance-[a-z]+\.service)",
                box.run(
                    "journalctl",
                    "--no-pager",
                    "-o",
                    "cat",
                    "_PID=1",
                    f"--since=@{rollout_started}",
                ),
                re.MULTILINE,
            )
            for box in BOXES
        }
        # After the rollout (and gp's rollback): more changes on every store.
        for number, box in enumerate(BOXES):
            assert box.stack is not None
            workload.run(
                box.stack.emulator(), rate_per_s=0, changes=60, seed=9000 + number
            )
        after = {box.name: _relays(box, 900) for box in BOXES}
        counts = {box.name: box.stack.counts() for box in BOXES if box.stack}
        for box in BOXES:
            sys.stdout.write(
                f"--- {box.name}: written during the rollout {box.written},"
                f" counts {json.dumps(counts[box.name])}\n"
            )
        units_after = {
            box.name: {
                unit: box.active(unit)
                for unit in [f"appliance-{leg}.service" for leg in LEGS]
                + ["appliance-webui.service"]
            }
            for box in BOXES
        }
        status = _playbook(work, inv, password_file, "status.yml")
        seen = [
            *(v for b in BOXES for v in (b.token, b.kafka_secret)),
            *(
                (b.stack.secrets / "ibmi-password").read_text().strip()
                for b in BOXES
                if b.stack
            ),
        ]
        yield Fleet(
            work,
            site,
            rollout,
            status,
            before,
            after,
            counts,
            written_during,
            stopped,
            units_after,
            seen,
        )
    finally:
        workload_run.finish()
        for box in BOXES:
            if box.stack is not None:
                box.stack.close()
            if box.container is not None:
                box.container.poweroff()
        for root in mounted:
            subprocess.run(["umount", root], check=False)


def test_the_role_installs_the_release_on_booted_boxes_over_ssh(fleet: Fleet) -> None:
    """site.yml over SSH: 0.1.0 installed, and every store relays on it."""
    assert fleet.site.rc == 0
    for name, report in fleet.before.items():
        assert all(t["equal"] and t["source"] > 0 for t in report.values()), (
            name,
            report,
        )


def test_rollout_upgrades_healthy_boxes_and_rolls_back_the_failing_one(
    fleet: Fleet,
) -> None:
    """Canary and re on 0.2.0, gp back on 0.1.0, wave 2 never touched."""
    assert fleet.rollout.rc != 0
    assert "NO MORE HOSTS LEFT" in fleet.rollout.out
    by_name = {b.name: b for b in BOXES}
    assert by_name["mq-fdf"].current() == f"releases/{NEW}"
    assert by_name["re-sd"].current() == f"releases/{NEW}"
    assert by_name["gp-ptp"].current() == f"releases/{OLD}"
    untouched = by_name["gf-cay"]
    assert untouched.current() == f"releases/{OLD}"
    assert not (untouched.root / "opt/appliance/releases" / NEW).exists()
    reports = fleet.work / "reports" / "rollout"
    outcomes = {
        p.stem: json.loads(p.read_text())["outcome"] for p in reports.glob("*.json")
    }
    assert outcomes == {
        "mq-fdf": "upgraded",
        "gp-ptp": "rolled_back",
        "re-sd": "upgraded",
    }
    reason = json.loads((reports / "gp-ptp.json").read_text())["reason"]
    assert "health gate failed" in reason
    # gp's 0.2.0 settings (the broken broker) stay with their release; the
    # running settings are 0.1.0's.
    gp = by_name["gp-ptp"]
    assert (
        DEAD_BROKER
        in (gp.root / f"opt/appliance/releases/{NEW}/appliance.toml").read_text()
    )
    assert DEAD_BROKER not in (gp.root / "etc/appliance/appliance.toml").read_text()
    # Each box runs the units of its release: 0.2.0's (marked) on the
    # upgraded boxes, 0.1.0's again on gp after its rollback.
    for box in BOXES:
        unit = box.root / "etc/systemd/system/appliance-miner.service"
        assert (UNIT_MARK in unit.read_text()) == (box.name in ("mq-fdf", "re-sd"))
    assert (
        UNIT_MARK
        in (
            gp.root / f"opt/appliance/releases/{NEW}/units/appliance-miner.service"
        ).read_text()
    )


def test_rollout_stops_the_legs_in_data_flow_order(fleet: Fleet) -> None:
    """On each box upgraded (or tried): miner first, then the others in
    data-flow order, then any other unit of the release (the guardian's
    appliance-control), the page last (the drain between miner and the rest
    is the role's bounded wait, which passed); wave 2 saw no stop at all."""
    legs = [f"appliance-{leg}.service" for leg in LEGS]
    page = "appliance-webui.service"
    for name in ("mq-fdf", "gp-ptp", "re-sd"):
        stops = fleet.stopped[name]
        assert legs[0] in stops, (name, stops)
        first = stops.index(legs[0])
        assert page in stops[first:], (name, stops)
        window = stops[first : stops.index(page, first) + 1]
        assert window[: len(legs)] == legs, (name, stops)
        others = window[len(legs) : -1]
        assert not set(others) & {*legs, page}, (name, stops)
    assert fleet.stopped["gf-cay"] == []


def test_every_box_still_relays_after_the_rollout(fleet: Fleet) -> None:
    """All legs active on every box, the rolled-back one included."""
    for name, units in fleet.units_after.items():
        assert set(units.values()) == {"active"}, (name, units)


def test_no_change_in_flight_is_lost_or_applied_twice(fleet: Fleet) -> None:
    """ODH equals each store's tables after drain; each message applied once."""
    for box in BOXES:
        assert fleet.written_during[box.name] > 0, box.name
        assert not box.workload_errors, box.workload_errors
        report = fleet.after[box.name]
        assert all(t["equal"] for t in report.values()), (box.name, report)
        counts = fleet.counts[box.name]
        assert counts["hub.applied"] == counts["hub.applied_distinct"], counts
        assert counts["dead_letters"] == 0, counts


def test_status_report_and_no_secret_in_output(fleet: Fleet) -> None:
    """status.yml reports every store's release; no secret in any output."""
    assert fleet.status.rc == 0, fleet.status.out[-3000:]
    report = json.loads((fleet.work / "reports" / "status.json").read_text())
    versions = {s["store_id"]: s["version"] for s in report["stores"]}
    assert versions == {"MQ101": NEW, "GP101": OLD, "RE101": NEW, "GF101": OLD}
    for run in (fleet.site, fleet.rollout, fleet.status):
        assert not [s for s in fleet.secrets_seen if s in run.out]


def test_the_role_configures_an_image_tree_through_chroot(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """site.yml through the appliance_chroot connection on an overlay of the
    tree (no boot): the release layout with venv paths as on the NUC, its
    units installed and enabled, settings for the legs, no credential."""
    if os.environ.get("APPLIANCE_FLEET_TESTS") != "1":
        pytest.skip("set APPLIANCE_FLEET_TESTS=1 (make fleet-check; root)")
    if os.geteuid() != 0 or not (TREE / "usr/bin/python3").exists():
        pytest.fail(f"needs root and a built image tree at {TREE}")
    work = tmp_path_factory.mktemp("tree")
    archive = _wheelhouses(work)
    layer = work / "layer"
    root = layer / "root"
    for d in ("upper", "work", "root"):
        (layer / d).mkdir(parents=True)
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={TREE},upperdir={layer / 'upper'},workdir={layer / 'work'}",
            root,
        ],
        check=True,
    )
    try:
        # The tree as built (by this role): the target's link goes, to see
        # the role enable it again.
        (root / "etc/systemd/system/multi-user.target.wants/appliance.target").unlink(
            missing_ok=True
        )
        inv = work / "hosts.yml"
        inv.write_text(
            json.dumps(
                {
                    "all": {
                        "hosts": {
                            str(root): {
                                "ansible_connection": "appliance_chroot",
                                "ansible_python_interpreter": "/usr/bin/python3",
                                "appliance_image_build": True,
                                "appliance_store_id": "MQ001",
                                "appliance_wheelhouse_archive": archive,
                                "appliance_units_src": str(
                                    work / "units-{{ appliance_version }}"
                                ),
                            }
                        }
                    }
                }
            )
        )
        env = os.environ | {
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOME": str(work / "ansible-home"),
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
        }
        runs = []
        for _ in range(2):
            started = time.monotonic()
            done = subprocess.run(
                [VENV / "bin/ansible-playbook", "-i", inv, ANSIBLE_DIR / "site.yml"],
                env=env,
                capture_output=True,
                text=True,
                cwd=ANSIBLE_DIR,
                check=False,
            )
            sys.stdout.write(
                f"--- site.yml on the tree: rc={done.returncode}"
                f" in {time.monotonic() - started:.1f} s\n{done.stdout[-3000:]}"
            )
            runs.append(done)
        assert runs[0].returncode == 0, runs[0].stdout[-4000:] + runs[0].stderr
        assert runs[1].returncode == 0, runs[1].stdout[-4000:]
        recap = [line for line in runs[1].stdout.splitlines() if "ok=" in line]
        assert recap and all("changed=0" in line for line in recap), recap
        home = root / "opt/appliance"
        assert os.readlink(home / "current") == f"releases/{OLD}"
        shebang = (home / "venv/bin/appliance").read_text().splitlines()[0]
        assert shebang.startswith(f"#!/opt/appliance/releases/{OLD}/venv/bin/python")
        checked = subprocess.run(
            ["chroot", root, "/opt/appliance/venv/bin/appliance", "check-config"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        settings = root / "etc/appliance/appliance.toml"
        st = settings.stat()
        group = subprocess.run(
            ["chroot", root, "getent", "group", "appliance"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split(":")
        assert (oct(st.st_mode & 0o777), st.st_gid) == ("0o640", int(group[2]))
        units = root / "etc/systemd/system"
        kept = sorted(p.name for p in (home / f"releases/{OLD}/units").iterdir())
        assert kept and all((units / name).exists() for name in kept)
        assert (units / "multi-user.target.wants/appliance.target").is_symlink()
        assert not list((root / "etc/credstore.encrypted").glob("*"))
    finally:
        subprocess.run(["umount", root], check=False)
