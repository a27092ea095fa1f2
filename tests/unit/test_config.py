"""Settings: embedded by default, external by configuration, validated up front with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import ConfigError, Settings, load_settings


def test_defaults_are_embedded_everywhere() -> None:
    settings = load_settings()
    assert settings.kafka.embedded and settings.s3.embedded and settings.mqtt.embedded
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert settings.s3_endpoint == "http://127.0.0.1:18333"
    assert settings.mqtt_address == ("127.0.0.1", 11883)
    assert settings.kafka.effective_fetch_max_wait_ms == 10
    assert settings.kafka.effective_rebalance_timeout_ms == 3000
    assert settings.data_dir.name == "switchboard"


def test_environment_configures_external_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("SWITCHBOARD_S3__ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com")
    monkeypatch.setenv("SWITCHBOARD_MQTT__HOST", "mosquitto")
    settings = load_settings()
    assert not (settings.kafka.embedded or settings.s3.embedded or settings.mqtt.embedded)
    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka.effective_fetch_max_wait_ms == 500  # a real broker answers as data arrives
    assert settings.mqtt_address == ("mosquitto", 1883)


def test_toml_file_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "switchboard.toml"
    config.write_text('data_dir = "/srv/sb"\n[kafka]\nbootstrap_servers = "file:9092"\nfetch_max_wait_ms = 50\n'
                      '[workers]\ncount = 3\n')
    from_file = load_settings(config)
    assert from_file.bootstrap_servers == "file:9092" and from_file.workers.count == 3
    assert from_file.data_dir == Path("/srv/sb")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(config))
    monkeypatch.setenv("SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS", "5")
    merged = load_settings()
    assert merged.kafka.fetch_max_wait_ms == 5, "the environment overrides the file"
    assert merged.bootstrap_servers == "file:9092"
    assert load_settings(kafka={"bootstrap_servers": "kw:1"}).bootstrap_servers == "kw:1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS": "soon"},
         "kafka.fetch_max_wait_ms (env SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS)"),
        ({"SWITCHBOARD_KAFKA__BOGUS": "1"}, "kafka.bogus (env SWITCHBOARD_KAFKA__BOGUS): unknown setting"),
        ({"SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS": "nohost"}, "'nohost' is not host:port"),
        ({"SWITCHBOARD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism, sasl_username"),
        ({"SWITCHBOARD_EMBEDDED__S3_PORT": "19333"}, "embedded ports must all differ"),
        ({"SWITCHBOARD_WORKERS__COUNT": "-1"}, "workers.count"),
    ],
)
def test_errors_name_the_key_and_its_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                              expected: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert expected in str(error.value)


def test_unknown_key_in_file_and_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[s3]\nbuckett = 'x'\n")
    with pytest.raises(ConfigError, match=r"s3.buckett \(env SWITCHBOARD_S3__BUCKETT\): unknown setting"):
        load_settings(config)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    config.write_text("[s3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config)


def test_secrets_stay_out_of_errors_and_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SASL_PASSWORD", "hunter2-secret")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "hunter2-secret" not in str(error.value)
    monkeypatch.delenv("SWITCHBOARD_KAFKA__SECURITY_PROTOCOL")
    settings = load_settings(s3={"secret_access_key": "s3-secret-value"})
    assert "s3-secret-value" not in settings.model_dump_json()


def test_environment_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = load_settings(data_dir=tmp_path, kafka={"bootstrap_servers": "k:1", "fetch_max_wait_ms": 7},
                             mqtt={"host": "m", "tls": True}, workers={"count": 2})
    for key, value in original.environment().items():
        monkeypatch.setenv(key, value)
    assert load_settings() == original


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        settings.data_dir = Path("/elsewhere")  # type: ignore[misc]
    assert isinstance(settings, Settings)
