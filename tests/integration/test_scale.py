"""`switchboard up` with fewer workers than are running stops the extra ones, and `status` shows a running worker
these settings do not plan (infra/embedded/stack.py): before, a worker beyond `workers.count` kept consuming its
share of every topic while `status` no longer listed it."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from infra.console import ChatSession
from infra.embedded import EmbeddedStack
from infra.testing import embedded_settings
from streams.app import worker_data_dir
from streams.predecessor import read as read_member

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
