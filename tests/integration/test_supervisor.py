"""`switchboard up`'s supervisor starts again a component that dies (infra/embedded/supervisor.py): a SIGKILLed
worker and a SIGKILLed broker come back by themselves, a turn sent while the worker was dead is answered once, and
`down` stops everything without the supervisor bringing anything back."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from infra.console import ChatSession
from infra.embedded import EmbeddedStack
from infra.embedded.process import ProcessRecord
from infra.embedded.stack import ComponentStatus
from infra.embedded.supervisor import Supervisor
from infra.testing import embedded_settings

pytestmark = pytest.mark.integration


def _record(stack: EmbeddedStack, name: str) -> ProcessRecord:
    return next(r for r in stack.records() if r.name == name)


async def _status_until(stack: EmbeddedStack, name: str, check: Callable[[ComponentStatus], bool],
                        timeout_s: float = 90.0) -> ComponentStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: ComponentStatus | None = None
    while loop.time() < deadline:
        last = next(s for s in await stack.status() if s.name == name)
        if check(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} did not reach the expected state within {timeout_s:.0f}s: {last}")


async def _back(stack: EmbeddedStack, name: str, dead_pid: int, restarts: int,
                timeout_s: float = 90.0) -> ComponentStatus:
    """The component's status once a process other than `dead_pid` runs it, answers its readiness check, and the
    supervisor has counted `restarts` restarts of it."""
    counted = f"started again {restarts} time{'s' if restarts != 1 else ''} by the supervisor"
    return await _status_until(stack, name, lambda s: bool(s.running and s.healthy and s.pid != dead_pid
                                                           and counted in s.detail), timeout_s)


def _kill(record: ProcessRecord) -> None:
    os.killpg(record.pid, signal.SIGKILL)
    psutil.Process(record.pid).wait(10)


async def test_a_killed_worker_and_broker_come_back_by_themselves(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, embedded={"supervise": True}, workers={"count": 1},
                                 bridge={"enabled": False})
    stack = EmbeddedStack(settings)
    try:
        statuses = {s.name: s for s in await stack.up()}
        assert statuses["supervisor"].running and statuses["supervisor"].healthy, statuses["supervisor"]
        async with ChatSession(settings, "echo", "supervised", reply_timeout_s=90.0) as chat:
            _, replies = await chat.say("before")
            assert [r.data["text"] for r in replies] == ["You said: before (turn 1)"]

            worker = _record(stack, "worker-0")
            _kill(worker)
            # Sent while no worker runs: answered once the supervisor's restart has joined the group.
            _, replies = await chat.say("while it was dead")
            assert [r.data["text"] for r in replies] == ["You said: while it was dead (turn 2)"]
            status = await _back(stack, "worker-0", worker.pid, restarts=1)
            assert "killed by SIGKILL" not in status.detail  # `up` started it, so its exit status is init's

            broker = _record(stack, "tansu")
            _kill(broker)
            await _back(stack, "tansu", broker.pid, restarts=1)
            _, replies = await chat.say("after the broker died")
            assert [r.data["text"] for r in replies] == ["You said: after the broker died (turn 3)"]

            # The restarted worker is the supervisor's child: its death is reported with how it ended.
            again = _record(stack, "worker-0")
            _kill(again)
            status = await _back(stack, "worker-0", again.pid, restarts=2)
            assert "killed by SIGKILL" in status.detail, status.detail
            _, replies = await chat.say("and again")
            assert [r.data["text"] for r in replies] == ["You said: and again (turn 4)"]

            # Nothing restarts the supervisor itself: status says so, and `up` starts it again.
            supervisor = _record(stack, "supervisor")
            _kill(supervisor)
            unsupervised = await _status_until(stack, "supervisor", lambda s: not s.running)
            assert "until `switchboard up` starts the supervisor again" in unsupervised.detail, unsupervised.detail
            again_up = {s.name: s for s in await stack.up()}
            assert again_up["supervisor"].running and again_up["supervisor"].pid != supervisor.pid
    finally:
        recorded = stack.records()
        outcomes = dict(stack.down())
    assert next(iter(outcomes)) == "supervisor", outcomes  # stopped first, so it restarts nothing that `down` stops
    # Each stopped on its signal: stopping the supervisor leaves the worker it started (its child) running, for
    # `down` to stop in turn, instead of waiting for it and SIGKILLing it as part of the supervisor.
    assert outcomes["supervisor"] == "stopped" and outcomes["worker-0"] == "stopped", outcomes
    assert stack.records() == [], "nothing was started again after `down`"
    assert [r.name for r in recorded if r.alive] == []
    # Each dead worker left the group the moment it died, by the supervisor's hand (streams/predecessor.py); the
    # restarted worker found nothing left to remove. (A dead worker still a zombie counts as gone: unit-tested.)
    logs = settings.data_dir / "logs"
    assert (logs / "supervisor.log").read_text().count("removed the dead worker's member") == 2
    assert "removed the dead worker's member" not in (logs / "worker-0.log").read_text()


MENDER = """agent: mender
dialogues:
  - id: hello
    trigger: "hi|hello"
    actions:
      - {type: reply, content: "Mended."}
