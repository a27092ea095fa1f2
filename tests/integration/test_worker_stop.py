"""A worker stops cleanly on SIGTERM while its broker answers, and within `workers.stop_timeout_s` when the broker
is gone (Faust alone waited 62 s for its consumer there); the session goes on afterwards."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from infra.console import ChatSession
from infra.embedded import EmbeddedStack
from infra.testing import embedded_settings
from streams.bounded_stop import EXIT_STOP_DEADLINE

pytestmark = pytest.mark.integration
STOP_TIMEOUT_S = 10.0  # the default; a clean stop took 1.5 s on a quiet machine
DEADLINE_LINE = "the worker did not stop within"


def _worker(stack: EmbeddedStack) -> psutil.Process:
    record = next(record for record in stack.records() if record.name == "worker-0")
    process = record.process()
    assert process is not None, "the worker runs"
    return process


def _stop(process: psutil.Process) -> tuple[int | None, float]:
    """SIGTERM `process` (our child) and return its exit status and how long it took to exit."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=120)
    return status, time.monotonic() - started


async def test_a_worker_stops_cleanly_and_within_its_deadline_when_the_broker_is_gone(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, workers={"count": 1, "stop_timeout_s": STOP_TIMEOUT_S},
                                 bridge={"enabled": False})
    stack = EmbeddedStack(settings)
    log = settings.data_dir / "logs" / "worker-0.log"
    try:
        await stack.up()
        async with ChatSession(settings, "echo", "stop-1") as chat:
            _, replies = await chat.say("before the stop")
        assert [reply.data["text"] for reply in replies] == ["You said: before the stop (turn 1)"]

        # 1. Broker up: the clean stop (commit, leave the group) finishes well before the deadline.
        status, took = _stop(_worker(stack))
        assert status == 0, log.read_text(encoding="utf-8")[-3000:]
        assert took < STOP_TIMEOUT_S, f"a clean stop took {took:.1f}s"
        assert DEADLINE_LINE not in log.read_text(encoding="utf-8")

        # 2. Broker not answering: the stop cannot commit or leave, and the worker exits at its deadline, saying why.
        await stack.up()  # starts the worker again
        async with ChatSession(settings, "echo", "stop-2") as chat:
            await chat.say("before the broker goes")
        # A broker that does not answer (stopped, not dead: a dead one refuses connections, and the client may give
        # up at once, which is a fast clean stop and proves nothing about the deadline).
        tansu = next(record for record in stack.records() if record.name == "tansu")
        os.killpg(tansu.pid, signal.SIGSTOP)
        try:
            status, took = _stop(_worker(stack))
        finally:
            os.killpg(tansu.pid, signal.SIGCONT)
        assert status == EXIT_STOP_DEADLINE, log.read_text(encoding="utf-8")[-3000:]
        assert STOP_TIMEOUT_S - 0.5 <= took < STOP_TIMEOUT_S + 10, f"exited {took:.1f}s after SIGTERM"
        assert "(workers.stop_timeout_s)" in log.read_text(encoding="utf-8").split(DEADLINE_LINE, 1)[1][:80]

        # 3. With the broker and a worker back, the session goes on from its state (its second turn).
        await stack.up()
        async with ChatSession(settings, "echo", "stop-2") as chat:
            _, replies = await chat.say("after the broker came back")
        assert [reply.data["text"] for reply in replies] == ["You said: after the broker came back (turn 2)"]
    finally:
        stack.down()
