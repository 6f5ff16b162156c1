"""``appliance check-config`` opens what the settings name (newcomer report).

Before, a box whose password file was missing, empty or world-readable, or
whose enricher script did not exist, was told "settings ok" and then met a
leg restarting in a loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance import cli

SECRET = "s3cret-value-never-printed"


def box(tmp_path: Path, **extra: str) -> Path:
    secret = tmp_path / "ibmi.password"
    if not secret.exists():
        secret.write_text(SECRET)
        secret.chmod(0o600)
    script = tmp_path / "enrich.py"
    if not script.exists():
        script.write_text("def enrich(change):\n    return 1\n")
        script.chmod(0o644)
    lines = [
        "[store]",
        'id = "MQ01"',
        "[ibmi]",
        f'password_file = "{extra.get("password_file", secret)}"',
        "[pipeline]",
        f'db_path = "{extra.get("db_path", tmp_path / "data" / "pipeline.db")}"',
        "[[enricher.scripts]]",
        'name = "x"',
        'language = "python"',
        f'path = "{extra.get("script", script)}"',
    ]
    path = tmp_path / "box.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(path: Path, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, str]:
    code = cli.main(["--config", str(path), "check-config", *more])
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    return code, out.out + out.err


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)


def test_a_complete_box_is_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(box(tmp_path), capsys)
    assert code == 0
    assert "settings ok" in text
    # The database directory does not exist yet: said, not refused.
    assert "WARNING pipeline.db_path" in text


def test_missing_empty_and_open_secrets_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(box(tmp_path, password_file=str(tmp_path / "nope")), capsys)
    assert code == 78
    assert f"ERROR ibmi.password_file: {tmp_path / 'nope'} does not exist" in text
    empty = tmp_path / "empty.password"
    empty.write_text("\n")
    empty.chmod(0o600)
    code, text = run(box(tmp_path, password_file=str(empty)), capsys)
    assert code == 78
    assert "is empty" in text
    (tmp_path / "ibmi.password").chmod(0o644)
    code, text = run(box(tmp_path), capsys)
    assert code == 78
    assert "has mode 0644; expected 0600 or 0400" in text
    assert "settings refused" in text


def test_a_sealed_credential_needs_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ibmi-password").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    code, _ = run(box(tmp_path, password_file=str(tmp_path / "nope")), capsys)
    assert code == 0


def test_scripts_must_exist_and_not_be_writable_by_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(box(tmp_path, script=str(tmp_path / "gone.py")), capsys)
    assert code == 78
    assert "ERROR enricher.scripts[0].path" in text
    (tmp_path / "enrich.py").chmod(0o666)
    code, text = run(box(tmp_path), capsys)
    assert code == 78
    assert "writable by group or others" in text


def test_unwritable_database_directory_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CI runs as root, who may write anywhere: the leg's own user is played
    # by refusing write access to that one directory.
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access

    def access(path: object, mode: int) -> bool:
        if Path(str(path)) == locked and mode & os.W_OK:
            return False
        return real(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr("appliance.configcheck.os.access", access)
    code, text = run(box(tmp_path, db_path=str(locked / "p.db")), capsys)
    assert code == 78
    assert f"ERROR pipeline.db_path: {locked} is not writable" in text


def test_database_path_under_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    code, text = run(box(tmp_path, db_path=str(tmp_path / "afile" / "p.db")), capsys)
    assert code == 78
    assert "is not a directory" in text


def test_values_only_skips_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = box(tmp_path, password_file=str(tmp_path / "nope"))
    code, text = run(path, capsys, "--values-only")
    assert code == 0
    assert "ERROR" not in text


def test_a_directory_as_settings_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(tmp_path, capsys)
    assert code == 78
    assert "unreadable: Is a directory (expected a readable TOML file)" in text


def test_a_python_script_that_does_not_compile_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def enrich(change):\n    return (\n")
    broken.chmod(0o644)
    code, text = run(box(tmp_path, script=str(broken)), capsys)
    assert code == 78
    assert "ERROR enricher.scripts[0].path" in text
    assert "does not compile" in text


def test_status_on_a_file_that_is_no_pipeline_database_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    path = box(tmp_path, db_path=str(junk))
    for command in (["status"], ["dead-letters", "list"]):
        code = cli.main(["--config", str(path), *command])
        err = capsys.readouterr().err
        assert code == 78
        assert f"pipeline.db_path: {junk} is not a pipeline database" in err
        assert "Traceback" not in err


def test_a_service_account_key_the_shipper_would_refuse_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "sa.json"
    key.write_text("not json, and no key either")
    key.chmod(0o600)
    path = box(tmp_path)
    path.write_text(
        path.read_text()
        + '[kafka]\nbootstrap = "127.0.0.1:9093"\nsecurity_protocol = "SASL_SSL"\n'
        + f'sasl_mechanism = "OAUTHBEARER"\noauth_credentials_file = "{key}"\n'
    )
    code, text = run(path, capsys)
    assert code == 78
    assert "ERROR kafka.oauth_credentials_file" in text
    assert str(key) in text
