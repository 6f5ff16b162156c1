"""Settings: one TOML file plus environment overrides, validated once at start.

The box (``BoxSettings``) and the hub (``HubSettings``) each read one TOML file.
Any value can be overridden from the environment: ``APPLIANCE_KAFKA__BOOTSTRAP``
overrides ``[kafka] bootstrap``. Unknown keys are rejected. Every error names
the dotted key and the bad value.

Secrets never live in the TOML: a setting names a file (``*_file``) or, under
systemd, a credential that ``LoadCredentialEncrypted=`` placed in
``$CREDENTIALS_DIRECTORY``. :func:`read_secret` resolves both.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from appliance.errors import ConfigError

DEFAULT_BOX_CONFIG = Path("/etc/appliance/appliance.toml")
DEFAULT_HUB_CONFIG = Path("/etc/appliance/hub.toml")
_T = TypeVar("_T", bound="FileSettings")
_DEBIAN_JARS = ("/usr/share/java/bsh.jar", "/usr/share/java/rhino.jar")


def _is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: traffic that never leaves the box."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Section(BaseModel):
    """A TOML table: unknown keys are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSection(Section):
    id: str = Field(
        pattern=r"^[A-Z0-9]{2,12}$",
        description="Store id, upper-case letters and digits; the Kafka key.",
    )
    timezone: str = Field(
        "America/Martinique",
        description="The IBM i's QTIMZON as a tz name; journal times are local.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                "expected a tz database name such as America/Martinique"
            ) from exc
        return value


class IbmiSection(Section):
    dialect: Literal["ibmi", "emulator"] = Field(
        "ibmi",
        description="'ibmi' wraps DISPLAY_JOURNAL in TABLE(...); 'emulator' does not.",
    )
    driver: str = Field("IBM i Access ODBC Driver", description="unixODBC driver name.")
    host: str = Field("127.0.0.1", description="Host of the IBM i (or emulator).")
    port: int | None = Field(
        None, ge=1, le=65535, description="Port, when the driver takes one."
    )
    database: str = Field("*LOCAL", description="Database (emulator: PG database).")
    user: str = Field("RELAY", description="User profile with *USE on the journal.")
    password_file: Path | None = Field(
        None, description="File holding the password; else credential 'ibmi-password'."
    )
    journal_library: str = Field("MAG", description="Library of the journal.")
    journal_name: str = Field("QSQJRN", description="Name of the journal.")
    table_library: str = Field("MAG", description="Library of the relayed tables.")
    tables: list[str] = Field(
        default_factory=lambda: ["ARTICLE", "PRIX", "STOCK"],
        description="System names of the relayed tables.",
    )
    window: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Most entries read per journal call (at 50 ms per call,"
        " 1,000 gave 12,200 entries/s, 2,000 gave 18,200: docs/benchmarks.md).",
    )
    poll_interval_s: float = Field(
        1.0, ge=0.05, le=60, description="Pause when the journal has nothing new."
    )
    wait_s: int = Field(
        0,
        ge=0,
        le=60,
        description="0: poll every poll_interval_s. 1..60: at the journal head,"
        " one DISPLAY_JOURNAL call with EOF_DELAY waits up to this many seconds"
        " for the next entry. At most 60, under half the miner unit's"
        " WatchdogSec (180).",
    )
    ccsid_overrides: dict[str, int] = Field(
        default_factory=dict,
        description="TABLE.COLUMN (or TABLE.*) -> CCSID to decode with.",
    )
    on_data_gap: Literal["stop", "resend"] = Field(
        "stop",
        description="After a data gap: 'stop' reading until an operator acts;"
        " 'resend' resumes at the oldest entry left and has the guardian check"
        " and repair every relayed table.",
    )
    preflight: bool = Field(
        True, description="Check at start the journal settings that risk data."
    )


class PipelineSection(Section):
    db_path: Path = Field(
        Path("/var/lib/appliance/pipeline.db"),
        description="The SQLite database (WAL) shared by the legs.",
    )
    replay_window_h: float = Field(
        72, ge=0, description="Hours a confirmed message is kept for replay."
    )
    processed_keep_h: float = Field(
        6,
        ge=0,
        description="Hours raw journal entries and changes are kept once relayed"
        " on; then the shipper's sweep prunes them (every minute, at most"
        " 10,000 rows of each: about 40 ms in its write transaction). Rows not"
        " done yet, the newest of each table,"
        " those of open commit cycles and those a parked dead letter names"
        " are kept.",
    )
    batch: int = Field(500, ge=1, le=50_000, description="Rows a leg moves per step.")
    outbox_budget_rows: int = Field(
        200_000,
        ge=1,
        description="Unconfirmed outbox rows at which the miner pauses (alarm).",
    )
    outbox_budget_age_s: float = Field(
        3 * 86_400,
        gt=0,
        description="Age of the oldest unconfirmed row at which the miner pauses.",
    )
    outbox_slow_at: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Share of either budget from which the miner slows down.",
    )


