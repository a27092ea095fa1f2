"""The production deployment (infra/deploy) is consistent with itself and with the settings model, without Docker.

The compose file is parsed with PyYAML; its Switchboard environment is interpolated with the placeholders of
`.env.example` and loaded through `infra.config.load_settings()`. The documents shipped for third parties are
checked here too: the example settings file loads, docs/configuration.md lists every setting, and the decoding
example of docs/events.md runs verbatim.
"""

from __future__ import annotations

import base64
import os
import re
import runpy
import shutil
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from infra.config import ENV_PREFIX, Settings, load_settings
from topics import AvroCodec, Event, SchemaStore, encode_event
from topics.schema_store import load_schema_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
SWITCHBOARD_SERVICES = ("topics", "worker")
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(autouse=True)
def _no_outer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's SWITCHBOARD_* variables (and SWITCHBOARD_CONFIG) must not leak into these tests."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _interpolate(value: object, variables: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$ for a $."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        if name in variables and (variables[name] or not op.startswith(":")):
            return variables[name]
        if op.endswith("-"):
            return arg
        if op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required ({arg}) but .env.example does not set it")
        return ""

    return _INTERPOLATION.sub(one, str(value).replace("$$", "\0")).replace("\0", "$")


def _setting_variables(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> Iterator[str]:
    """Every environment variable the settings model reads, from its fields."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _setting_variables(annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}"


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.rpartition("/")[2], int(port)


# -- the compose file -------------------------------------------------------------------------------------------
def test_the_production_services_are_there(services: dict[str, Any]) -> None:
    assert {*KAFKA_NODES, "minio", "minio-buckets", "mosquitto", "ray-head", "ray-worker", "topics",
            "worker"} <= set(services)
    assert services["topics"]["command"] == ["switchboard", "topics", "create"]
    assert services["worker"]["command"] == ["python", "-m", "streams.worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["topics"]["image"] == services["worker"]["image"], "one Switchboard image"
    assert services["topics"]["build"]["dockerfile"] == "infra/deploy/Dockerfile"
    assert (DEPLOY / services["topics"]["build"]["context"] / "pyproject.toml").is_file()


def test_every_switchboard_variable_is_a_setting(services: dict[str, Any]) -> None:
    known = set(_setting_variables())
    used = {key for service in services.values() for key in service.get("environment", {})
            if key.startswith(ENV_PREFIX)}
    assert used, "the Switchboard services are configured through SWITCHBOARD_* variables"
    unknown = used - known
    assert not unknown, f"not settings of infra/config.py (load_settings would refuse them): {unknown}"
    for name in SWITCHBOARD_SERVICES:
        # Configured only through the environment: no config file, no command-line settings.
        assert not {"env_file", "entrypoint"} & set(services[name]), name
        assert "SWITCHBOARD_CONFIG" not in services[name]["environment"], name


@pytest.mark.parametrize("name", SWITCHBOARD_SERVICES)
def test_the_switchboard_environment_loads_as_external_settings(
    name: str, services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = _env_example()
    env = {key: _interpolate(value, variables) for key, value in services[name]["environment"].items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings = load_settings()

    assert not (settings.kafka.embedded or settings.s3.embedded or settings.mqtt.embedded)
    # Every variable was read with the value given.
    effective = settings.environment()
    assert env.items() <= effective.items()
    # ...and points at the services of this file.
    advertised = {_host_port(services[node]["environment"]["KAFKA_ADVERTISED_LISTENERS"]) for node in KAFKA_NODES}
    assert {_host_port(s) for s in settings.bootstrap_servers.split(",")} == advertised
    assert settings.kafka.replication_factor == len(KAFKA_NODES)
    assert _host_port(settings.s3_endpoint) == ("minio", 9000)
    assert settings.mqtt_address == ("mosquitto", 1883)


def test_switchboard_credentials_match_what_minio_and_mosquitto_are_given(services: dict[str, Any]) -> None:
    switchboard = services["worker"]["environment"]
    buckets = services["minio-buckets"]["environment"]
    assert switchboard["SWITCHBOARD_S3__ACCESS_KEY_ID"] == buckets["S3_ACCESS_KEY_ID"]
    assert switchboard["SWITCHBOARD_S3__SECRET_ACCESS_KEY"] == buckets["S3_SECRET_ACCESS_KEY"]
    assert switchboard["SWITCHBOARD_S3__BUCKET"] == buckets["S3_BUCKET"]
    assert switchboard["SWITCHBOARD_S3__BROKER_BUCKET"] == buckets["S3_BROKER_BUCKET"]
    mosquitto = services["mosquitto"]["environment"]
    assert switchboard["SWITCHBOARD_MQTT__USERNAME"] == mosquitto["MQTT_USERNAME"]
    assert switchboard["SWITCHBOARD_MQTT__PASSWORD"] == mosquitto["MQTT_PASSWORD"]


def test_the_ray_head_is_reachable_only_inside(compose: dict[str, Any], services: dict[str, Any]) -> None:
    head = services["ray-head"]
    assert "--ray-client-server-port=10001" in head["command"]
    assert "--dashboard-port=8265" in head["command"]
    assert {"8265", "10001"} <= set(head["expose"])
    assert "ports" not in head, "dashboard and client port are not published"
    assert all(compose["networks"][net].get("internal") for net in head["networks"])
    assert set(head["networks"]) & set(services["worker"]["networks"]), "workers reach the Ray client port"
    assert "ray-head:6379" in services["ray-worker"]["command"]


def test_kraft_quorum_is_consistent(services: dict[str, Any]) -> None:
    nodes = {name: services[name]["environment"] for name in KAFKA_NODES}
    assert all(set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"} for env in nodes.values())
    node_ids = [int(env["KAFKA_NODE_ID"]) for env in nodes.values()]
    assert len(set(node_ids)) == len(node_ids), "node ids must be unique"
    assert len({env["CLUSTER_ID"] for env in nodes.values()}) == 1, "one cluster id"

    voter_lists = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in nodes.values()}
    assert len(voter_lists) == 1, "every node must see the same quorum"
    voters = {}
    for voter in voter_lists.pop().split(","):
        voter_id, _, address = voter.partition("@")
        voters[int(voter_id)] = _host_port(address)
    assert len(voters) % 2 == 1, "an odd quorum"
    for name, env in nodes.items():
        listeners = dict(_listener(item) for item in env["KAFKA_LISTENERS"].split(","))
        controller = listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
        host = services[name].get("hostname", name)
        assert voters[int(env["KAFKA_NODE_ID"])] == (host, controller), f"{name} is voter {env['KAFKA_NODE_ID']}"
        assert _host_port(env["KAFKA_ADVERTISED_LISTENERS"].split(",")[0]) == (host, listeners["PLAINTEXT"])
    assert set(voters) == set(node_ids), "the quorum lists every controller node and only those"

    env = next(iter(nodes.values()))
    replication = int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"])
    assert replication == int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == len(nodes)
    assert 1 < int(env["KAFKA_MIN_INSYNC_REPLICAS"]) < replication, "acks=all survives one node down"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from `switchboard topics create`"


def _listener(item: str) -> tuple[str, int]:
    name, _, address = item.partition("://")
    return name, _host_port(address)[1]


def test_healthchecks_and_startup_order(services: dict[str, Any]) -> None:
    for name in (*KAFKA_NODES, "minio", "mosquitto", "ray-head"):
        assert services[name]["healthcheck"]["test"], name
    for name, service in services.items():
        for target, dependency in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if dependency["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy"
            if dependency["condition"] == "service_completed_successfully":
                assert services[target]["restart"] in ("no", "on-failure"), f"{target} is a one-shot"
    assert set(services["topics"]["depends_on"]) == set(KAFKA_NODES)
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["minio-buckets"]["condition"] == "service_completed_successfully"
    for name in (*KAFKA_NODES, "minio", "mosquitto", "ray-head", "ray-worker", "worker"):
        assert services[name]["restart"] == "unless-stopped", name


def test_volumes_and_networks_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named: list[str] = []
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if ":" in volume and not source.startswith((".", "/")):
                named.append(source)
    assert set(named) == set(compose["volumes"]), "every named volume declared, and used"
    kafka_volumes = [services[n]["volumes"][0].split(":")[0] for n in KAFKA_NODES]
    assert len(set(kafka_volumes)) == len(KAFKA_NODES), "each Kafka node its own log directory"
    assert all(":" not in v for v in services["worker"]["volumes"]), "replicas must not share one table store"
    for name, service in services.items():
        assert set(service["networks"]) <= set(compose["networks"]), name
    for path in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        if path.startswith("."):
            assert (DEPLOY / path).is_file(), path


def test_every_compose_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8").replace("$$", "")
    used = {match["name"] for match in _INTERPOLATION.finditer(text)}
    variables = _env_example()
    assert used <= set(variables), f"missing from .env.example: {used - set(variables)}"
    cluster_id = base64.urlsafe_b64decode(variables["KAFKA_CLUSTER_ID"] + "==")
    assert len(cluster_id) == 16, "a Kafka cluster id is a base64url UUID (kafka-storage.sh random-uuid)"
    _interpolate(yaml.safe_dump(compose), variables)  # every ${VAR:?} resolves


def test_mosquitto_requires_a_password(services: dict[str, Any]) -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    directives = [line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    settings = {d[0]: d[1].strip() if len(d) > 1 else "" for d in directives}
    assert settings["allow_anonymous"] == "false"
    mosquitto = services["mosquitto"]
    assert "./mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mosquitto["volumes"]
    script = "\n".join(mosquitto["command"])
    assert f"mosquitto_passwd -b {settings['password_file']} " in script, "the password file is written at start"
    assert settings["listener"] == "1883"
    assert "1883" in mosquitto["ports"][0]


def test_dockerfile_builds_a_non_root_image_without_torch() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "ARG WITH_SERVING=0" in dockerfile and "ARG TORCH_VERSION=2.13.0" in dockerfile
    assert "https://download.pytorch.org/whl/cpu" in dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "torch==2.13.0" in pyproject["project"]["optional-dependencies"]["serving"]
    assert not any(d.startswith("torch") for d in pyproject["project"]["dependencies"]), "no torch by default"


# -- documents shipped with the deployment --------------------------------------------------------------------------
def test_the_example_settings_file_loads_and_covers_every_setting() -> None:
    path = DEPLOY / "switchboard.example.toml"
    settings = load_settings(path)
    assert not (settings.kafka.embedded or settings.s3.embedded or settings.mqtt.embedded)
    assert settings.kafka.security_protocol == "SASL_SSL"
    sections = {name for name, f in Settings.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    assert sections <= set(tomllib.loads(path.read_text(encoding="utf-8"))), "every section of Settings"
    text = path.read_text(encoding="utf-8")
    for variable in _setting_variables():
        key = variable.removeprefix(ENV_PREFIX).rpartition("__")[2].lower()
        assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE), f"{key} is missing (set or commented out)"


def test_the_configuration_doc_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for variable in _setting_variables():
        assert f"`{variable}`" in doc, variable


def _events_doc_example() -> str:
    doc = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.DOTALL) if "def decode(" in b]
    assert len(blocks) == 1, "docs/events.md has one decoding example"
    return blocks[0]


def _turn(**overrides: Any) -> Event:
    data = {"session_id": "session-42", "agent": "echo", "text": "Grüß dich", "channel": "cli", "locale": None,
            "via": None, "turn_id": None}
    return Event(type="switchboard.dialogue.Turn", source="/switchboard/channels/cli", subject="session-42",
                 principal="user:ann", data=data, **overrides)


def test_the_events_doc_example_decodes_real_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "decode_example.py"
    script.write_text(_events_doc_example(), encoding="utf-8")
    monkeypatch.chdir(ROOT)  # the example reads ./schemas
    decode = runpy.run_path(str(script))["decode"]

    cause = _turn()
    reply = cause.caused("switchboard.dialogue.Reply", "/switchboard/streams/echo", effect="reply",
                         data={"session_id": "session-42", "agent": "echo", "text": "Grüß dich",
                               "in_reply_to": cause.id, "author": None})
    for event in (cause, reply):
        record = encode_event(event, AvroCodec())
        attributes, payload = decode(record.value, record.headers)
        assert payload == dict(event.data)
        assert attributes["id"] == event.id and attributes["type"] == event.type
        assert record.key == b"session-42" and attributes["subject"] == "session-42"
        assert attributes["correlationid"] == cause.id
    assert attributes["causationid"] == cause.id


def test_the_events_doc_example_reads_old_versions_in_the_current_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", schemas, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    old_turn = schemas / "history" / "old-turn.avsc"  # a version without `channel` and `locale`
    old_turn.write_text('{"type": "record", "name": "Turn", "namespace": "switchboard.dialogue", "fields": ['
                        '{"name": "session_id", "type": "string"}, {"name": "agent", "type": "string"}, '
                        '{"name": "text", "type": "string"}]}', encoding="utf-8")
    old_data = {"session_id": "s", "agent": "echo", "text": "hi"}
    value = AvroCodec(SchemaStore([load_schema_file(old_turn)])).encode("switchboard.dialogue.Turn", old_data)
    headers = encode_event(_turn(), AvroCodec()).headers
    script = tmp_path / "decode_example.py"
    script.write_text(_events_doc_example(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    decode = runpy.run_path(str(script))["decode"]

    _, payload = decode(value, headers)

    assert payload == {"session_id": "s", "agent": "echo", "text": "hi", "channel": "api", "locale": None,
                       "via": None, "turn_id": None}
