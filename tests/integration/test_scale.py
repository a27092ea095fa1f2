"""`switchboard up` applies changed settings to a running stack (infra/embedded/stack.py): with fewer workers than
are running it stops the extra ones, it stops a component the settings turned off, and it starts again a component
started from other settings; `status` shows both kinds before `up` runs. Before, a worker beyond `workers.count`
kept consuming its share of every topic while `status` no longer listed it, a bridge turned off kept running, and
`up` left every running worker on its old settings ("already running")."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import psutil
import pytest

from agents.dialogue.errors import DialogueError
from agents.registry import AGENTS_DIR
from infra.config import Settings
from infra.console import ChatSession
from infra.embedded import EmbeddedStack
from infra.embedded.components import settings_digest
from infra.embedded.process import ProcessRecord
from infra.testing import embedded_settings
from streams.app import worker_data_dir
from streams.predecessor import read as read_member
from topics.errors import StackError

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_up_with_fewer_workers_stops_the_extra_ones_and_the_rest_answers(tmp_path: Path) -> None:
    two = embedded_settings(tmp_path, embedded={"supervise": True}, workers={"count": 2}, bridge={"enabled": False})
    one = two.model_copy(update={"workers": two.workers.model_copy(update={"count": 1})})
    stack = EmbeddedStack(two)
    try:
        statuses = {s.name: s for s in await stack.up()}
        assert statuses["worker-0"].running and statuses["worker-1"].running, statuses
        extra = next(r for r in stack.records() if r.name == "worker-1")
        async with ChatSession(two, "echo", "scaled", reply_timeout_s=60.0) as chat:
            _, replies = await chat.say("with two")
            assert [r.data["text"] for r in replies] == ["You said: with two (turn 1)"]

            # Settings with one worker, before `up` applies them: status still shows the second one, as unplanned.
            stack = EmbeddedStack(one)
            before = {s.name: s for s in await stack.status()}
            assert before["worker-1"].running and not before["worker-1"].planned, before["worker-1"]
            assert before["worker-1"].pid == extra.pid and "workers.count is 1" in before["worker-1"].detail
            assert all(s.planned for name, s in before.items() if name != "worker-1")

            progress: list[str] = []
            statuses = {s.name: s for s in await stack.up(progress.append)}
            assert "worker-1: stopped (workers.count is 1)" in progress, progress
            assert _gone(extra.pid)
            # It stopped cleanly: it left the consumer group itself and dropped its member record, which is only
            # kept for a worker that died (streams/predecessor.py).
            assert read_member(worker_data_dir(two, "1")) is None
            assert "worker-1" not in {r.name for r in stack.records()}
            assert "worker-1" not in statuses and statuses["worker-0"].running, statuses
            assert statuses["supervisor"].running, statuses  # started again with the new count

            # The one left takes over every partition.
            _, replies = await chat.say("with one")
            assert [r.data["text"] for r in replies] == ["You said: with one (turn 2)"]
    finally:
        stack.down()
    assert stack.records() == []
    # The supervisor watches what the settings plan: the retired worker's end was no death to it.
    assert "worker-1 (pid" not in (tmp_path / "logs" / "supervisor.log").read_text()


async def test_up_starts_again_what_runs_on_old_settings_and_stops_what_they_turned_off(tmp_path: Path) -> None:
    old = embedded_settings(tmp_path, embedded={"supervise": True}, workers={"count": 1}, bridge={"enabled": True})
    new = old.model_copy(update={"kafka": old.kafka.model_copy(update={"fetch_max_wait_ms": 20}),
                                 "bridge": old.bridge.model_copy(update={"enabled": False}),
                                 "s3": old.s3.model_copy(update={"bucket": "switchboard-renamed"})})
    stack = EmbeddedStack(old)
    try:
        await stack.up()
        before = {r.name: r for r in stack.records()}
        async with ChatSession(old, "echo", "settings", reply_timeout_s=60.0) as chat:
            _, replies = await chat.say("before")
            assert [r.data["text"] for r in replies] == ["You said: before (turn 1)"]

            before = await _failed_ups_change_what_runs_but_the_supervisor(old, tmp_path, before)

            stack = EmbeddedStack(new)
            status = {s.name: s for s in await stack.status()}
            assert "started with other settings" in status["worker-0"].detail, status["worker-0"]
            assert not status["mqtt-bridge"].planned and "bridge.enabled is off" in status["mqtt-bridge"].detail

            progress: list[str] = []
            statuses = {s.name: s for s in await stack.up(progress.append)}
            assert "worker-0: stopped (started with other settings), starting it again" in progress, progress
            assert "mqtt-bridge: stopped (bridge.enabled is off)" in progress, progress
            assert "supervisor: stopped (the settings changed)" in progress, progress
            after = {r.name: r for r in stack.records()}
            assert after["worker-0"].pid != before["worker-0"].pid and _gone(before["worker-0"].pid)
            assert after["worker-0"].settings_digest == settings_digest(new)
            environ = psutil.Process(after["worker-0"].pid).environ()
            assert environ["SWITCHBOARD_KAFKA__FETCH_MAX_WAIT_MS"] == "20"
            assert _gone(before["mqtt-bridge"].pid) and "mqtt-bridge" not in after and "mqtt-bridge" not in statuses
            for server in ("seaweedfs", "tansu", "mqtt"):  # their arguments did not change
                assert after[server].pid == before[server].pid, server
            # Healthy, SeaweedFS included: it was checked as it ran, which created the new bucket.
            assert all(s.running and s.healthy for s in statuses.values()), statuses
            assert "started with other settings" not in statuses["worker-0"].detail

            # The new worker goes on from the state the old one left: the session's second turn.
            _, replies = await chat.say("after")
            assert [r.data["text"] for r in replies] == ["You said: after (turn 2)"]

            progress.clear()
            await stack.up(progress.append)  # nothing changed since: nothing starts again
            assert f"worker-0: already running (pid {after['worker-0'].pid})" in progress, progress
    finally:
        stack.down()
    assert stack.records() == []
    supervisor_log = (tmp_path / "logs" / "supervisor.log").read_text()
    assert "worker-0 (pid" not in supervisor_log and "mqtt-bridge (pid" not in supervisor_log, \
        "a component `up` stopped is no death to the supervisor"


async def _failed_ups_change_what_runs_but_the_supervisor(old: Settings, tmp_path: Path,
                                                          before: dict[str, ProcessRecord]) -> dict[str, ProcessRecord]:
    """`up` with new settings that fail leaves what ran running, and a supervisor watching it; the records after."""
    stack = EmbeddedStack(old)
    # New settings that cannot work (the MQTT broker's new port is taken) change nothing: the supervisor
    # keeps watching what runs.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        blocked = old.model_copy(update={"embedded": old.embedded.model_copy(update={"mqtt_port": port})})
        with pytest.raises(StackError, match=f"port {port} is already in use"):
            await EmbeddedStack(blocked).up()
    assert {r.name: r.pid for r in stack.records()} == {name: r.pid for name, r in before.items()}

    # New settings that fail part-way (a second `helpdesk` agent, found as the topics are declared, after
    # the supervisor was stopped): what ran keeps running, and a supervisor watches it again.
    more = tmp_path / "more agents"
    shutil.copytree(AGENTS_DIR / "helpdesk", more / "helpdesk")
    failing = old.model_copy(update={"workers": old.workers.model_copy(update={"agent_dirs": (more,)})})
    with pytest.raises(DialogueError, match="declared twice"):
        await EmbeddedStack(failing).up()
    pids = {r.name: r.pid for r in stack.records()}
    assert pids.pop("supervisor") != before["supervisor"].pid
    assert pids == {name: r.pid for name, r in before.items() if name != "supervisor"}
    return {r.name: r for r in stack.records()}

