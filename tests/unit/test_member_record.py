"""The worker's group member record: what a restarted worker reads to remove its killed predecessor."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import psutil

from infra.config import load_settings
from infra.testing import free_port_block
from streams import predecessor


def _a_finished_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return int(child.stdout)


def _a_dead_workers_record(datadir: Path, member_id: str) -> predecessor.MemberRecord:
    """A record in `datadir` as a worker that has since died left it."""
    predecessor.record(datadir, "switchboard", member_id)
    mine = predecessor.read(datadir)
    assert mine is not None
    dead = replace(mine, pid=_a_finished_pid())
    (datadir / predecessor.RECORD_NAME).write_text(json.dumps(asdict(dead)))
    return dead


def test_a_record_is_read_back_and_names_this_living_process(tmp_path: Path) -> None:
    predecessor.record(tmp_path, "switchboard", "member-1")
    mine = predecessor.read(tmp_path)
    assert mine is not None
    assert (mine.group, mine.member_id, mine.host) == ("switchboard", "member-1", socket.gethostname())
    assert mine.process_gone() is False  # this process wrote it and runs


def test_a_finished_process_or_a_reused_pid_is_gone(tmp_path: Path) -> None:
    predecessor.record(tmp_path, "switchboard", "member-2")
    mine = predecessor.read(tmp_path)
    assert mine is not None
    assert replace(mine, pid=_a_finished_pid()).process_gone() is True
    # Same pid, another start time: a new process that was given the dead one's pid (pid 1 in a container).
    assert replace(mine, started=psutil.Process().create_time() - 60).process_gone() is True


def test_a_killed_process_not_yet_reaped_is_gone(tmp_path: Path) -> None:
    """The supervisor learns of a death from a pidfd, before the parent (init, for a worker `up` started) has
    reaped the process: the zombie is dead already."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        predecessor.record(tmp_path, "switchboard", "member-z")
        mine = predecessor.read(tmp_path)
        assert mine is not None
        child_record = replace(mine, pid=child.pid, started=psutil.Process(child.pid).create_time())
        assert child_record.process_gone() is False
        os.kill(child.pid, signal.SIGKILL)  # and not reaped (psutil.wait_procs would reap it)
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # the kernel finishes the exit
            assert time.monotonic() < deadline, "the killed child did not exit"
            time.sleep(0.01)
        assert child_record.process_gone() is True
    finally:
        child.kill()
        child.wait()


def test_taking_a_dead_record_removes_it_so_that_only_one_remover_removes_the_member(tmp_path: Path) -> None:
    predecessor.record(tmp_path, "switchboard", "member-t")
    assert predecessor.take_dead(tmp_path, "switchboard") is None  # this process lives: nothing to take
    _a_dead_workers_record(tmp_path, "member-t")
    assert predecessor.take_dead(tmp_path, "other-group") is None
    taken = predecessor.take_dead(tmp_path, "switchboard")
    assert taken is not None and taken.member_id == "member-t"
    assert predecessor.read(tmp_path) is None
    assert predecessor.take_dead(tmp_path, "switchboard") is None


async def test_a_removal_that_fails_puts_the_record_back_for_the_next_remover(tmp_path: Path) -> None:
    """The supervisor takes the record when the worker dies; if the broker is down too, the restarted worker must
    still find it and try again once the broker answers."""
    (port,) = free_port_block(1)
    settings = load_settings(data_dir=tmp_path / "data", kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
    _a_dead_workers_record(tmp_path, "member-b")
    taken = predecessor.take_dead(tmp_path, "switchboard")
    assert taken is not None
    assert await predecessor.remove(settings, taken, tmp_path) is False  # nothing listens on that port
    assert predecessor.read(tmp_path) == taken

    # Never over a newer record: the new worker's own, written once it joined.
    taken = predecessor.take_dead(tmp_path, "switchboard")
    assert taken is not None
    predecessor.record(tmp_path, "switchboard", "member-new")
    assert await predecessor.remove(settings, taken, tmp_path) is False
    newer = predecessor.read(tmp_path)
    assert newer is not None and newer.member_id == "member-new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(predecessor.RECORD_NAME.split(".")[0])) \
        == [predecessor.RECORD_NAME]  # no temporary file left


def test_another_hosts_process_is_never_taken_for_gone(tmp_path: Path) -> None:
    predecessor.record(tmp_path, "switchboard", "member-3")
    mine = predecessor.read(tmp_path)
    assert mine is not None
    assert replace(mine, host=mine.host + "-elsewhere", pid=2**22 + 1).process_gone() is False


def test_no_record_an_unreadable_one_or_a_forgotten_one_reads_as_none(tmp_path: Path) -> None:
    assert predecessor.read(tmp_path) is None
    (tmp_path / predecessor.RECORD_NAME).write_text("{not json")
    assert predecessor.read(tmp_path) is None
    predecessor.record(tmp_path, "switchboard", "member-4")
    predecessor.forget(tmp_path)
    assert predecessor.read(tmp_path) is None
