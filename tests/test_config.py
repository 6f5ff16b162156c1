"""Settings: one TOML file plus environment overrides, validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from appliance.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_minimal_file_gives_documented_defaults(tmp_path: Path) -> None:
    """Only the store id is required; the rest has a default."""
    settings = config.load_box(_write(tmp_path, '[store]\nid = "MQ01"\n'))
    assert settings.store.id == "MQ01"
    assert settings.ibmi.window == 2000
    assert settings.kafka.changes_topic == "odh.changes"


def test_every_bad_field_is_reported_by_dotted_key_and_value(tmp_path: Path) -> None:
    """All errors at once, each naming its key and the value that came."""
    path = _write(
        tmp_path,
        '[store]\nid = "mq 01"\n[ibmi]\nwindow = 0\nport = 99999\n'
        "[shipper]\nconfirm_timeout_s = -1\n",
    )
    with pytest.raises(ConfigError) as caught:
        config.load_box(path)
    text = str(caught.value)
    assert "store.id" in text and "'mq 01'" in text
    assert "ibmi.window" in text and "(got 0)" in text
    assert "shipper.confirm_timeout_s" in text and "(got -1)" in text
    assert "ibmi.port" in text and "(got 99999)" in text
    assert str(path) in text


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    """A typo is an error, never silently ignored."""
    path = _write(tmp_path, '[store]\nid = "MQ01"\n[kafka]\nbootstrp = "x:1"\n')
    with pytest.raises(ConfigError, match=r"kafka\.bootstrp: Extra inputs"):
        config.load_box(path)


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    """The store id has no default."""
    with pytest.raises(ConfigError, match=r"store: required, missing"):
        config.load_box(_write(tmp_path, "[ibmi]\nwindow = 10\n"))


def test_environment_overrides_the_file_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """APPLIANCE_SECTION__KEY wins over the file; siblings keep file values."""
    path = _write(
        tmp_path,
        '[store]\nid = "MQ01"\n[kafka]\nbootstrap = "a:1"\nchanges_topic = "t"\n',
    )
    monkeypatch.setenv("APPLIANCE_KAFKA__BOOTSTRAP", "127.0.0.1:9999")
    monkeypatch.setenv("APPLIANCE_IBMI__TABLES", '["PRIX"]')
    settings = config.load_box(path)
    assert settings.kafka.bootstrap == "127.0.0.1:9999"
    assert settings.kafka.changes_topic == "t"
    assert settings.ibmi.tables == ["PRIX"]


def test_bad_environment_value_is_named_like_a_file_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An override is validated exactly like the file."""
    monkeypatch.setenv("APPLIANCE_IBMI__WINDOW", "lots")
    with pytest.raises(ConfigError, match=r"ibmi\.window: .*'lots'"):
        config.load_box(_write(tmp_path, '[store]\nid = "MQ01"\n'))


def test_not_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    """Both say which file."""
    with pytest.raises(ConfigError, match="not found"):
        config.load_box(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is not TOML"):
        config.load_box(_write(tmp_path, "[store\n"))


def test_secret_comes_from_the_systemd_credential_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CREDENTIALS_DIRECTORY/<name> wins over the configured file."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ibmi-password").write_text("from-credential\n")
    fallback = tmp_path / "pw"
    fallback.write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.read_secret("ibmi-password", fallback) == "from-credential"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert config.read_secret("ibmi-password", fallback) == "from-file"


def test_missing_secret_error_names_it_without_a_value(tmp_path: Path) -> None:
    """The error says which secret, never a value."""
    with pytest.raises(ConfigError, match="'kafka-password' not found"):
        config.read_secret("kafka-password", tmp_path / "nope")


def test_toml_holds_no_password_key() -> None:
    """Secrets are never settings: only *_file paths exist."""
    keys = [
        k
        for cls in (config.BoxSettings, config.HubSettings)
        for k, _, _ in config.describe(cls)
    ]
    assert not [k for k in keys if "password" in k and not k.endswith("_file")]


def test_settings_page_matches_the_models() -> None:
    """docs/settings.md documents every setting (regenerate with -m)."""
    page = (REPO / "docs" / "settings.md").read_text()
    assert page == config.settings_markdown()
    for cls in (config.BoxSettings, config.HubSettings):
        for key, _, text in config.describe(cls):
            assert text, f"{key} has no help text"


