"""`python -m infra.embedded.supervisor`: start again any component of the embedded stack that dies.

Why: `switchboard up` starts detached processes and exits. Without a supervisor a worker that is SIGKILLed (the OOM
killer, a `kill -9`) or crashes stays down until the next `up`: its partitions wait for its session to expire
before they move to the other workers, and with one worker nothing is processed at all. A deployment gets restarts
from Docker (`restart: unless-stopped`), systemd or Kubernetes; the embedded stack gets them from here.

How:
- Each recorded component's process is watched through a pidfd (Linux 5.3 or later), which becomes readable the
  moment the process exits, so the restart begins within milliseconds of the death, without polling (elsewhere a
  0.5 s poll). The run directory is read again every second for components that `up` started.
- A dead component is started exactly as `up` starts it (`EmbeddedStack.restart`: its command, environment, log
  and readiness check), under the stack lock, so `up`, `down` and the supervisor never start one component twice.
  `down` stops the supervisor before anything else, so nothing comes back while the stack stops.
- What is left of the dead process's group (children it started) is killed first, so the new one does not find its
  port or files taken.
- A dead worker is removed from its consumer group at once (streams/predecessor.py), so the group rebalances and
  the survivors take over its partitions while the new process starts (2-3 s), instead of waiting out the dead
  member's session or for the new process to remove it.
- Crash loops wait (infra/embedded/restarts.py). Each restart is logged here (logs/supervisor.log) and counted in
  run/supervisor.state, which `switchboard status` shows beside the component.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from infra.config import Settings, load_settings
from infra.embedded.components import SUPERVISOR, plan
from infra.embedded.process import ProcessRecord
from infra.embedded.restarts import RestartPolicy, Restarts, read_restarts, write_restarts
from infra.embedded.stack import EmbeddedStack
from streams import predecessor
from streams.app import worker_data_dir
from streams.worker import WORKER_ID_ENV
from topics.errors import StackError

log = logging.getLogger("switchboard.supervisor")
RESCAN_S = 1.0
POLL_S = 0.5  # only where pidfds are missing


class Supervisor:
    """Watches the recorded components of one stack and starts again those that die."""

    def __init__(self, settings: Settings, policy: RestartPolicy | None = None) -> None:
        self.settings = settings
        self.stack = EmbeddedStack(settings)
        self.policy = policy or RestartPolicy()
        self.history: dict[str, Restarts] = read_restarts(self.stack.run_dir)  # a renewed supervisor goes on
        self._watched: dict[str, tuple[int, float]] = {}  # name -> (pid, start time) of the process watched
        self._unwatch: dict[str, Callable[[], None]] = {}
        self._restarting: dict[str, asyncio.Task[None]] = {}
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # processes it started: it must reap them
        # Deaths already handled: a record left dead is not handled again at every scan.
        self._dead: set[tuple[str, int, float]] = set()
        self._removing: set[asyncio.Task[bool]] = set()
        # Planned now, so that what planning imports is loaded before a component is down (0.4 s).
        components = plan(settings)
        # Only these are watched: a process the settings no longer plan (a worker beyond workers.count, which `up`
        # stops) is not restarted, and its end is not a death.
        self._planned = {c.name for c in components}
        self._worker_ids = {c.name: c.env[WORKER_ID_ENV] for c in components if WORKER_ID_ENV in c.env}

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Watch until cancelled; `ready` is called once every running component is watched."""
        try:
            self._scan()
            if ready is not None:
                ready()
            while True:
                await asyncio.sleep(RESCAN_S)
                self._scan()
        finally:
            for name in list(self._unwatch):
                self._stop_watching(name)
            tasks = [*self._restarting.values(), *self._removing]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- watching ------------------------------------------------------------------------------------------------
    def _scan(self) -> None:
        for record in self.stack.records():
            if record.name == SUPERVISOR or record.name not in self._planned or record.name in self._restarting:
                continue
            key = (record.pid, record.started)
            if self._watched.get(record.name) == key or (record.name, *key) in self._dead:
                continue
            self._stop_watching(record.name)
            if record.alive:
                self._watch(record)
            else:
                self._died(record)

    def _watch(self, record: ProcessRecord) -> None:
        loop = asyncio.get_running_loop()
        self._watched[record.name] = (record.pid, record.started)
        try:
            fd = os.pidfd_open(record.pid)
        except (AttributeError, OSError):
            self._poll(record)
            return
        if not record.alive:  # gone, or its pid reused, before the pidfd was opened
            os.close(fd)
            self._watched.pop(record.name, None)
            self._died(record)
            return

        def exited() -> None:
            self._stop_watching(record.name)
            self._died(record)

        def unwatch() -> None:
            loop.remove_reader(fd)
            os.close(fd)

        loop.add_reader(fd, exited)
        self._unwatch[record.name] = unwatch

    def _poll(self, record: ProcessRecord) -> None:
        if record.alive:
            handle = asyncio.get_running_loop().call_later(POLL_S, self._poll, record)
            self._unwatch[record.name] = handle.cancel
        else:
            self._stop_watching(record.name)
            self._died(record)

    def _stop_watching(self, name: str) -> None:
        self._watched.pop(name, None)
        unwatch = self._unwatch.pop(name, None)
        if unwatch is not None:
            unwatch()

    # -- restarting ----------------------------------------------------------------------------------------------
    def _died(self, record: ProcessRecord) -> None:
        self._dead.add((record.name, record.pid, record.started))
        now = time.time()
        ran_s = max(0.0, now - record.started)
        history = self.history.setdefault(record.name, Restarts())
        history.last_death = now
        history.last_exit = self._exit_of(record.pid)
        delay = self.policy.delay(ran_s, history.quick_deaths)
        history.quick_deaths = self.policy.quick_deaths_after(ran_s, history.quick_deaths)
        how = f" ({history.last_exit})" if history.last_exit else ""
        log.warning("%s (pid %d) died%s after running %.1fs", record.name, record.pid, how, ran_s)
        _kill_group_leftovers(record)
        # Before the restart task: the new process must not be spawned before the record of the dead one is taken.
        self._remove_from_group(record.name)
        self._restarting[record.name] = asyncio.get_running_loop().create_task(
            self._restart(record.name, delay), name=f"restart-{record.name}")

    def _remove_from_group(self, name: str) -> None:
        """If `name` is a worker, remove its dead consumer-group member now, alongside the restart."""
        worker_id = self._worker_ids.get(name)
        if worker_id is None:
            return
        datadir = worker_data_dir(self.settings, worker_id)
        member = predecessor.take_dead(datadir, self.settings.workers.app_id)  # never raises
        if member is None:
            return  # it never joined, left cleanly, or its record cannot be read: its session expires
        task = asyncio.get_running_loop().create_task(predecessor.remove(self.settings, member, datadir),
                                                      name=f"remove-{name}")
        self._removing.add(task)
        task.add_done_callback(self._removing.discard)

    async def _restart(self, name: str, delay: float) -> None:
        history = self.history[name]
        try:
            while True:
                if delay:
                    history.next_start = time.time() + delay
                    self._save()
                    log.warning("%s: starting it again in %.0fs (%d quick death(s) or failed start(s) in a row)",
                                name, delay, history.quick_deaths)
                    await asyncio.sleep(delay)
                history.next_start = None
                self._save()
                log.info("%s: starting it again", name)
                try:
                    proc = await self.stack.restart(name, progress=log.info)
                except StackError as exc:
                    # "exited during start-up", and the last line of its log, which says why (a traceback's
                    # exception, say).
                    lines = [line.strip() for line in str(exc.reason).splitlines() if line.strip()]
                    history.last_error = lines[0] + (f": {lines[-1]}" if len(lines) > 2 else "")
                    log.error("%s: the restart failed: %s", name, exc.reason)
                    delay = self.policy.delay(0.0, history.quick_deaths)
                    history.quick_deaths += 1
                    continue
                if proc is None:
                    log.info("%s: nothing to start (it runs again, or is no longer part of the stack)", name)
                else:
                    self._children[proc.pid] = proc
                    history.restarts += 1
                    history.last_error = ""
                break
        finally:
            del self._restarting[name]
            self._save()
        self._scan()  # watch the new process at once, not at the next rescan

    def _exit_of(self, pid: int) -> str:
        """How a process it started ended (reaping it); "" for one it did not start, whose status only init sees."""
        proc = self._children.pop(pid, None)
        if proc is None:
            return ""
        code = proc.wait()
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit status {code}"

    def _save(self) -> None:
        try:
            write_restarts(self.stack.run_dir, self.history)
        except OSError as exc:
            log.warning("could not write %s: %s", self.stack.run_dir, exc)


def _kill_group_leftovers(record: ProcessRecord) -> None:
    """Each component runs in a session of its own, so its process group is its pid; SIGKILL what is left of it
    (a Ray raylet, say). The group id cannot be reused while any member lives, so this reaches no stranger."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGKILL)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    settings = load_settings()
    supervisor = Supervisor(settings)
    ready_file = os.environ.get("SWITCHBOARD_READY_FILE")

    def ready() -> None:
        if ready_file:
            Path(ready_file).write_text(str(os.getpid()))
        log.info("watching the components of %s", settings.data_dir)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(supervisor.run(ready))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("stopped; the components keep running")

    asyncio.run(run())


if __name__ == "__main__":
    main()
