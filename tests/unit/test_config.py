"""Settings: embedded by default, external by configuration, validated up front with errors naming the key."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from infra.config import Settings, default_data_dir, load_settings
from topics import ConfigError


# -- defaults and what is embedded -------------------------------------------------------------------------------
def test_defaults_are_embedded_everywhere() -> None:
    settings = load_settings()
    assert settings.kafka.embedded and settings.s3.embedded and settings.mqtt.embedded
    assert settings.bootstrap_servers == "127.0.0.1:19092"
    assert settings.s3_endpoint == "http://127.0.0.1:18333"
    assert settings.mqtt_address == ("127.0.0.1", 11883)
    assert settings.kafka.effective_fetch_max_wait_ms == 50
    assert settings.kafka.effective_rebalance_timeout_ms == 3000
    assert settings.standby_replicas == 0  # each standby costs every fetch an S3 listing on Tansu
    assert settings.data_dir == default_data_dir()
    assert settings.data_dir.name == "switchboard"


def test_data_dir_follows_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert load_settings().data_dir == tmp_path / "switchboard"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_settings().data_dir == tmp_path / "home" / ".local" / "share" / "switchboard"
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "mine"))
    assert load_settings().data_dir == tmp_path / "mine"


def test_environment_configures_external_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("SWITCHBOARD_S3__ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com")
    monkeypatch.setenv("SWITCHBOARD_MQTT__HOST", "mosquitto")
    monkeypatch.setenv("SWITCHBOARD_MQTT__PORT", "8883")
    settings = load_settings()
    assert not (settings.kafka.embedded or settings.s3.embedded or settings.mqtt.embedded)
    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.s3_endpoint == "https://s3.eu-west-1.amazonaws.com"
    assert settings.mqtt_address == ("mosquitto", 8883)
    assert settings.kafka.effective_fetch_max_wait_ms == 500  # a real broker answers as data arrives
    assert settings.kafka.effective_rebalance_timeout_ms == 60_000
    assert settings.standby_replicas == 1


def test_each_part_is_external_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_S3__ENDPOINT_URL", "http://minio:9000")
    settings = load_settings()
    assert settings.kafka.embedded and not settings.s3.embedded and settings.mqtt.embedded
    assert settings.bootstrap_servers == "127.0.0.1:19092"


def test_explicit_latency_knobs_win_over_the_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS", "0")
    monkeypatch.setenv("SWITCHBOARD_KAFKA__REBALANCE_TIMEOUT_MS", "4000")
    monkeypatch.setenv("SWITCHBOARD_WORKERS__STANDBY_REPLICAS", "1")
    settings = load_settings()
    assert settings.kafka.effective_fetch_max_wait_ms == 0
    assert settings.kafka.effective_rebalance_timeout_ms == 4000
    assert settings.standby_replicas == 1


# -- files and precedence ----------------------------------------------------------------------------------------
def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(text)
    return path


def test_toml_file_by_argument(tmp_path: Path) -> None:
    config = _toml(tmp_path, 'data_dir = "/srv/sb"\n[kafka]\nbootstrap_servers = "file:9092"\nfetch_max_wait_ms = 50\n'
                             '[workers]\ncount = 3\n')
    settings = load_settings(config)
    assert settings.bootstrap_servers == "file:9092" and settings.workers.count == 3
    assert settings.kafka.fetch_max_wait_ms == 50
    assert settings.data_dir == Path("/srv/sb")
    assert load_settings(str(config)) == settings


def test_toml_file_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _toml(tmp_path, "[mqtt]\nhost = 'broker'\n")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(config))
    assert load_settings().mqtt_address == ("broker", 1883)
    assert os.environ["SWITCHBOARD_CONFIG"] == str(config), "naming the file is restored after loading"
    other = tmp_path / "other.toml"
    other.write_text("[mqtt]\nhost = 'other'\n")
    assert load_settings(other).mqtt.host == "other", "an explicit file wins over $SWITCHBOARD_CONFIG"


def test_precedence_keyword_over_environment_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _toml(tmp_path, "[kafka]\nbootstrap_servers = 'file:9092'\nfetch_max_wait_ms = 50\nclient_id = 'f'\n")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(config))
    monkeypatch.setenv("SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS", "5")
    monkeypatch.setenv("SWITCHBOARD_KAFKA__CLIENT_ID", "env")
    merged = load_settings()
    assert merged.kafka.fetch_max_wait_ms == 5, "the environment overrides the file"
    assert merged.kafka.client_id == "env"
    assert merged.bootstrap_servers == "file:9092", "what the environment does not set comes from the file"
    assert load_settings(kafka={"bootstrap_servers": "kw:1"}).bootstrap_servers == "kw:1"


# -- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS": "soon"},
         "kafka.fetch_max_wait_ms (env SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS): Input should be a valid integer"),
        ({"SWITCHBOARD_EMBEDDED__KAFKA_PORT": "80"},
         "embedded.kafka_port (env SWITCHBOARD_EMBEDDED__KAFKA_PORT): Input should be greater than or equal to 1024"),
        ({"SWITCHBOARD_KAFKA__BOGUS": "1"}, "SWITCHBOARD_KAFKA__BOGUS: unknown Switchboard environment variable"),
        ({"SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS": "nohost"},
         "kafka.bootstrap_servers (env SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS): 'nohost' is not host:port"),
        ({"SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS": "ok:1,bad:port"}, "'bad:port' is not host:port"),
        ({"SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS": ":9092"}, "':9092' is not host:port"),
        ({"SWITCHBOARD_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
         "kafka (env SWITCHBOARD_KAFKA): security_protocol SASL_* needs sasl_mechanism, sasl_username and "
         "sasl_password"),
        ({"SWITCHBOARD_KAFKA__SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol (env SWITCHBOARD_KAFKA__SECURITY"),
        ({"SWITCHBOARD_KAFKA__HEARTBEAT_INTERVAL_MS": "20000"}, "heartbeat_interval_ms must be smaller"),
        ({"SWITCHBOARD_KAFKA__FETCH_CATCH_UP_MAX_WAIT_MS": "29500"},
         "fetch_catch_up_max_wait_ms must be at least 1000 below request_timeout_ms"),
        ({"SWITCHBOARD_KAFKA__SSL_CAFILE": "/nonexistent/ca.pem"}, "ssl_cafile: no such file /nonexistent/ca.pem"),
        ({"SWITCHBOARD_EMBEDDED__S3_PORT": "19333"}, "embedded ports must all differ"),
        ({"SWITCHBOARD_WORKERS__COUNT": "-1"}, "workers.count (env SWITCHBOARD_WORKERS__COUNT)"),
        ({"SWITCHBOARD_S3__BUCKET": "Not_A_Bucket"}, "s3.bucket (env SWITCHBOARD_S3__BUCKET)"),
        ({"SWITCHBOARD_MQTT__TLS": "maybe"}, "mqtt.tls (env SWITCHBOARD_MQTT__TLS)"),
    ],
)
def test_errors_name_the_key_and_its_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                              expected: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert expected in str(error.value)
    assert str(error.value).startswith("invalid Switchboard settings (environment)")


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA__CLIENT_ID", "ok")
    monkeypatch.setenv("SWITCHBOARD_MQTT__PORT", "x")
    monkeypatch.setenv("SWITCHBOARD_WORKERS__COUNT", "99")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "SWITCHBOARD_MQTT__PORT" in str(error.value) and "SWITCHBOARD_WORKERS__COUNT" in str(error.value)


def test_errors_in_a_file_name_the_key_and_the_file(tmp_path: Path) -> None:
    config = _toml(tmp_path, "[embedded]\nkafka_port = 'nine'\n")
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert f"(environment and {config})" in str(error.value)
    assert "embedded.kafka_port (env SWITCHBOARD_EMBEDDED__KAFKA_PORT): Input should be a valid integer" in str(
        error.value)


def test_unknown_keys_in_a_file(tmp_path: Path) -> None:
    config = _toml(tmp_path, "[s3]\nbuckett = 'x'\n")
    with pytest.raises(ConfigError, match=r"s3\.buckett \(env SWITCHBOARD_S3__BUCKETT\): unknown setting"):
        load_settings(config)
    config = _toml(tmp_path, "colour = 'blue'\n")
    with pytest.raises(ConfigError, match=r"colour \(env SWITCHBOARD_COLOUR\): unknown setting"):
        load_settings(config)
    config = _toml(tmp_path, "[redis]\nhost = 'r'\n")
    with pytest.raises(ConfigError, match=r"redis \(env SWITCHBOARD_REDIS\): unknown setting"):
        load_settings(config)


def test_missing_or_broken_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml does not exist"):
        load_settings(tmp_path / "missing.toml")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml does not exist \(given by --config or \$SWITCHBOARD_CONFIG\)"):
        load_settings()
    monkeypatch.delenv("SWITCHBOARD_CONFIG")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_toml(tmp_path, "[s3\n"))


# -- secrets -------------------------------------------------------------------------------------------------------
SECRET = "hunter2-secret"


def test_secrets_stay_out_of_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SASL_PASSWORD", SECRET)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert SECRET not in str(error.value)
    monkeypatch.delenv("SWITCHBOARD_KAFKA__SECURITY_PROTOCOL")
    monkeypatch.delenv("SWITCHBOARD_KAFKA__SASL_PASSWORD")
    config = _toml(tmp_path, f"[kafka]\nsasl_pasword = '{SECRET}'\n[mqtt]\npassword = 12\n")  # a typo, a bad type
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert "kafka.sasl_pasword" in str(error.value) and "mqtt.password" in str(error.value)
    assert SECRET not in str(error.value)


def test_secrets_stay_out_of_dumps_and_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("SWITCHBOARD_KAFKA__SASL_PASSWORD", SECRET)
    settings = load_settings(s3={"secret_access_key": "s3-secret-value"}, mqtt={"password": "mqtt-secret"})
    for shown in (settings.model_dump_json(), repr(settings), str(settings)):
        assert SECRET not in shown and "s3-secret-value" not in shown and "mqtt-secret" not in shown
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == SECRET
    assert settings.environment()["SWITCHBOARD_KAFKA__SASL_PASSWORD"] == SECRET, "child processes need it"


# -- handing settings to child processes -----------------------------------------------------------------------
def test_environment_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    original = load_settings(
        data_dir=tmp_path / "data dir",
        kafka={"bootstrap_servers": "k:1,k2:2", "fetch_max_wait_ms": 7, "security_protocol": "SASL_SSL",
               "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "p=w\"d'", "ssl_cafile": ca},
        s3={"endpoint_url": "https://s3", "secret_access_key": "sk"},
        mqtt={"host": "m", "tls": True, "password": "mp"},
        embedded={"start_timeout_s": 1.5},
        workers={"count": 2, "store": "memory://", "log_level": "debug"},
    )
    env = original.environment()
    assert all(key.startswith("SWITCHBOARD_") for key in env)
    assert env["SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS"] == "k:1,k2:2"
    assert env["SWITCHBOARD_MQTT__TLS"] == "true"
    assert "SWITCHBOARD_MQTT__USERNAME" not in env, "unset values are left out"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings() == original


def test_settings_from_a_file_are_plain_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal to the same values from the environment, and picklable (a per-file subclass would be neither)."""
    from_file = load_settings(_toml(tmp_path, "[workers]\ncount = 2\n[kafka]\nbootstrap_servers = 'k:1'\n"))
    assert type(from_file) is Settings
    assert pickle.loads(pickle.dumps(from_file)) == from_file
    for key, value in from_file.environment().items():
        monkeypatch.setenv(key, value)
    assert load_settings() == from_file
    assert load_settings().workers.count == 2 and load_settings(workers={"count": 1}).workers.count == 1


def test_default_environment_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_settings()
    for key, value in original.environment().items():
        monkeypatch.setenv(key, value)
    assert load_settings() == original


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        settings.data_dir = Path("/elsewhere")  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_a_misspelt_variable_is_an_error_not_silently_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")  # one underscore
    with pytest.raises(ConfigError,
                       match=r"SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS: unknown Switchboard environment variable"):
        load_settings()
    monkeypatch.delenv("SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS")
    for allowed in ("SWITCHBOARD_WORKER_ID", "SWITCHBOARD_READY_FILE"):
        monkeypatch.setenv(allowed, "1")
    assert load_settings().kafka.embedded
