#!/usr/bin/env python3
"""Run the two real services the relay needs (Kafka and PostgreSQL) on loopback.

A developer and CI tool, standard library only. ``up`` fetches the Kafka jars
from Maven Central once (cached outside the work tree), then starts a
single-node KRaft Kafka 4.1.1 broker and a throwaway PostgreSQL 15 cluster on
free 127.0.0.1 ports, and records where they are in ``<state>/services.json``.
``down`` stops them; ``env`` prints shell exports for the relay's tests.

Importable from tests::

    sys.path.insert(0, "scripts")
    import services
    state = services.ensure_up()

See docs/services.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
KAFKA_VERSION = "4.1.1"
KAFKA_POM = REPO / "scripts" / "kafka" / "pom.xml"
PG_BINDIR = Path(os.environ.get("APPLIANCE_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PG_SERVER_USER = "postgres"
PG_SUPERUSER = "postgres"
PG_DATABASES = ("ibmi", "odh")
LOOPBACK = "127.0.0.1"

KAFKA_HEAP = "-Xmx512m"
KAFKA_START_TIMEOUT = 120.0
PG_START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
KAFKA_SASL_USER = "relay"
TLS_DAYS = 30
MARKER = ".complete"
# sockaddr_un.sun_path is 108 bytes on Linux, including the trailing NUL.
MAX_SOCKET_PATH = 107


class ServiceError(RuntimeError):
    """A service could not be installed, started, probed or stopped."""


# --------------------------------------------------------------------------
# paths and state
# --------------------------------------------------------------------------


def default_state_dir() -> Path:
    """``$APPLIANCE_SERVICES_DIR`` or ``<repo>/.cache/services``."""
    env = os.environ.get("APPLIANCE_SERVICES_DIR")
    return Path(env).resolve() if env else REPO / ".cache" / "services"


def kafka_cache_dir() -> Path:
    """Where the Kafka jars live: ``$APPLIANCE_KAFKA_CACHE`` or under ~/.cache."""
    env = os.environ.get("APPLIANCE_KAFKA_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = Path.home() / ".cache" / "store-relay" / f"kafka-{KAFKA_VERSION}"
    return base / "libs"


def _resolve(state_dir: Path | str | None) -> Path:
    return Path(state_dir).resolve() if state_dir is not None else default_state_dir()


def _state_file(state_dir: Path) -> Path:
    return state_dir / "services.json"


def load_state(state_dir: Path | None = None) -> dict[str, Any]:
    """Return the recorded services (``{}`` when nothing was started)."""
    path = _state_file(_resolve(state_dir))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ServiceError(f"{path}: expected a JSON object")
    return data


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = _state_file(state_dir)
    if not state:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _update_state(state_dir: Path, name: str, entry: dict[str, Any] | None) -> None:
    state = load_state(state_dir)
    if entry is None:
        state.pop(name, None)
    else:
        state[name] = entry
    _save_state(state_dir, state)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise concurrent runs (two test sessions calling ``ensure_up``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _make_state_dir(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    # Secrets in here are 0600; the directory itself only needs search (x)
    # permission for the postgres server user, never read permission.
    os.chmod(state_dir, 0o711)


# --------------------------------------------------------------------------
# processes and ports
# --------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (reaping it if it is ours)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _is_ours(pid: int, *needles: str) -> bool:
    """True when ``pid`` is alive and its command line has all ``needles``."""
    if not _alive(pid):
        return False
    args = _cmdline(pid)
    return all(any(needle in arg for arg in args) for needle in needles)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers bind with SO_REUSEADDR, so connections of the previous
        # run lingering in TIME_WAIT do not make the port unusable to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _tcp_answers(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _terminate(pid: int, first: signal.Signals, needles: tuple[str, ...]) -> str:
    """Send ``first``, wait up to STOP_TIMEOUT, then SIGKILL. Only our processes."""
    if not _is_ours(pid, *needles):
        return "not running"
    os.kill(pid, first)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            return f"stopped ({first.name})"
        time.sleep(0.2)
    if _is_ours(pid, *needles):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return f"killed (no exit {STOP_TIMEOUT:.0f}s after {first.name})"
    return f"stopped ({first.name})"


def _run(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    proc = subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise ServiceError(f"{shlex.join(cmd)} failed ({proc.returncode}): {detail}")
    return proc.stdout


def _rotate(log: Path) -> None:
    """Keep one previous generation of a log file."""
    if log.exists() and log.stat().st_size > 0:
        os.replace(log, log.with_name(log.name + ".1"))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------


def ensure_kafka_jars(cache: Path | None = None) -> tuple[Path, float | None]:
    """Copy Kafka and its runtime jars from Maven Central into the cache, once.

    Returns the libs directory and the seconds the fetch took (None when the
    cache was already complete). A marker file holding the pom's digest says
    the copy finished; a changed pom fetches again.
    """
    libs = cache if cache is not None else kafka_cache_dir()
    digest = _file_sha256(KAFKA_POM)
    marker = libs / MARKER

    def complete() -> bool:
        try:
            return marker.read_text().strip() == digest
        except OSError:
            return False

    if complete():
        return libs, None
    with _locked(libs.parent / (libs.name + ".lock")):
        if complete():
            return libs, None
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError("mvn not found on PATH (apt-get install maven)")
        partial = libs.with_name(f"{libs.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
        ]
        try:
            _run(cmd, cwd=KAFKA_POM.parent)
        except ServiceError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if not any(partial.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            shutil.rmtree(partial, ignore_errors=True)
            raise ServiceError(f"maven copied no kafka_2.13-{KAFKA_VERSION}.jar")
        shutil.rmtree(libs, ignore_errors=True)
        os.replace(partial, libs)
        (libs / MARKER).write_text(digest + "\n")
        return libs, time.monotonic() - started


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ServiceError("java not found (apt-get install openjdk-17-jre-headless)")
    return found


def _kafka_paths(state_dir: Path) -> dict[str, Path]:
    base = state_dir / "kafka"
    return {
        "base": base,
        "data": base / "data",
        "props": base / "server.properties",
        "log4j": base / "log4j2.properties",
        "log": base / "kafka.log",
        "pidfile": base / "kafka.pid",
        "cluster_id": base / "cluster.id",
        "secure": base / "sasl_ssl.json",
        "tls": base / "tls",
    }


def _previous_kafka_ports(props: Path) -> tuple[int, int] | None:
    try:
        text = props.read_text()
    except OSError:
        return None
    ports: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("listeners="):
            for item in line.split("=", 1)[1].split(","):
                name, _, rest = item.partition("://")
                with contextlib.suppress(ValueError):
                    ports[name] = int(rest.rsplit(":", 1)[1])
    broker = ports.get("PLAINTEXT", ports.get("SASL_SSL"))
    if broker is not None and "CONTROLLER" in ports:
        return broker, ports["CONTROLLER"]
    return None


def _choose_kafka_ports(props: Path) -> tuple[int, int]:
    """Reuse the last ports when they are still free, else take new ones."""
    previous = _previous_kafka_ports(props)
    if previous and all(_port_is_free(port) for port in previous):
        return previous
    while True:
        broker, controller = _free_port(), _free_port()
        if broker != controller:
            return broker, controller


def set_kafka_proxy(state_dir: Path | str, advertised_port: int) -> int:
    """Give the broker of ``state_dir`` a PROXIED listener; return its real port.

    The listener binds a free loopback port but advertises ``advertised_port``,
    where a fault proxy (``appliance/faults/proxy.py``) forwards to it: a
    client bootstrapped through the proxy then keeps talking through it. Takes
    effect at the broker's next start; kept across restarts.
    """
    base = _kafka_paths(_resolve(state_dir))["base"]
    base.mkdir(parents=True, exist_ok=True)
    backend = _free_port()
    entry = {"advertised_port": advertised_port, "backend_port": backend}
    (base / "proxied.json").write_text(json.dumps(entry) + "\n")
    return backend


def _proxied(paths: dict[str, Path]) -> tuple[int, int] | None:
    """(advertised, backend) ports of the PROXIED listener, when configured."""
    try:
        entry = json.loads((paths["base"] / "proxied.json").read_text())
    except (OSError, ValueError):
        return None
    return int(entry["advertised_port"]), int(entry["backend_port"])


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A throwaway CA (``<name>.pem``, ``<name>.key`` 0600) made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(key), "-out", str(cert), "-days", str(TLS_DAYS),
        "-subj", f"/CN=store-relay throwaway {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


def _openssl(*args: str) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise ServiceError("openssl not found on PATH (apt-get install openssl)")
    _run([tool, *args])


def _make_server_keystore(tls: Path, store_password: Path) -> None:
    """CA, then a 127.0.0.1/localhost server certificate in a PKCS12 keystore."""
    ca_cert, ca_key = make_ca(tls)
    key, csr, cert = tls / "server.key", tls / "server.csr", tls / "server.pem"
    ext = tls / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{LOOPBACK},DNS:localhost\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
        "-out", str(csr), "-subj", f"/CN={LOOPBACK}",
    )  # fmt: skip
    os.chmod(key, 0o600)
    _openssl(
        "x509", "-req", "-sha256", "-in", str(csr), "-CA", str(ca_cert),
        "-CAkey", str(ca_key), "-set_serial", str(secrets.randbits(63)),
        "-days", str(TLS_DAYS), "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    _openssl(
        "pkcs12", "-export", "-name", "kafka", "-in", str(cert), "-inkey", str(key),
        "-certfile", str(ca_cert), "-out", str(tls / "server.p12"),
        "-passout", f"file:{store_password}",
    )  # fmt: skip
    os.chmod(tls / "server.p12", 0o600)


def enable_kafka_sasl_ssl(state_dir: Path | str) -> dict[str, str]:
    """Make the broker of ``state_dir`` listen with SASL_SSL (PLAIN) only.

    Once per state directory: a throwaway CA, a server certificate for
    127.0.0.1 in a PKCS12 keystore, a generated password for the user
    ``relay`` in a 0600 file. Takes effect at the broker's next start and is
    kept across restarts; ``kafka stop --wipe`` removes it. The controller
    listener stays PLAINTEXT on loopback. Refused for the shared state
    directory, whose PLAINTEXT broker every other test uses.
    """
    resolved = _resolve(state_dir)
    if resolved == REPO / ".cache" / "services":
        raise ServiceError(f"SASL_SSL is for a state dir of its own, not {resolved}")
    paths = _kafka_paths(resolved)
    found = _secure(paths)
    if found is not None:
        return found
    tls = paths["tls"]
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    store_password = tls / "keystore.password"
    _write_secret(store_password, secrets.token_urlsafe(24))
    _make_server_keystore(tls, store_password)
    user_password = paths["base"] / f"sasl-{KAFKA_SASL_USER}.password"
    _write_secret(user_password, secrets.token_urlsafe(24))
    entry = {
        "ca_file": str(tls / "ca.pem"),
        "keystore": str(tls / "server.p12"),
        "keystore_password_file": str(store_password),
        "sasl_username": KAFKA_SASL_USER,
        "password_file": str(user_password),
    }
    paths["secure"].write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def _secure(paths: dict[str, Path]) -> dict[str, str] | None:
    """The SASL_SSL material of this broker, when it was enabled."""
    try:
        entry = json.loads(paths["secure"].read_text())
    except (OSError, ValueError):
        return None
    return {str(key): str(value) for key, value in entry.items()}


def _secure_settings(secure: dict[str, str], names: list[str]) -> dict[str, str]:
    """Broker settings of the SASL_SSL listeners ``names`` (server.properties)."""
    user = secure["sasl_username"]
    password = Path(secure["password_file"]).read_text().strip()
    store = Path(secure["keystore_password_file"]).read_text().strip()
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required"
        f' username="{user}" password="{password}" user_{user}="{password}";'
    )
    settings = {
        "sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": secure["keystore"],
        "ssl.keystore.password": store,
        "ssl.key.password": store,
        # The broker's own client (inter-broker listener) trusts the same CA.
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": secure["ca_file"],
        "ssl.endpoint.identification.algorithm": "https",
    }
    for name in names:
        settings[f"listener.name.{name.lower()}.plain.sasl.jaas.config"] = jaas
    return settings


def _client_conf(paths: dict[str, Path]) -> dict[str, Any]:
    """librdkafka settings a readiness probe needs to talk to this broker."""
    secure = _secure(paths)
    if secure is None:
        return {}
    return {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": secure["ca_file"],
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "PLAIN",
        "sasl.username": secure["sasl_username"],
        "sasl.password": Path(secure["password_file"]).read_text().strip(),
    }


def _write_kafka_config(paths: dict[str, Path], broker: int, controller: int) -> None:
    secure = _secure(paths)
    main = "PLAINTEXT" if secure is None else "SASL_SSL"
    listeners = f"{main}://{LOOPBACK}:{broker},CONTROLLER://{LOOPBACK}:{controller}"
    advertised = f"{main}://{LOOPBACK}:{broker}"
    protocols = f"{main}:{main},CONTROLLER:PLAINTEXT"
    proxied = _proxied(paths)
    if proxied is not None:
        listeners += f",PROXIED://{LOOPBACK}:{proxied[1]}"
        advertised += f",PROXIED://{LOOPBACK}:{proxied[0]}"
        protocols += f",PROXIED:{main}"
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller}",
        "listeners": listeners,
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": main,
        "listener.security.protocol.map": protocols,
        "log.dirs": str(paths["data"]),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "min.insync.replicas": "1",
        "num.partitions": "3",
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
    }
    if secure is not None:
        names = [main] + (["PROXIED"] if proxied is not None else [])
        settings.update(_secure_settings(secure, names))
    lines = ["# Generated by scripts/services.py; rewritten on every start."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    paths["props"].write_text("\n".join(lines) + "\n")
    if secure is not None:
        os.chmod(paths["props"], 0o600)  # it holds the passwords
    log4j = [
        "# Generated by scripts/services.py: everything to stdout,",
        "# which the script redirects into kafka.log.",
        "status = warn",
        "appender.out.type = Console",
        "appender.out.name = STDOUT",
        "appender.out.layout.type = PatternLayout",
        "appender.out.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.out.ref = STDOUT",
        "logger.request.name = kafka.request.logger",
        "logger.request.level = WARN",
        "logger.controller.name = kafka.controller",
        "logger.controller.level = INFO",
    ]
    paths["log4j"].write_text("\n".join(log4j) + "\n")


def _new_cluster_id() -> str:
    """A random Kafka Uuid: 16 bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _format_kafka_storage(paths: dict[str, Path], libs: Path) -> bool:
    """Format the KRaft log dir unless done before; True when formatted now."""
    if (paths["data"] / "meta.properties").exists():
        return False
    cluster_id = _new_cluster_id()
    cmd = [
        _java(),
        "-cp",
        f"{libs}/*",
        f"-Dlog4j2.configurationFile={paths['log4j']}",
        "kafka.tools.StorageTool",
        "format",
        # An id may start with '-': it must be glued to its option.
        f"--cluster-id={cluster_id}",
        "--config",
        str(paths["props"]),
    ]
    _run(cmd, cwd=paths["base"])
    paths["cluster_id"].write_text(cluster_id + "\n")
    return True


