"""What `switchboard up` compares to tell that a running component was started from other settings
(infra/embedded/components.py `settings_digest`): a change it misses leaves a component on stale settings; a
change it invents restarts one for nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.config import load_settings
from infra.embedded.components import plan


def _digests(data_dir: Path, **overrides: Any) -> dict[str, str]:
    settings = load_settings(data_dir=data_dir, **{"bridge": {"enabled": True}, **overrides})
    return {c.name: c.settings_digest for c in plan(settings)}


def test_every_component_has_a_digest_and_the_same_settings_give_the_same_ones(tmp_path: Path) -> None:
    first = _digests(tmp_path, workers={"count": 2})
    assert set(first) >= {"seaweedfs", "tansu", "mqtt", "worker-0", "worker-1", "mqtt-bridge", "supervisor"}
    assert all(first.values()), first
    assert _digests(tmp_path, workers={"count": 2}) == first


def test_more_workers_start_no_running_component_again_but_the_supervisor(tmp_path: Path) -> None:
    two, three = _digests(tmp_path, workers={"count": 2}), _digests(tmp_path, workers={"count": 3})
    changed = {name for name in two if two[name] != three[name]}
    assert changed == {"supervisor"}, "the supervisor plans restarts from the count; the rest do not read it"


def test_a_setting_our_processes_read_starts_them_again_and_leaves_the_servers(tmp_path: Path) -> None:
    before = _digests(tmp_path)
    after = _digests(tmp_path, kafka={"fetch_max_wait_ms": 20})
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"worker-0", "mqtt-bridge", "supervisor"}


def test_a_server_whose_command_changes_is_started_again(tmp_path: Path) -> None:
    before = _digests(tmp_path)
    after = _digests(tmp_path, embedded={"kafka_port": 19_555})
    assert before["tansu"] != after["tansu"]
    assert before["seaweedfs"] == after["seaweedfs"] and before["mqtt"] == after["mqtt"]
    assert before["worker-0"] != after["worker-0"], "the workers connect to the new port"
    s3 = _digests(tmp_path, s3={"secret_access_key": "another-secret"})
    assert s3["seaweedfs"] != before["seaweedfs"] and s3["tansu"] != before["tansu"]
    assert s3["mqtt"] == before["mqtt"]


def test_a_restart_by_the_supervisor_records_the_digest_up_compares(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor plans from the settings in its environment; were their digest not `up`'s, the next `up`
    would start again every worker the supervisor had restarted."""
    from infra.embedded.components import settings_digest

    agents = tmp_path / "my agents"
    agents.mkdir()
    cli = load_settings(data_dir=tmp_path, workers={"count": 2, "agent_dirs": [agents]},
                        kafka={"fetch_max_wait_ms": 20}, bridge={"enabled": True})  # default routes: JSON lists
    for key, value in cli.environment().items():
        monkeypatch.setenv(key, value)
    supervisors = load_settings()
    assert settings_digest(supervisors) == settings_digest(cli)


def test_turning_the_bridge_off_or_the_supervisor_restarts_no_worker(tmp_path: Path) -> None:
    before = _digests(tmp_path)
    for overrides in ({"bridge": {"enabled": False}}, {"embedded": {"supervise": False, "stop_timeout_s": 3}}):
        after = _digests(tmp_path, **overrides)
        assert after["worker-0"] == before["worker-0"], overrides
        assert after.get("mqtt-bridge", before["mqtt-bridge"]) == before["mqtt-bridge"], overrides
