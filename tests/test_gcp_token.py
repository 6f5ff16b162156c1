"""Google Managed Kafka's OAUTHBEARER token: its exact shape and its refresh."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from appliance.config import KafkaSection, load_box
from appliance.errors import ApplianceError, ConfigError, TransportError
from appliance.gcp_token import AccessToken, GoogleTokenSource, wrap
from appliance.kafka import common_config

ACCESS = "ya29.c.b0Aaekm1K-secret_part-ZZZ"
EMAIL = "relay-mq01@odh-prod.iam.gserviceaccount.com"
T0 = 1_800_000_000.0


class Clock:
    """A settable stand-in for time.time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _token_file(path: Path, text: str, written: float = T0) -> Path:
    path.write_text(text)
    os.utime(path, (written, written))
    return path


def _reply(access: str = ACCESS, expires_in: int = 3599) -> str:
    return json.dumps(
        {"access_token": access, "expires_in": expires_in, "token_type": "Bearer"}
    )


def test_token_is_header_claims_and_raw_access_token() -> None:
    """Three base64url parts: the GOOG_OAUTH2_TOKEN header, the claims, the token."""
    token = wrap(AccessToken(ACCESS, T0 + 3599), EMAIL, issued_at=T0 + 0.7)
    parts = token.split(".")

    assert len(parts) == 3
    assert json.loads(_decode(parts[0])) == {"typ": "JWT", "alg": "GOOG_OAUTH2_TOKEN"}
    assert json.loads(_decode(parts[1])) == {
        "exp": int(T0) + 3599,
        "iat": int(T0),
        "iss": "Google",
        "scope": "kafka",
        "sub": EMAIL,
    }
    assert _decode(parts[2]).decode() == ACCESS


def test_token_parts_are_url_safe_without_padding() -> None:
    """No '=', '+' or '/' in any part, whatever the lengths."""
    for length in range(1, 8):
        access = "a" * length + "?>~"  # bytes that encode to '+' and '/' in base64
        token = wrap(AccessToken(access, T0 + 60), EMAIL, issued_at=T0)
        assert not set("=+/") & set(token)
        assert _decode(token.split(".")[2]).decode() == access


def test_metadata_server_reply_sets_expiry_from_file_time(tmp_path: Path) -> None:
    """expires_in counts from the file's modification time; the callback says so."""
    path = _token_file(tmp_path / "token.json", _reply(expires_in=3599))
    source = GoogleTokenSource(path, EMAIL, clock=Clock(T0 + 10))

    token, expiry = source("")

    assert expiry == T0 + 3599
    claims = json.loads(_decode(token.split(".")[1]))
    assert claims["exp"] == int(T0) + 3599
    assert claims["iat"] == int(T0) + 10


def test_bare_token_file_lives_one_hour(tmp_path: Path) -> None:
    """A file with the token alone: one hour from its modification time."""
    path = _token_file(tmp_path / "token", ACCESS + "\n")
    _, expiry = GoogleTokenSource(path, EMAIL, clock=Clock(T0))("")
    assert expiry == T0 + 3600


def test_token_kept_until_margin_then_reread(tmp_path: Path) -> None:
    """Cached while more than 300 s are left; re-read from the file after that."""
    path = _token_file(tmp_path / "token.json", _reply("first-token", 3600))
    clock = Clock(T0)
    source = GoogleTokenSource(path, EMAIL, margin_s=300, clock=clock)
    assert _decode(source("")[0].split(".")[2]) == b"first-token"

    # The agent refreshes the file early; the cached token still has 10 min.
    _token_file(path, _reply("second-token", 3600), written=T0 + 2900)
    clock.now = T0 + 3000
    assert _decode(source("")[0].split(".")[2]) == b"first-token"

    clock.now = T0 + 3301  # 299 s left: inside the margin
    token, expiry = source("")
    assert _decode(token.split(".")[2]) == b"second-token"
    assert expiry == T0 + 2900 + 3600


