"""Starting a local Ray survives its node missing Ray's fixed 30 s registration wait once (a busy two-core
machine), and what the failed start left running is stopped first; nothing else is retried."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from serving.cluster import is_node_startup_timeout, retry_node_startup

#: What `ray.init()` raised on CI (ray 2.60, ray/_private/node.py).
TIMED_OUT = Exception("The current node timed out during startup. This could happen because some of the raylet "
                      "failed to startup or the GCS has become overloaded.")


class Start:
    """An `init` that, like a failed `ray.init`, leaves a process of its own running before each given error."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.left: list[subprocess.Popen[bytes]] = []
        self.shutdowns = 0

    def __call__(self) -> str:
        if self.errors:
            self.left.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
            raise self.errors.pop(0)
        return "started"

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_only_the_node_startup_timeout_is_recognised() -> None:
    assert is_node_startup_timeout(TIMED_OUT)
    assert not is_node_startup_timeout(RuntimeError("Failed to connect to GCS"))


def test_a_start_that_timed_out_is_cleaned_up_and_tried_once_more(caplog: pytest.LogCaptureFixture) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # started before: kept
    start = Start(TIMED_OUT)
    try:
        assert retry_node_startup(start, start.shutdown) == "started"
        assert start.shutdowns == 1
        (left,) = start.left
        assert left.poll() is not None, "what the failed start left was killed (and reaped)"
        assert psutil.Process(bystander.pid).is_running() and bystander.poll() is None
        assert "did not register within Ray's fixed 30 s" in caplog.text
    finally:
        for proc in (bystander, *start.left):
            proc.kill()
            proc.wait()


def test_another_error_or_a_second_timeout_propagates() -> None:
    other = Start(RuntimeError("Failed to connect to GCS"))
    twice = Start(TIMED_OUT, TIMED_OUT)
    try:
        with pytest.raises(RuntimeError, match="Failed to connect"):
            retry_node_startup(other, other.shutdown)
        assert other.shutdowns == 0
        with pytest.raises(Exception, match="timed out during startup"):
            retry_node_startup(twice, twice.shutdown)
        assert twice.shutdowns == 1
    finally:
        for proc in (*other.left, *twice.left):
            proc.kill()
            proc.wait()
