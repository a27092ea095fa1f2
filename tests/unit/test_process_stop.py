"""How `switchboard down` stops one component's process (infra/embedded/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from infra.embedded.process import ProcessRecord, spawn, stop

# Starts a process in a session of its own, as `switchboard up` does, prints its pid, and never reaps it: once it
# exits it stays a zombie, as a component `up` started does until init reaps it (some inits take seconds).
_NEGLECTFUL_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_component_that_exits_on_its_signal_is_stopped_and_reaped(tmp_path: Path) -> None:
    proc, record = spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], env=os.environ,
                         log=tmp_path / "sleeper.log", cwd=tmp_path)
    assert record.alive
    assert stop(record, timeout_s=10) == "stopped"
    assert not record.alive
    assert proc.poll() is not None  # reaped: no zombie child left behind


def test_a_component_that_ignores_its_signal_is_killed_after_the_timeout(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
               "time.sleep(120)"
    log = tmp_path / "stubborn.log"
    proc, record = spawn("stubborn", [sys.executable, "-c", stubborn], env=os.environ, log=log, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while "\nready\n" not in log.read_text():  # its handler is installed before the signal comes (the log's
        # first line, the command, says 'ready' too)
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    assert stop(record, timeout_s=0.5) == "killed"
    assert proc.poll() is not None


def test_an_exited_component_that_nobody_has_reaped_yet_counts_as_stopped(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _NEGLECTFUL_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        component = psutil.Process(pid)
        record = ProcessRecord(name="orphan", pid=pid, started=component.create_time(), command=[], log="",
                               ports=[])
        # Waiting for it to disappear would wait out the timeout and then report it killed.
        assert stop(record, timeout_s=5) == "stopped"
        assert component.status() == psutil.STATUS_ZOMBIE  # still there: only its parent can reap it
        assert not record.alive
    finally:
        parent.kill()
        parent.wait()
