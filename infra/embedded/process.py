"""Child processes of the embedded stack: started detached with their output in a log file, recorded by PID (with
the process's start time, so a recycled PID is never mistaken for ours) and stopped by process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessRecord:
    """What `switchboard down` and `status` need to find a component again, from another process."""

    name: str
    pid: int
    started: float  # psutil create_time: identifies the process beyond its PID
    command: list[str]
    log: str
    ports: list[int]
    stop_signal: int = signal.SIGTERM
    settings_digest: str = ""  # of the settings it was started with, where `up` must notice a change (supervisor)

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{self.name}.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(run_dir / f"{self.name}.json")

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited (or the PID now belongs to someone else)."""
        try:
            return live_process(self.pid, self.started)
        except psutil.Error:
            return None

    @property
    def alive(self) -> bool:
        return self.process() is not None


def live_process(pid: int, started: float, tolerance_s: float = 1.0) -> psutil.Process | None:
    """Process `pid` if it still runs and is the one created at `started` (psutil's create_time, within
    `tolerance_s`); None once it has exited, also while it is a zombie its parent has not reaped yet (some inits
    reap only every few seconds), or when the pid now names another process. Raises psutil.Error (AccessDenied)
    when that cannot be told: the callers decide what an unknown state means."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) > tolerance_s or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:  # ZombieProcess included
        return None


def spawn(name: str, command: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path,
          ports: Sequence[int] = (), stop_signal: int = signal.SIGTERM,
          settings_digest: str = "") -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start `command` in its own session (so it outlives the CLI and can be signalled as a group)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(env), cwd=cwd, start_new_session=True,
        )
    started = psutil.Process(proc.pid).create_time()
    record = ProcessRecord(name=name, pid=proc.pid, started=started, command=list(command), log=str(log),
                           ports=list(ports), stop_signal=int(stop_signal), settings_digest=settings_digest)
    return proc, record


def stop(record: ProcessRecord, timeout_s: float) -> str:
    """Send the component's stop signal to its process group, SIGKILL what is left after `timeout_s`.

    Reaps it if it is our child.

    Returns how it ended: "stopped", "killed" or "not running".
    """
    proc = record.process()
    if proc is None:
        return "not running"
    group = [proc, *_descendants_outside_other_components(proc)]
    try:
        os.killpg(record.pid, record.stop_signal)
    except ProcessLookupError:
        return "not running"
    except PermissionError:
        proc.terminate()
    alive = _until_exited(group, timeout_s)
    if not alive:
        return "stopped"
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    _until_exited(alive, 5)
    return "killed"


def _until_exited(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until each process has exited; those still running after `timeout_s`.

    A process that has exited counts at once, also while it is a zombie: `psutil.wait_procs` waits for it to be
    reaped, which for a component `up` started is up to init, and some inits (a sandbox's) reap only every 2 s or
    so, which made each stop take 2 s. Our own children are reaped here."""
    deadline = time.monotonic() + timeout_s
    running = list(procs)
    delay = 0.01
    while True:
        running = [proc for proc in running if not _exited(proc)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)


def _exited(proc: psutil.Process) -> bool:
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return not proc.is_running()  # is_running is False for a pid reused by another process
        with contextlib.suppress(psutil.TimeoutExpired, psutil.Error):
            proc.wait(0)  # reaps it if it is our child; another's zombie is its parent's to reap
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _descendants_outside_other_components(proc: psutil.Process) -> list[psutil.Process]:
    """The process's descendants, less the components it started (each leads a session of its own, as `spawn`
    starts it) and theirs: the supervisor's children are the components it started again, and stopping the
    supervisor must not stop (or wait for) them. Other descendants, in the group or not (Ray's actor processes
    set their own group), are the component's."""
    try:
        descendants = proc.children(recursive=True)
    except psutil.Error:
        return []
    excluded: set[int] = set()
    for child in descendants:
        with contextlib.suppress(OSError, psutil.Error):
            if child.pid not in excluded and os.getsid(child.pid) == child.pid:
                excluded.add(child.pid)
                excluded.update(grandchild.pid for grandchild in child.children(recursive=True))
    return [child for child in descendants if child.pid not in excluded]


def tail(path: Path | str, lines: int = 15) -> str:
    """The last lines of a log, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def port_owner(port: int) -> str | None:
    """Who listens on 127.0.0.1:`port` (name and pid), if anyone; None when the port is free."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
    except psutil.Error:
        pass
    return "another process"