def _kafka_needles(paths: dict[str, Path]) -> tuple[str, ...]:
    return ("kafka.Kafka", str(paths["props"]))


def _kafka_metadata_ok(
    bootstrap: str, timeout: float, conf: dict[str, Any] | None = None
) -> bool:
    """Ask the broker for cluster metadata; True when it lists a broker."""
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:
        if conf:
            raise ServiceError(
                "a SASL_SSL broker is probed with confluent_kafka"
            ) from exc
        return _kafka_metadata_raw(bootstrap, timeout)
    client = AdminClient(
        {"bootstrap.servers": bootstrap, "log_level": 0, **(conf or {})}
    )
    try:
        metadata = client.list_topics(timeout=timeout)
    except KafkaException:  # timed out or refused: not ready yet
        return False
    return bool(metadata.brokers)


def _kafka_metadata_raw(bootstrap: str, timeout: float) -> bool:
    """Stdlib fallback: a Metadata v4 request for no topics, read the brokers."""
    host, _, port = bootstrap.rpartition(":")
    client_id = b"services.py"
    body = struct.pack(">i", 0) + b"\x00"  # no topics; no auto-creation
    header = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id
    request = header + body
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            reply = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    # correlation id (4) + throttle time (4), then the broker array's length.
    if len(reply) < 12 or struct.unpack(">i", reply[:4])[0] != 1:
        return False
    brokers: int = struct.unpack(">i", reply[8:12])[0]
    return brokers > 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return bytes(chunks)