def test_stale_file_is_refused_without_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent stopped: a TransportError naming the file, never the token."""
    path = _token_file(tmp_path / "token.json", _reply(expires_in=3599))
    source = GoogleTokenSource(path, EMAIL, clock=Clock(T0 + 3400))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(TransportError, match="expires in 199s") as info:
        source("")

    assert str(path) in str(info.value)
    _assert_secret_absent(info.value, caplog)


@pytest.mark.parametrize(
    "text",
    [
        '{"access_token": "' + ACCESS + '", "expires_in": ',  # cut short
        '{"access_token": "' + ACCESS + '"}',  # no expiry
        '{"access_token": "", "expires_in": 10}',
        "",
        ACCESS + " " + ACCESS,
    ],
)
def test_malformed_file_is_refused_without_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    """A bad file: the error names the field expected, not what was found."""
    path = _token_file(tmp_path / "token.json", text)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(TransportError, match=r"kafka\.oauth_token_file") as info:
        GoogleTokenSource(path, EMAIL, clock=Clock(T0))("")

    _assert_secret_absent(info.value, caplog)


def test_missing_file_names_setting_and_path(tmp_path: Path) -> None:
    """No file yet: the setting and the path, for the operator."""
    source = GoogleTokenSource(tmp_path / "absent", EMAIL, clock=Clock(T0))
    with pytest.raises(TransportError, match=r"oauth_token_file.*absent"):
        source("")


def test_loaded_token_is_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A successful load logs the time left, not the token nor its wrapper."""
    path = _token_file(tmp_path / "token.json", _reply())
    caplog.set_level(logging.DEBUG)
    token, _ = GoogleTokenSource(path, EMAIL, clock=Clock(T0))("")
    assert "oauth token loaded" in caplog.text
    assert token.split(".")[2] not in caplog.text
    _assert_secret_absent(None, caplog)


def test_service_account_must_be_an_email(tmp_path: Path) -> None:
    """An empty or malformed subject is a ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=r"kafka\.oauth_service_account"):
        GoogleTokenSource(tmp_path / "token", "", clock=Clock(T0))


def test_oauthbearer_settings_wire_the_callback(tmp_path: Path) -> None:
    """OAUTHBEARER hands librdkafka the Google token source as oauth_cb, TLS on."""
    path = _token_file(tmp_path / "token.json", _reply())
    kafka = KafkaSection(
        bootstrap="bootstrap.odh.managedkafka.europe-west9.cloud.goog:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        oauth_token_file=path,
        oauth_service_account=EMAIL,
    )
    conf: dict[str, Any] = common_config(kafka)

    assert conf["sasl.mechanism"] == "OAUTHBEARER"
    assert isinstance(conf["oauth_cb"], GoogleTokenSource)
    assert conf["oauth_cb"].service_account == EMAIL
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert conf["enable.ssl.certificate.verification"] is True
    assert "sasl.password" not in conf


def test_oauthbearer_without_token_origin_is_a_config_error(tmp_path: Path) -> None:
    """OAUTHBEARER needs a token file or a credentials file: neither is refused."""
    path = tmp_path / "box.toml"
    path.write_text(
        '[store]\nid = "MQ01"\n[kafka]\nbootstrap = "kafka.example:9092"\n'
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "OAUTHBEARER"\n'
        f'oauth_service_account = "{EMAIL}"\n'
    )
    with pytest.raises(ConfigError, match=r"exactly one of oauth_credentials_file"):
        load_box(path)


def _assert_secret_absent(
    error: ApplianceError | None, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [caplog.text]
    seen: BaseException | None = error
    while seen is not None:  # the message and every chained cause
        texts.append(str(seen))
        texts.append(repr(seen.args))
        seen = seen.__cause__ or seen.__context__
    for text in texts:
        assert ACCESS not in text
        assert "secret_part" not in text