fallback:
  actions:
    - {type: reply, content: "Say hi."}
"""


async def test_a_worker_that_cannot_start_is_tried_again_later_and_comes_back_once_fixed(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    (agents / "mender").mkdir(parents=True)
    policy = agents / "mender" / "policy.yaml"
    policy.write_text(MENDER)
    settings = embedded_settings(tmp_path / "data", embedded={"supervise": True}, bridge={"enabled": False},
                                 workers={"count": 1, "agent_dirs": [agents]})
    stack = EmbeddedStack(settings)
    try:
        await stack.up()
        policy.write_text("agent: mender\ndialogues: 5\n")  # a bad edit: the next start of the worker fails
        worker = _record(stack, "worker-0")
        _kill(worker)
        failing = await _status_until(stack, "worker-0", lambda s: "last restart failed" in s.detail)
        assert not failing.running
        assert "exited during start-up: agents.dialogue.errors.PolicyError: " in failing.detail, failing.detail
        policy.write_text(MENDER)  # fixed: a later attempt, after its crash-loop delay, starts it
        await _back(stack, "worker-0", worker.pid, restarts=1)
        async with ChatSession(settings, "mender", "mended") as chat:
            _, replies = await chat.say("hi")
            assert [r.data["text"] for r in replies] == ["Mended."]

        # `up --workers 2`: the running supervisor planned for one worker, so `up` starts a new one, which restarts
        # the added worker too (and keeps the history of the first).
        grown = settings.model_copy(update={"workers": settings.workers.model_copy(update={"count": 2})})
        grown_stack = EmbeddedStack(grown)
        said: list[str] = []
        await grown_stack.up(progress=said.append)
        assert "supervisor: stopped (the settings changed)" in said, said
        added = _record(grown_stack, "worker-1")
        _kill(added)
        await _back(grown_stack, "worker-1", added.pid, restarts=1)
        first = next(s for s in await grown_stack.status() if s.name == "worker-0")
        assert "started again 1 time by the supervisor" in first.detail, first.detail
    finally:
        stack.down()
    log = (settings.data_dir / "logs" / "supervisor.log").read_text()
    assert "worker-0: the restart failed: exited during start-up" in log
    assert "worker-0: starting it again in 1s" in log, "the second failure in a row waits"


async def test_a_restart_whose_port_is_taken_says_so_and_succeeds_once_the_port_is_free(tmp_path: Path) -> None:
    """The supervisor runs in this test's process, started after the kill, so that the test can take the dead
    broker's port before the supervisor's first restart (which otherwise comes within milliseconds)."""
    settings = embedded_settings(tmp_path, workers={"count": 0}, bridge={"enabled": False})
    stack = EmbeddedStack(settings)
    supervising: asyncio.Task[None] | None = None
    try:
        await stack.up()
        mqtt = _record(stack, "mqtt")
        _kill(mqtt)
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the readiness checks' TIME_WAITs
            squatter.bind(("127.0.0.1", settings.embedded.mqtt_port))
            squatter.listen()
            supervising = asyncio.create_task(Supervisor(settings).run())
            failing = await _status_until(stack, "mqtt", lambda s: "last restart failed" in s.detail)
            assert not failing.running
            assert f"port {settings.embedded.mqtt_port} is already in use by" in failing.detail, failing.detail
            assert "SWITCHBOARD_EMBEDDED__MQTT_PORT" in failing.detail, "it says how to move the port"
        # The port is free again: a later attempt, after its crash-loop delay, starts the broker.
        back = await _back(stack, "mqtt", mqtt.pid, restarts=1)
        assert "last restart failed" not in back.detail, back.detail
    finally:
        if supervising is not None:
            supervising.cancel()
            await asyncio.gather(supervising, return_exceptions=True)
        stack.down()
    assert stack.records() == []