def test_a_misplaced_password_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown key may hold a secret: its value is not in the error."""
    path = _write(
        tmp_path,
        '[store]\nid = "MQ01"\n[ibmi]\npassword = "hunter2SECRET"\n'
        '[shiper]\nx = "s3"\n',
    )
    monkeypatch.setenv("APPLIANCE_KAFKA__PASSWORD", "envSECRET")
    with pytest.raises(ConfigError) as caught:
        config.load_box(path)
    text = str(caught.value)
    assert "ibmi.password: Extra inputs" in text
    assert "shiper" in text
    for secret in ("hunter2SECRET", "envSECRET", "s3"):
        assert secret not in text
    section = _write(tmp_path, 'ibmi = "password=HUNTER2"\n[store]\nid = "MQ01"\n')
    with pytest.raises(ConfigError, match=r"ibmi: Input should be a valid") as caught:
        config.load_box(section)
    assert "HUNTER2" not in str(caught.value)


def test_an_override_from_the_environment_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error names the variable, not only the file."""
    monkeypatch.setenv("APPLIANCE_IBMI__PORT", "notaport")
    with pytest.raises(ConfigError, match=r"\[from APPLIANCE_IBMI__PORT\]"):
        config.load_box(_write(tmp_path, '[store]\nid = "MQ01"\n'))


def test_unknown_time_zone_is_refused_at_load(tmp_path: Path) -> None:
    """A zone the tz database lacks fails validation, not the transformer later."""
    path = _write(tmp_path, '[store]\nid = "MQ01"\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match=r"store\.timezone: .*tz database"):
        config.load_box(path)


def test_plaintext_kafka_is_refused_off_loopback(tmp_path: Path) -> None:
    """Across a network the relay speaks TLS: PLAINTEXT stays on loopback."""
    ok = '[store]\nid = "MQ01"\n[kafka]\nbootstrap = "localhost:9092,[::1]:9093"\n'
    assert config.load_box(_write(tmp_path, ok)).kafka.bootstrap.startswith("local")
    far = '[store]\nid = "MQ01"\n[kafka]\nbootstrap = "10.1.2.3:9092"\n'
    with pytest.raises(ConfigError, match="PLAINTEXT is allowed only with loopback"):
        config.load_box(_write(tmp_path, far))
    tls = far + 'security_protocol = "SASL_SSL"\n'
    assert config.load_box(_write(tmp_path, tls)).kafka.security_protocol == "SASL_SSL"


def test_guardian_table_modes_are_validated_by_dotted_key(tmp_path: Path) -> None:
    """A table mode other than repair/log is refused, naming guardian.tables."""
    path = _write(
        tmp_path, '[store]\nid = "MQ01"\n[guardian]\ntables = {PRIX = "fix"}\n'
    )
    with pytest.raises(ConfigError) as caught:
        config.load_box(path)
    assert "guardian.tables.PRIX" in str(caught.value)
    settings = config.load_box(_write(tmp_path, '[store]\nid = "MQ01"\n'))
    assert settings.guardian.initial_load is True
    assert settings.guardian.default_mode == "repair"


def test_ibmi_wait_s_defaults_to_polling_and_takes_0_to_60(tmp_path: Path) -> None:
    """wait_s: 0 polls (default); 1..60 seconds of EOF_DELAY; else refused."""
    base = '[store]\nid = "MQ01"\n[ibmi]\n'
    assert config.load_box(_write(tmp_path, base)).ibmi.wait_s == 0
    for good in (1, 2, 60):
        path = _write(tmp_path, f"{base}wait_s = {good}\n")
        assert config.load_box(path).ibmi.wait_s == good
    for bad, says in (("61", "(got 61)"), ("-1", "(got -1)"), ("1.5", "(got 1.5)")):
        with pytest.raises(ConfigError) as caught:
            config.load_box(_write(tmp_path, f"{base}wait_s = {bad}\n"))
        assert "ibmi.wait_s" in str(caught.value) and says in str(caught.value)


def test_ibmi_wait_s_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_IBMI__WAIT_S", "5")
    settings = config.load_box(_write(tmp_path, '[store]\nid = "MQ01"\n'))
    assert settings.ibmi.wait_s == 5


def test_ibmi_wait_s_stays_under_half_the_miner_watchdog() -> None:
    """A waiting call must end well before systemd gives up on the miner."""
    unit = (REPO / "systemd" / "appliance-miner.service").read_text()
    watchdog = [
        int(line.split("=", 1)[1])
        for line in unit.splitlines()
        if line.startswith("WatchdogSec=")
    ]
    assert len(watchdog) == 1
    field = config.IbmiSection.model_fields["wait_s"]
    most = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    assert most == 60
    assert most < watchdog[0] / 2