def _kafka_ready(
    port: int, timeout: float = 5.0, conf: dict[str, Any] | None = None
) -> bool:
    if not _tcp_answers(port):
        return False
    return _kafka_metadata_ok(f"{LOOPBACK}:{port}", timeout, conf)


def _kafka_entry(paths: dict[str, Path], pid: int, port: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "bootstrap": f"{LOOPBACK}:{port}",
        "pid": pid,
        "log": str(paths["log"]),
    }
    secure = _secure(paths)
    if secure is not None:
        entry["security_protocol"] = "SASL_SSL"
        entry["sasl_mechanism"] = "PLAIN"
        entry["sasl_username"] = secure["sasl_username"]
        entry["password_file"] = secure["password_file"]
        entry["ca_file"] = secure["ca_file"]
    return entry


def _running_kafka(state_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a live broker for this state dir, from state or pid file."""
    paths = _kafka_paths(state_dir)
    needles = _kafka_needles(paths)
    entry = load_state(state_dir).get("kafka") or {}
    candidates: list[int] = []
    if isinstance(entry.get("pid"), int):
        candidates.append(entry["pid"])
    with contextlib.suppress(OSError, ValueError):
        candidates.append(int(paths["pidfile"].read_text().strip()))
    ports = _previous_kafka_ports(paths["props"])
    for pid in candidates:
        if ports and _is_ours(pid, *needles):
            return pid, ports[0]
    return None


def _launch_kafka(state_dir: Path, libs: Path) -> tuple[int, int, bool]:
    """Configure, format and spawn a detached broker: (pid, port, formatted)."""
    paths = _kafka_paths(state_dir)
    paths["base"].mkdir(parents=True, exist_ok=True)
    broker, controller = _choose_kafka_ports(paths["props"])
    _write_kafka_config(paths, broker, controller)
    formatted = _format_kafka_storage(paths, libs)
    _rotate(paths["log"])
    argv = [
        _java(),
        KAFKA_HEAP,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-XX:ErrorFile={paths['base']}/hs_err_pid%p.log",
        f"-Dlog4j2.configurationFile={paths['log4j']}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(paths["props"]),
    ]
    log_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    # posix_spawn rather than Popen: the broker must outlive this process, and
    # a Popen object dropped while its child runs raises a ResourceWarning
    # (an error under pytest's "warnings as errors").
    pid = os.posix_spawn(
        argv[0],
        argv,
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(paths["log"]), log_flags, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    paths["pidfile"].write_text(f"{pid}\n")
    return pid, broker, formatted


def _wait_kafka(state_dir: Path, pid: int, port: int) -> None:
    paths = _kafka_paths(state_dir)
    deadline = time.monotonic() + KAFKA_START_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ServiceError(f"Kafka exited during start-up; see {paths['log']}")
        if _kafka_ready(port, conf=_client_conf(paths)):
            return
        time.sleep(0.5)
    _terminate(pid, signal.SIGTERM, _kafka_needles(paths))
    raise ServiceError(
        f"Kafka not ready after {KAFKA_START_TIMEOUT:.0f}s; see {paths['log']}"
    )


def start_kafka(
    state_dir: Path | None = None, *, sasl_ssl: bool = False
) -> dict[str, Any]:
    """Start the broker unless it already runs and answers; return its entry.

    ``sasl_ssl`` first calls :func:`enable_kafka_sasl_ssl` (own state dir only).
    """
    state_dir = _resolve(state_dir)
    _make_state_dir(state_dir)
    with _locked(state_dir / ".lock"):
        if sasl_ssl and _secure(_kafka_paths(state_dir)) is None:
            if _running_kafka(state_dir) is not None:
                raise ServiceError("a PLAINTEXT broker runs here; stop it first")
            enable_kafka_sasl_ssl(state_dir)
        pending = _kafka_begin(state_dir)
        return _kafka_finish(state_dir, pending)


class _KafkaLaunch(NamedTuple):
    pid: int
    port: int
    started: float | None  # monotonic start time; None when adopted
    formatted: bool = False


def _kafka_begin(state_dir: Path) -> _KafkaLaunch:
    """Adopt a running, answering broker or spawn a new one (without waiting)."""
    paths = _kafka_paths(state_dir)
    running = _running_kafka(state_dir)
    if running is not None:
        pid, port = running
        if _kafka_ready(port, conf=_client_conf(paths)):
            return _KafkaLaunch(pid, port, None)
        # Alive but silent: give it the start-up budget, else replace it.
        try:
            _wait_kafka(state_dir, pid, port)
        except ServiceError:
            _terminate(pid, signal.SIGTERM, _kafka_needles(paths))
        else:
            return _KafkaLaunch(pid, port, None)
    libs, _ = ensure_kafka_jars()
    started = time.monotonic()
    pid, port, formatted = _launch_kafka(state_dir, libs)
    return _KafkaLaunch(pid, port, started, formatted)


def _kafka_finish(state_dir: Path, launch: _KafkaLaunch) -> dict[str, Any]:
    """Wait for a freshly spawned broker, then record it in the state file."""
    took: float | None = None
    if launch.started is not None:
        _wait_kafka(state_dir, launch.pid, launch.port)
        took = round(time.monotonic() - launch.started, 1)
    entry = _kafka_entry(_kafka_paths(state_dir), launch.pid, launch.port)
    _update_state(state_dir, "kafka", entry)
    return {**entry, "_started_in": took, "_created": launch.formatted}


def stop_kafka(state_dir: Path | None = None, *, wipe: bool = False) -> str:
    """SIGTERM the broker, SIGKILL it after STOP_TIMEOUT; optionally wipe data."""
    state_dir = _resolve(state_dir)
    if not state_dir.exists():
        return "not running"
    with _locked(state_dir / ".lock"):
        paths = _kafka_paths(state_dir)
        running = _running_kafka(state_dir)
        outcome = "not running"
        if running is not None:
            outcome = _terminate(running[0], signal.SIGTERM, _kafka_needles(paths))
        _update_state(state_dir, "kafka", None)
        paths["pidfile"].unlink(missing_ok=True)
        if wipe:
            shutil.rmtree(paths["base"], ignore_errors=True)
            outcome += ", data wiped"
        return outcome


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _pg_paths(state_dir: Path) -> dict[str, Path]:
    return {
        "data": state_dir / "pg",
        "run": state_dir / "pg-run",
        "logdir": state_dir / "pg-log",
        "log": state_dir / "pg-log" / "postgresql.log",
        "password": state_dir / "pg-superuser.password",
        "conf": state_dir / "pg" / "appliance-services.conf",
    }


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: switch to the postgres system user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_SERVER_USER, "--", *cmd]
    return cmd


def _server_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(PG_SERVER_USER)
    except KeyError as exc:
        raise ServiceError(
            f"no '{PG_SERVER_USER}' system user (apt-get install postgresql)"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _server_dir(path: Path, mode: int) -> None:
    """A directory owned by the server user."""
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = _server_ids()
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def _ensure_traversable(state_dir: Path) -> None:
    """Let the server user reach the state dir: o+x inside <repo>/.cache only."""
    if os.geteuid() != 0:
        return
    cache = REPO / ".cache"
    if state_dir == cache or cache in state_dir.parents:
        walk = state_dir
        while True:
            mode = walk.stat().st_mode
            if not mode & 0o001:
                os.chmod(walk, (mode & 0o7777) | 0o001)
            if walk == cache:
                break
            walk = walk.parent
    probe = subprocess.run(
        _as_server_user(["test", "-x", str(state_dir)]),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        blocked = [
            str(parent)
            for parent in reversed(state_dir.parents)
            if not parent.stat().st_mode & 0o001
        ]
        raise ServiceError(
            f"user {PG_SERVER_USER} cannot reach {state_dir}; directories without "
            f"o+x: {', '.join(blocked) or '?'} (or set APPLIANCE_SERVICES_DIR)"
        )


def _pg(tool: str) -> str:
    path = PG_BINDIR / tool
    if not path.is_file():
        raise ServiceError(f"{path} missing (apt-get install postgresql-15)")
    return str(path)


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)


def _initdb(state_dir: Path) -> bool:
    """Create the cluster unless it exists; True when it was created now."""
    paths = _pg_paths(state_dir)
    if (paths["data"] / "PG_VERSION").exists():
        return False
    if paths["data"].exists():
        shutil.rmtree(paths["data"])  # a half-made cluster from an earlier crash
    _server_dir(paths["data"], 0o700)
    password = secrets.token_urlsafe(24)
    _write_secret(paths["password"], password)
    # initdb runs as the server user, which cannot read the root-only copy.
    transient = paths["run"] / f"initdb-{os.getpid()}.pw"
    _write_secret(transient, password)
    uid, gid = _server_ids()
    try:
        if os.geteuid() == 0:
            os.chown(transient, uid, gid)
        cmd = [
            _pg("initdb"),
            "-D",
            str(paths["data"]),
            "-U",
            PG_SUPERUSER,
            "-A",
            "scram-sha-256",
            f"--pwfile={transient}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]
        _run(_as_server_user(cmd), cwd=state_dir)
    finally:
        transient.unlink(missing_ok=True)
    with (paths["data"] / "postgresql.conf").open("a", encoding="utf-8") as fh:
        fh.write("\n# Loopback, port and paths set by scripts/services.py\n")
        fh.write(f"include_if_exists = '{paths['conf'].name}'\n")
    return True


def _previous_pg_port(conf: Path) -> int | None:
    try:
        text = conf.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "port":
            with contextlib.suppress(ValueError):
                return int(value.strip())
    return None


def _write_pg_conf(state_dir: Path, port: int) -> None:
    paths = _pg_paths(state_dir)
    socket_dir = str(paths["run"])
    if len(f"{socket_dir}/.s.PGSQL.{port}.lock") > MAX_SOCKET_PATH:
        socket_dir = ""  # path too long for a unix socket: TCP only
    lines = [
        "# Generated by scripts/services.py; rewritten on every start.",
        f"listen_addresses = '{LOOPBACK}'",
        f"port = {port}",
        f"unix_socket_directories = '{socket_dir}'",
        # Honest durability: the relay's throughput numbers are measured here.
        "fsync = on",
        "synchronous_commit = on",
        "full_page_writes = on",
        "logging_collector = off",
        "log_line_prefix = '%m [%p] %q%u@%d '",
        "log_timezone = 'UTC'",
        "timezone = 'UTC'",
        "max_connections = 100",
    ]
    conf = paths["conf"]
    conf.write_text("\n".join(lines) + "\n")
    uid, gid = _server_ids()
    if os.geteuid() == 0:
        os.chown(conf, uid, gid)
    os.chmod(conf, 0o600)


def _postmaster_pid(data: Path) -> tuple[int, int] | None:
    """(pid, port) from postmaster.pid, when the file exists and is complete."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        return int(lines[0]), int(lines[3])
    except (IndexError, ValueError):
        return None


def _pg_needles(state_dir: Path) -> tuple[str, ...]:
    return ("postgres", str(_pg_paths(state_dir)["data"]))


def _pg_ready(port: int) -> bool:
    probe = subprocess.run(
        [_pg("pg_isready"), "-q", "-h", LOOPBACK, "-p", str(port), "-t", "3"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _running_pg(state_dir: Path) -> tuple[int, int] | None:
    found = _postmaster_pid(_pg_paths(state_dir)["data"])
    if found and _is_ours(found[0], *_pg_needles(state_dir)):
        return found
    return None


def _create_databases(state_dir: Path, port: int) -> None:
    password = _pg_paths(state_dir)["password"].read_text().strip()
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    base = [_pg("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"]
    base += ["-h", LOOPBACK, "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres"]
    existing = set(
        _run([*base, "-c", "SELECT datname FROM pg_database"], env=env).split()
    )
    for name in PG_DATABASES:
        if name not in existing:
            _run([*base, "-c", f'CREATE DATABASE "{name}"'], env=env)


def _pg_entry(state_dir: Path, pid: int, port: int) -> dict[str, Any]:
    paths = _pg_paths(state_dir)
    return {
        "host": LOOPBACK,
        "port": port,
        "user": PG_SUPERUSER,
        "password_file": str(paths["password"]),
        "pid": pid,
        "log": str(paths["log"]),
    }


def _pg_start_locked(state_dir: Path) -> dict[str, Any]:
    paths = _pg_paths(state_dir)
    running = _running_pg(state_dir)
    if running is not None:
        pid, port = running
        deadline = time.monotonic() + PG_START_TIMEOUT
        while not _pg_ready(port):
            if time.monotonic() > deadline or not _alive(pid):
                raise ServiceError(f"PostgreSQL pid {pid} does not answer on {port}")
            time.sleep(0.5)
        _create_databases(state_dir, port)
        entry = _pg_entry(state_dir, pid, port)
        _update_state(state_dir, "postgres", entry)
        return {**entry, "_started_in": None}

    _ensure_traversable(state_dir)
    _server_dir(paths["run"], 0o755)
    _server_dir(paths["logdir"], 0o755)
    started = time.monotonic()
    created = _initdb(state_dir)
    previous = _previous_pg_port(paths["conf"])
    port = previous if previous and _port_is_free(previous) else _free_port()
    _write_pg_conf(state_dir, port)
    _rotate(paths["log"])
    cmd = [
        _pg("pg_ctl"),
        "-D",
        str(paths["data"]),
        "-l",
        str(paths["log"]),
        "-w",
        "-t",
        f"{PG_START_TIMEOUT:.0f}",
        "start",
    ]
    try:
        _run(_as_server_user(cmd), cwd=state_dir)
    except ServiceError as exc:
        raise ServiceError(f"{exc}; see {paths['log']}") from exc
    found = _postmaster_pid(paths["data"])
    if found is None:
        raise ServiceError(
            f"PostgreSQL started but wrote no postmaster.pid; see {paths['log']}"
        )
    pid = found[0]
    deadline = time.monotonic() + PG_START_TIMEOUT
    while not _pg_ready(port):
        if time.monotonic() > deadline or not _alive(pid):
            raise ServiceError(f"PostgreSQL not ready; see {paths['log']}")
        time.sleep(0.2)
    _create_databases(state_dir, port)
    entry = _pg_entry(state_dir, pid, port)
    _update_state(state_dir, "postgres", entry)
    took = round(time.monotonic() - started, 1)
    return {**entry, "_started_in": took, "_created": created}


def start_postgres(state_dir: Path | None = None) -> dict[str, Any]:
    """Start the cluster unless it already runs and answers; return its entry."""
    state_dir = _resolve(state_dir)
    _make_state_dir(state_dir)
    with _locked(state_dir / ".lock"):
        return _pg_start_locked(state_dir)


def stop_postgres(state_dir: Path | None = None, *, wipe: bool = False) -> str:
    """Fast-shutdown the cluster by pid (SIGINT), SIGKILL after STOP_TIMEOUT.

    SIGINT rather than SIGTERM: PostgreSQL reads SIGTERM as a *smart*
    shutdown, which waits for every client to disconnect, so a connection
    left open by a test would make ``down`` hang until the SIGKILL.
    """
    state_dir = _resolve(state_dir)
    if not state_dir.exists():
        return "not running"
    with _locked(state_dir / ".lock"):
        paths = _pg_paths(state_dir)
        running = _running_pg(state_dir)
        outcome = "not running"
        if running is not None:
            outcome = _terminate(running[0], signal.SIGINT, _pg_needles(state_dir))
        _update_state(state_dir, "postgres", None)
        if wipe:
            for key in ("data", "run", "logdir"):
                shutil.rmtree(paths[key], ignore_errors=True)
            paths["password"].unlink(missing_ok=True)
            outcome += ", data wiped"
        return outcome


# --------------------------------------------------------------------------
# both
# --------------------------------------------------------------------------


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if not key.startswith("_")}


def ensure_up(state_dir: Path | None = None) -> dict[str, Any]:
    """Make sure both services run and answer; return the state file's content.

    Idempotent and safe to call from several processes at once. The broker is
    spawned first and PostgreSQL is brought up while the JVM boots.
    """
    return _ensure_up(_resolve(state_dir))[0]


def _ensure_up(state_dir: Path) -> tuple[dict[str, Any], list[str]]:
    _make_state_dir(state_dir)
    notes: list[str] = []
    _, fetched = ensure_kafka_jars()
    if fetched is not None:
        notes.append(f"kafka jars: fetched from Maven Central in {fetched:.1f}s")
    with _locked(state_dir / ".lock"):
        pending = _kafka_begin(state_dir)
        pg = _pg_start_locked(state_dir)
        kafka = _kafka_finish(state_dir, pending)
    notes.append(_summary("postgres", pg))
    notes.append(_summary("kafka", kafka))
    return {"kafka": _public(kafka), "postgres": _public(pg)}, notes


def _summary(name: str, entry: dict[str, Any]) -> str:
    took = entry.get("_started_in")
    how = "already running" if took is None else f"started in {took:.1f}s"
    if entry.get("_created"):
        how = f"created and {how}"
    where = entry.get("bootstrap") or f"{entry.get('host')}:{entry.get('port')}"
    return f"{name}: up at {where}, pid {entry['pid']}, {how}, log {entry['log']}"


def stop_all(state_dir: Path | None = None, *, wipe: bool = False) -> list[str]:
    """Stop both services (Kafka first); ``wipe`` also removes their data."""
    resolved = _resolve(state_dir)
    notes = [
        f"kafka: {stop_kafka(resolved, wipe=wipe)}",
        f"postgres: {stop_postgres(resolved, wipe=wipe)}",
    ]
    if wipe and resolved.exists():
        _state_file(resolved).unlink(missing_ok=True)
        (resolved / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            resolved.rmdir()
    return notes


def status(state_dir: Path | None = None) -> tuple[bool, list[str]]:
    """(both up, one line per service). Checks state, pid and port."""
    resolved = _resolve(state_dir)
    state = load_state(resolved)
    lines: list[str] = []
    healthy = True

    kafka = state.get("kafka")
    if not kafka:
        healthy = False
        lines.append("kafka: down (not in state file)")
    else:
        port = int(str(kafka["bootstrap"]).rpartition(":")[2])
        paths = _kafka_paths(resolved)
        ok = _is_ours(int(kafka["pid"]), *_kafka_needles(paths)) and _kafka_ready(
            port, conf=_client_conf(paths)
        )
        healthy &= ok
        word = "up" if ok else "DOWN (pid gone or broker silent)"
        lines.append(f"kafka: {word} at {kafka['bootstrap']}, pid {kafka['pid']}")

    pg = state.get("postgres")
    if not pg:
        healthy = False
        lines.append("postgres: down (not in state file)")
    else:
        alive = _is_ours(int(pg["pid"]), *_pg_needles(resolved))
        ok = alive and _pg_ready(int(pg["port"]))
        healthy &= ok
        word = "up" if ok else "DOWN (pid gone or not accepting connections)"
        lines.append(f"postgres: {word} at {pg['host']}:{pg['port']}, pid {pg['pid']}")
    return healthy, lines


def env_lines(state_dir: Path | None = None) -> list[str]:
    """``export NAME=value`` lines for the relay's configuration and tests."""
    state = load_state(state_dir)
    kafka, pg = state.get("kafka"), state.get("postgres")
    if not kafka or not pg:
        raise ServiceError("services are not up; run: python scripts/services.py up")
    values = {
        "APPLIANCE_KAFKA_BOOTSTRAP": kafka["bootstrap"],
        "APPLIANCE_PG_HOST": pg["host"],
        "APPLIANCE_PG_PORT": pg["port"],
        "APPLIANCE_PG_USER": pg["user"],
        "APPLIANCE_PG_PASSWORD_FILE": pg["password_file"],
    }
    return [
        f"export {name}={shlex.quote(str(value))}" for name, value in values.items()
    ]


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="services.py",
        description="Run Kafka and PostgreSQL on loopback for development and CI.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: $APPLIANCE_SERVICES_DIR or <repo>/.cache/services",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="fetch jars if needed, start both, wait until ready")
    down = sub.add_parser("down", help="stop both (data kept unless --wipe)")
    down.add_argument("--wipe", action="store_true", help="also delete their data")
    sub.add_parser("status", help="exit 0 when both are up")
    sub.add_parser("env", help="print export lines for the running services")
    for name in ("kafka", "postgres"):
        one = sub.add_parser(name, help=f"start or stop {name} alone")
        one.add_argument("action", choices=("start", "stop"))
        one.add_argument("--wipe", action="store_true", help="with stop: delete data")
        if name == "kafka":
            one.add_argument(
                "--sasl-ssl",
                action="store_true",
                help="with start: SASL_SSL (PLAIN) listener, own --state-dir only",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir = _resolve(args.state_dir)
    try:
        if args.command == "up":
            _, notes = _ensure_up(state_dir)
            print("\n".join(notes))
        elif args.command == "down":
            print("\n".join(stop_all(state_dir, wipe=args.wipe)))
        elif args.command == "status":
            healthy, lines = status(state_dir)
            print("\n".join(lines))
            return 0 if healthy else 1
        elif args.command == "env":
            print("\n".join(env_lines(state_dir)))
        elif args.command == "kafka":
            if args.action == "start":
                _, fetched = ensure_kafka_jars()
                if fetched is not None:
                    print(f"kafka jars: fetched from Maven Central in {fetched:.1f}s")
                entry = start_kafka(state_dir, sasl_ssl=args.sasl_ssl)
                print(_summary("kafka", entry))
            else:
                print(f"kafka: {stop_kafka(state_dir, wipe=args.wipe)}")
        elif args.action == "start":
            print(_summary("postgres", start_postgres(state_dir)))
        else:
            print(f"postgres: {stop_postgres(state_dir, wipe=args.wipe)}")
    except ServiceError as exc:
        print(f"services.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