class ScriptSection(Section):
    name: str = Field(description="Field the script's result is stored under.")
    language: Literal["beanshell", "javascript", "python"] = Field(
        description="Interpreter: BeanShell or Rhino in the JVM, or Python."
    )
    path: Path = Field(description="Script file; defines function enrich(change).")


class EnricherSection(Section):
    scripts: list[ScriptSection] = Field(
        default_factory=list, description="Scripts run in order on every change."
    )
    timeout_ms: int = Field(
        2000, ge=10, le=60_000, description="Time limit of one script call."
    )
    classpath: list[Path] = Field(
        default_factory=lambda: [Path(p) for p in _DEBIAN_JARS],
        description="Jars of the JVM (BeanShell, Rhino).",
    )
    lanes: list[int] = Field(
        default_factory=lambda: [70, 30],
        description="message_interest lower bounds of lanes 0, 1, ...; last lane rest.",
    )


class KafkaSection(Section):
    bootstrap: str = Field("127.0.0.1:9092", description="Bootstrap servers.")
    changes_topic: str = Field("odh.changes", description="Topic of change events.")
    confirm_topic: str = Field("odh.confirm", description="Topic of confirmations.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT only on loopback; SASL_SSL across networks."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-512", "OAUTHBEARER"] = Field(
        "PLAIN", description="SASL mechanism when security_protocol is SASL_SSL."
    )
    sasl_username: str = Field("", description="SASL user name.")
    password_file: Path | None = Field(
        None, description="SASL password file; else credential 'kafka-password'."
    )
    ca_file: Path | None = Field(
        None, description="CA bundle for TLS; unset: the system's CA store."
    )
    oauth_credentials_file: Path | None = Field(
        None,
        description="OAUTHBEARER (Google Managed Kafka): service account JSON key"
        " (no group or other access, e.g. 0600); the relay mints its own access"
        " tokens. The default for store boxes.",
    )
    oauth_token_file: Path | None = Field(
        None,
        description="OAUTHBEARER: access token file that an agent of the host keeps"
        " fresh (metadata server poller, sidecar). Either this or"
        " oauth_credentials_file.",
    )
    oauth_service_account: str = Field(
        "",
        description="OAUTHBEARER: service account email, the token's 'sub'; with"
        " oauth_credentials_file, defaults to the key's client_email.",
    )
    oauth_ca_file: Path | None = Field(
        None,
        description="CA bundle for the TLS of the key's token_uri; unset: the"
        " system's CA store (Google's endpoint).",
    )
    oauth_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Bound on each network step (connect, send, read) of a token"
        " request.",
    )

    @model_validator(mode="after")
    def _plaintext_stays_on_loopback(self) -> KafkaSection:
        if self.security_protocol != "PLAINTEXT":
            return self
        hosts = [
            part.rsplit(":", 1)[0].strip("[]") for part in self.bootstrap.split(",")
        ]
        if not self.bootstrap.strip() or not all(_is_loopback(host) for host in hosts):
            raise ValueError(
                "security_protocol PLAINTEXT is allowed only with loopback bootstrap"
                f" servers (got bootstrap {self.bootstrap!r}); use SASL_SSL"
            )
        return self

    @model_validator(mode="after")
    def _one_oauth_token_origin(self) -> KafkaSection:
        if (self.security_protocol, self.sasl_mechanism) != ("SASL_SSL", "OAUTHBEARER"):
            return self
        given = [
            name
            for name in ("oauth_credentials_file", "oauth_token_file")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            got = " and ".join(given) or "neither"
            raise ValueError(
                "OAUTHBEARER needs exactly one of oauth_credentials_file (service"
                " account key) and oauth_token_file (token kept fresh by an agent)"
                f" (got {got})"
            )
        return self


class ShipperSection(Section):
    confirm_timeout_s: float = Field(
        30, gt=0, description="Unconfirmed this long after sending: send again."
    )
    max_in_flight: int = Field(
        5000, ge=1, description="Most messages sent and not yet confirmed."
    )
    flush_timeout_s: float = Field(
        10, gt=0, description="Bound on flushing the producer at shutdown."
    )


class PostgresSection(Section):
    host: str = Field("127.0.0.1", description="PostgreSQL host of the ODH.")
    port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port.")
    database: str = Field("odh", description="Database of the ODH.")
    user: str = Field("odh_sink", description="Role the sink applies changes as.")
    password_file: Path | None = Field(
        None, description="Password file; else credential 'odh-password'."
    )
    sslmode: Literal["disable", "prefer", "require", "verify-full"] = Field(
        "prefer", description="libpq sslmode; verify-full across networks."
    )


class SinkSection(Section):
    group_id: str = Field("odh-sink", description="Kafka consumer group.")
    schema_name: str = Field("odh", description="PostgreSQL schema of ODH tables.")
    batch: int = Field(500, ge=1, description="Most messages applied per transaction.")
    guardian_items: int = Field(
        20,
        ge=1,
        description="Guardian checksum parts evaluated per sink step (bounded work).",
    )


class WebuiSection(Section):
    bind: str = Field(
        "127.0.0.1", description="Address the page listens on (the store LAN's)."
    )
    port: int = Field(8443, ge=1, le=65535, description="HTTPS port of the page.")
    state_dir: Path = Field(
        Path("/var/lib/appliance/webui"),
        description="Certificate, key, secret key and users (mode 0700).",
    )
    language: Literal["fr", "en"] = Field("fr", description="Default language.")
    stalled_after_s: float = Field(
        30, gt=0, description="A leg whose heartbeat is older is shown stalled."
    )
    login_failures: int = Field(
        5, ge=1, description="Failed logins in a row before 429 for a while."
    )
    session_max_h: float = Field(
        12, gt=0, description="A login ends after this long, active or not."
    )


class GuardianSection(Section):
    interval_s: float = Field(
        21_600.0,
        ge=0,
        description="Seconds between scheduled checks of every table; 0 = never.",
    )
    tables: dict[str, Literal["repair", "log"]] = Field(
        default_factory=dict,
        description="Table -> 'repair' (fix differences) or 'log' (only record"
        " them); empty = every ibmi.tables in default_mode.",
    )
    default_mode: Literal["repair", "log"] = Field(
        "repair", description="Mode of the tables that 'tables' does not name."
    )
    initial_load: bool = Field(
        True,
        description="Send every row of a table never loaded (meta"
        " guardian.loaded.<TABLE>) once, as 'r' changes.",
    )
    narrow_bits: int = Field(
        6, ge=1, le=10, description="Bits a narrowed bucket is split by."
    )
    keys_at_most: int = Field(
        64,
        ge=1,
        le=2000,
        description="A narrowed bucket with at most this many rows is answered key"
        " by key; a fuller one is split again (fewer bytes, one more round trip).",
    )
    read_chunk_rows: int = Field(
        2000, ge=10, le=100_000, description="Rows read from the IBM i per query."
    )
    max_rows_per_s: float = Field(
        5000.0,
        ge=1,
        description="Most rows read per second from the IBM i (spares the store).",
    )
    cache_keep_h: float = Field(
        24.0,
        gt=0,
        description="Hours a run's cached hashes are kept when the hub never says"
        " done.",
    )
    wait_pipeline_s: float = Field(
        120.0,
        gt=0,
        description="Most seconds a read waits for the miner and transformer to"
        " pass its end before it is abandoned and retried.",
    )


class FileSettings(BaseSettings):
    """Reads one TOML file (path given at load) and APPLIANCE_* variables."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # _load merges file and environment itself (one documented order,
        # nested keys included), then hands the result in as init kwargs.
        return (init_settings,)


class BoxSettings(FileSettings):
    """Settings of the store box: every leg reads the same file."""

    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE_", env_nested_delimiter="__", extra="forbid"
    )

    store: StoreSection
    ibmi: IbmiSection = IbmiSection()
    pipeline: PipelineSection = PipelineSection()
    enricher: EnricherSection = EnricherSection()
    kafka: KafkaSection = KafkaSection()
    shipper: ShipperSection = ShipperSection()
    webui: WebuiSection = WebuiSection()
    guardian: GuardianSection = GuardianSection()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the appliance's loggers."
    )


class HubSettings(FileSettings):
    """Settings of the hub sink (runs beside the ODH, not on the box)."""

    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE_", env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaSection = KafkaSection()
    postgres: PostgresSection = PostgresSection()
    sink: SinkSection = SinkSection()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of the hub's loggers."
    )


_SECRETISH = ("password", "secret", "token", "key", "credential")


def _shown(item: Any) -> str:
    """The offending value as shown in an error: never a secret, never a table.

    An unknown key (a misspelt ``password_file`` may well hold a password) and
    any key whose name sounds secret show no value at all.
    """
    key = str(item["loc"][-1]).lower() if item["loc"] else ""
    if item["type"] in ("extra_forbidden", "dict_type", "model_type") or any(
        w in key for w in _SECRETISH
    ):
        return ""  # an unknown key, or a whole section given as text
    value = item.get("input")
    if isinstance(value, dict):
        return ""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f" (got {text})"


def _format_errors(
    err: ValidationError, source: Path | None, env: dict[str, Any]
) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"])
        origin = _env_name(item["loc"], env)
        where = f" [from {origin}]" if origin else ""
        if item["type"] == "missing":
            lines.append(f"{key}: required, missing{where}")
        else:
            lines.append(f"{key}: {item['msg']}{_shown(item)}{where}")
    place = f" in {source}" if source else ""
    return f"invalid settings{place}:\n  " + "\n  ".join(lines)


def _env_name(loc: tuple[Any, ...], env: dict[str, Any]) -> str:
    """The APPLIANCE_* variable that set this key, or '' when the file did."""
    node: Any = env
    for part in loc:
        if not isinstance(node, dict) or str(part) not in node:
            return ""
        node = node[str(part)]
    return "APPLIANCE_" + "__".join(str(p).upper() for p in loc)


def _load(cls: type[_T], path: Path | None) -> _T:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"settings file not found: {path} (another one: --config FILE"
                " or APPLIANCE_CONFIG)"
            ) from exc
        except OSError as exc:
            # A directory, no permission: say what was expected, no traceback.
            raise ConfigError(
                f"settings file {path} unreadable: {exc.strerror}"
                " (expected a readable TOML file)"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"settings file {path} is not TOML: {exc}") from exc
    env = _env_overrides(cls)
    try:
        # The environment overrides the file, key by key.
        return cls(**_merge(data, env))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, path, env)) from exc


def _env_overrides(cls: type[FileSettings]) -> dict[str, Any]:
    """APPLIANCE_A__B=v -> {"a": {"b": v}}; values are left for pydantic to parse."""
    prefix = "APPLIANCE_"
    tree: dict[str, Any] = {}
    sections = set(cls.model_fields)
    for name, value in os.environ.items():
        if not name.startswith(prefix) or name == "APPLIANCE_CONFIG":
            continue
        path = name[len(prefix) :].lower().split("__")
        if path[0] not in sections:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(value)
    return tree


def _parse_env_value(value: str) -> Any:
    stripped = value.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except ValueError:
            return value
    return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_path(explicit: str | Path | None, default: Path) -> Path:
    """The file to read: --config, else $APPLIANCE_CONFIG, else the default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("APPLIANCE_CONFIG")
    return Path(env) if env else default


def load_box(path: Path | None) -> BoxSettings:
    """Read and validate the box settings once; raise ConfigError on any fault."""
    return _load(BoxSettings, path)


def load_hub(path: Path | None) -> HubSettings:
    """Read and validate the hub settings once; raise ConfigError on any fault."""
    return _load(HubSettings, path)


def read_secret(credential: str, path: Path | None) -> str:
    """Return a secret from a systemd credential or from a file.

    ``$CREDENTIALS_DIRECTORY/<credential>`` wins when present (systemd placed
    it there, decrypted, readable only by the unit). The secret's value never
    appears in an error message.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = []
    if directory:
        candidates.append(Path(directory) / credential)
    if path is not None:
        candidates.append(path)
    for candidate in candidates:
        try:
            return candidate.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(
                f"secret {credential!r} unreadable at {candidate}: {exc.strerror}"
            ) from exc
    raise ConfigError(
        f"secret {credential!r} not found (credential or file {path or 'unset'})"
    )


def describe(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) of every setting, for docs/settings.md."""
    rows: list[tuple[str, str, str]] = []
    for name, info in cls.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            rows += describe(annotation, key + ".")
            continue
        if info.is_required():
            default = "(required)"
        elif info.default_factory is not None:
            default = repr(info.default_factory())  # type: ignore[call-arg]
        else:
            default = repr(info.default)
        rows.append((key, default, info.description or ""))
    return rows


def settings_markdown() -> str:
    """The settings reference page, generated from the models themselves."""
    out = ["# Settings reference", ""]
    out.append("Generated from `appliance/config.py` by `python -m appliance.config`;")
    out.append("a test fails when this page and the models disagree.")
    for title, cls, path in (
        ("Box", BoxSettings, DEFAULT_BOX_CONFIG),
        ("Hub", HubSettings, DEFAULT_HUB_CONFIG),
    ):
        out += ["", f"## {title} (`{path}`)", ""]
        out += ["| key | default | meaning |", "| --- | --- | --- |"]
        for key, default, text in describe(cls):
            shown = default.replace("PosixPath", "Path").replace("|", "\\|")
            out.append(f"| `{key}` | `{shown}` | {text} |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(settings_markdown(), end="")
