"""What ``appliance check-config`` checks beyond the settings' values.

:mod:`appliance.config` validates values; this module opens what they point
to, as the leg's own user would at start, so a technician learns about a
missing secret or an unwritable database directory from one command instead
of from a leg that restarts in a loop:

- secrets (IBM i password, Kafka password or OAuth file, ODH password): found
  as a systemd credential or as the named file, not empty, and the file
  neither group- nor world-readable;
- SASL over TLS: a user name with PLAIN/SCRAM;
- enricher scripts and JVM jars: present and readable; a script (code the
  enricher runs) must not be writable by group or others;
- the pipeline database's directory: present (or creatable) and writable;
- the CA bundle, when one is named.

Invariants: a secret's content is never read into a finding (only its
length is compared with zero); every finding names the dotted setting, the
path and what was expected. ERROR findings make the command exit non-zero.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance.config import BoxSettings, HubSettings, KafkaSection

ERROR = "ERROR"
WARNING = "WARNING"


@dataclass(frozen=True)
class Finding:
    """One thing a leg would trip over at start."""

    level: str
    key: str
    message: str

    def line(self) -> str:
        return f"{self.level} {self.key}: {self.message}"


def check_box(settings: BoxSettings) -> list[Finding]:
    """Findings for the store box's settings (every box leg reads them)."""
    found = _secret("ibmi.password_file", "ibmi-password", settings.ibmi.password_file)
    found += _kafka(settings.kafka)
    found += _database_dir(settings.pipeline.db_path)
    for n, script in enumerate(settings.enricher.scripts):
        found += _code(f"enricher.scripts[{n}].path", script.path, script.language)
    if any(s.language != "python" for s in settings.enricher.scripts):
        for n, jar in enumerate(settings.enricher.classpath):
            found += _readable(f"enricher.classpath[{n}]", jar, "a jar of the JVM")
    return found


def check_hub(settings: HubSettings) -> list[Finding]:
    """Findings for the hub sink's settings."""
    found = _secret(
        "postgres.password_file", "odh-password", settings.postgres.password_file
    )
    return found + _kafka(settings.kafka)


def _kafka(kafka: KafkaSection) -> list[Finding]:
    found: list[Finding] = []
    for key in ("ca_file", "oauth_ca_file"):
        bundle = getattr(kafka, key, None)
        if bundle is not None:
            found += _readable(f"kafka.{key}", Path(bundle), "a PEM CA bundle")
    if kafka.security_protocol != "SASL_SSL":
        return found
    if kafka.sasl_mechanism == "OAUTHBEARER":
        for key in ("oauth_token_file", "oauth_credentials_file"):
            path = getattr(kafka, key, None)
            if path is not None:
                found += _secret(f"kafka.{key}", "", Path(path))
        if kafka.oauth_credentials_file is not None and not found:
            found += _service_account(kafka)
        return found
    if not kafka.sasl_username:
        found.append(
            Finding(
                ERROR,
                "kafka.sasl_username",
                f"empty; SASL {kafka.sasl_mechanism} needs the account's user name",
            )
        )
    return found + _secret("kafka.password_file", "kafka-password", kafka.password_file)


# Where systemd's LoadCredential[Encrypted]= looks for a credential given by
# name only: the units load the box's sealed secrets from there.
CREDSTORES = tuple(
    Path(root) / store
    for root in ("/etc", "/run", "/usr/lib")
    for store in ("credstore.encrypted", "credstore")
)


def _service_account(kafka: KafkaSection) -> list[Finding]:
    """The key as the shipper loads it: JSON, RSA key, https token_uri, account."""
    from appliance import gcp_token
    from appliance.errors import ConfigError

    assert kafka.oauth_credentials_file is not None
    try:
        gcp_token.GoogleTokenSource.from_credentials(
            kafka.oauth_credentials_file, kafka.oauth_service_account
        )
    except ConfigError as exc:  # names the file and field, never the key
        return [Finding(ERROR, "kafka.oauth_credentials_file", str(exc))]
    return []


def _secret(key: str, credential: str, path: Path | None) -> list[Finding]:
    """A secret as the leg finds it: a credential first, else the file."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    places = [Path(directory)] if directory else []
    places += CREDSTORES
    if credential and any((p / credential).is_file() for p in places):
        return []
    if path is None:
        where = f"credential {credential!r} absent" if credential else "unset"
        return [Finding(ERROR, key, f"unset and {where}; expected a file holding it")]
    try:
        info = path.stat()
    except FileNotFoundError:
        return [Finding(ERROR, key, f"{path} does not exist")]
    except OSError as exc:
        return [Finding(ERROR, key, f"{path} unreadable: {exc.strerror}")]
    if not stat.S_ISREG(info.st_mode):
        return [Finding(ERROR, key, f"{path} is not a regular file")]
    found: list[Finding] = []
    if not os.access(path, os.R_OK):
        found.append(Finding(ERROR, key, f"{path} is not readable by this user"))
    elif info.st_size == 0 or not path.read_bytes().strip():
        found.append(Finding(ERROR, key, f"{path} is empty; expected the secret"))
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        found.append(
            Finding(
                ERROR,
                key,
                f"{path} has mode {mode:04o}; expected 0600 or 0400"
                " (no access for group or others)",
            )
        )
    return found


def _readable(key: str, path: Path, what: str) -> list[Finding]:
    if not path.is_file():
        return [Finding(ERROR, key, f"{path} does not exist; expected {what}")]
    if not os.access(path, os.R_OK):
        return [Finding(ERROR, key, f"{path} is not readable by this user")]
    return []


def _code(key: str, path: Path, language: str = "") -> list[Finding]:
    found = _readable(key, path, "the script file")
    if found:
        return found
    if language == "python":
        try:
            compile(path.read_bytes(), str(path), "exec")
        except (SyntaxError, ValueError) as exc:
            where = f"line {exc.lineno}" if isinstance(exc, SyntaxError) else ""
            return [Finding(ERROR, key, f"{path} does not compile {where}: {exc}")]
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        found.append(
            Finding(
                ERROR,
                key,
                f"{path} has mode {mode:04o}: writable by group or others, who"
                " could change code the enricher runs; expected 0644 or stricter",
            )
        )
    return found


def _database_dir(db_path: Path) -> list[Finding]:
    key = "pipeline.db_path"
    directory = db_path.parent
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [Finding(ERROR, key, f"{probe} is not a directory")]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            Finding(
                ERROR,
                key,
                f"{probe} is not writable by this user; the database, its WAL"
                " and journal files are created there",
            )
        ]
    if probe != directory:
        return [
            Finding(
                WARNING,
                key,
                f"{directory} does not exist yet; the first leg creates it",
            )
        ]
    return []
