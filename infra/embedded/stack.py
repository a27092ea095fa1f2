"""`switchboard up / down / status`: the embedded stack on one machine, or only workers against real services."""

from __future__ import annotations

import asyncio
import fcntl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from infra.config import Settings
from infra.embedded import checks
from infra.embedded.components import SUPERVISOR, Component, plan, run_dir, settings_digest, wait_ready
from infra.embedded.process import ProcessRecord, port_owner, spawn, stop, tail
from topics.errors import StackError

Progress = Callable[[str], None]
_LOCK_WAIT_S = 10.0
_PORT_SETTING = {
    "seaweedfs": "SWITCHBOARD_EMBEDDED__S3_PORT / __WEED_{MASTER,VOLUME,FILER,ADMIN}_PORT (gRPC: each + 10000)",
    "tansu": "SWITCHBOARD_EMBEDDED__KAFKA_PORT",
    "mqtt": "SWITCHBOARD_EMBEDDED__MQTT_PORT",
}


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool | None
    endpoint: str
    log: str
    detail: str = ""
    #: False for a process `up` started that these settings no longer plan (say, a worker beyond workers.count):
    #: it runs, but whether it answers is not checked, and it does not count towards the stack's health.
    planned: bool = True


def _noop(_: str) -> None:
    pass


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class EmbeddedStack:
    """Starts, stops and inspects the processes `switchboard up` owns under `settings.data_dir`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = run_dir(settings)

    # -- records -------------------------------------------------------------------------------------------------
    def records(self) -> list[ProcessRecord]:
        """Recorded components, in start order."""
        found = [ProcessRecord.load(p) for p in self.run_dir.glob("*.json")]
        return sorted((r for r in found if r is not None), key=lambda r: r.started)

    def _forget(self, name: str) -> None:
        (self.run_dir / f"{name}.json").unlink(missing_ok=True)
        (self.run_dir / f"{name}.ready").unlink(missing_ok=True)

    def _lock_file(self) -> IO[str]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return (self.run_dir / "stack.lock").open("w")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The stack lock, held by `up`, `down` and the supervisor while they start or stop processes.

        The supervisor holds it only for a spawn (milliseconds), so waiting a little for it is right; another
        `up` or `down` holds it far longer and is reported."""
        with self._lock_file() as lock:
            deadline = time.monotonic() + _LOCK_WAIT_S
            while not _try_lock(lock):
                if time.monotonic() > deadline:
                    raise StackError("switchboard",
                                     f"another `switchboard up/down` is running on {self.settings.data_dir}")
                time.sleep(0.05)
            yield

    @asynccontextmanager
    async def _locked_async(self) -> AsyncIterator[None]:
        """The stack lock for code on an event loop (the supervisor): waits as long as `up` or `down` holds it,
        without blocking the loop, so that a SIGTERM from `down` still ends the wait."""
        with self._lock_file() as lock:
            # flock has nothing to await, and a thread blocked in it would outlive a cancelled wait.
            while not _try_lock(lock):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            yield

    # -- up ------------------------------------------------------------------------------------------------------
    def _check_data_dir(self) -> None:
        data = self.settings.data_dir
        try:
            data.mkdir(parents=True, exist_ok=True)
            probe = data / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StackError("switchboard", f"data directory {data} is not writable ({exc.strerror}); "
                                            "choose another with SWITCHBOARD_DATA_DIR") from None

    def _check_ports(self, component: Component, held: list[int] | None = None) -> None:
        """Fail if a port the component needs is taken; `held`: those its running predecessor holds (it stops
        first)."""
        for port in component.ports:
            if held and port in held:
                continue
            owner = port_owner(port)
            if owner is not None:
                setting = _PORT_SETTING.get(component.name, "the SWITCHBOARD_EMBEDDED__*_PORT settings")
                raise StackError(component.name, f"port {port} is already in use by {owner}; stop it, or move "
                                                 f"Switchboard with {setting}", port=port, log=str(component.log))

    async def up(self, progress: Progress = _noop) -> list[ComponentStatus]:
        """Start whatever is not running yet, and again whatever runs with other settings than these (one at a
        time, in start order: workers roll); wait for each to answer, those already running included. Then stop
        what these settings no longer plan. On failure, stop what this call started that was not running before
        it; a component it was starting again stays stopped, and the error says which."""
        self._check_data_dir()
        with self._locked():
            for part, address, error in await checks.external_checks(self.settings):
                if error is not None:
                    raise StackError(part, f"the configured external {part} at {address} does not answer: {error}")
                progress(f"external {part} at {address}: ok")
            running = {r.name: r for r in self.records() if r.alive}
            started: list[ProcessRecord] = []
            components = plan(self.settings)
            stale = {c.name for c in components
                     if c.name != SUPERVISOR and c.name in running and _outdated(running[c.name], c)}
            for component in components:  # fail before changing anything
                if component.name not in running:
                    self._check_ports(component)
                elif component.name in stale:
                    self._check_ports(component, held=running[component.name].ports)
            # A supervisor left running would take a component stopped below for a death.
            supervisor_stopped = self._renew_supervisor(running, components, progress, restarting=sorted(stale))
            try:
                topics_ready = False
                for component in components:
                    if component.name.startswith(("worker-", "mqtt-bridge")) and not topics_ready:
                        await self._create_topics(progress)
                        topics_ready = True
                    record = running.get(component.name)
                    if record is not None and component.name in stale:
                        outcome = stop(record, self.settings.embedded.stop_timeout_s)
                        progress(f"{component.name}: {outcome} (started with other settings), starting it again")
                        self._forget(component.name)
                        await self._start(component, progress)  # kept on a later failure: it ran before this call
                        continue
                    if record is not None and record.alive:
                        progress(f"{component.name}: already running (pid {record.pid})")
                        await self._confirm_running(component, record)
                        continue
                    self._forget(component.name)  # not running, or died since this call began
                    started.append(await self._start(component, progress))
                if not topics_ready:
                    await self._create_topics(progress)
            except BaseException:
                for record in reversed(started):
                    stop(record, self.settings.embedded.stop_timeout_s)
                    self._forget(record.name)
                if supervisor_stopped is not None and not any(r.name == SUPERVISOR for r in started):
                    await self._restore_supervisor(supervisor_stopped, progress)
                raise
            self._retire_unplanned(running, components, progress)
        return await self.status()

    async def _confirm_running(self, component: Component, record: ProcessRecord) -> None:
        """A component already running answers, and does what these settings need of it: SeaweedFS's check
        creates their buckets, which may be new. Not stopped if it does not: the error says so."""
        try:
            await wait_ready(component, lambda: record.alive,
                             component.start_timeout_s or self.settings.embedded.start_timeout_s)
        except StackError as exc:
            state = ("has exited since; `switchboard up` starts it" if not record.alive
                     else f"does not answer: {exc.reason}; see its log, or restart the stack with `switchboard down` "
                          "and `switchboard up`")
            raise StackError(component.name, f"was running (pid {record.pid}) but {state}\n  last log lines:\n"
                                             f"{tail(component.log)}", log=str(component.log)) from None

    async def _restore_supervisor(self, component: Component, progress: Progress) -> None:
        """After a failed `up` that had stopped the supervisor: start it again, so that what runs stays watched
        (best effort: the failure being reported matters more)."""
        try:
            await self._start(component, progress)
        except (StackError, OSError) as exc:
            progress(f"{SUPERVISOR}: could not be started again ({exc}); `switchboard up` starts it")

    def _retire_unplanned(self, running: dict[str, ProcessRecord], components: list[Component],
                          progress: Progress) -> None:
        """Stop the running components these settings do not plan: workers beyond `workers.count` (an earlier
        `up` started more), the bridge or the model server once turned off, an embedded server once the settings
        name an external one. Left running, a worker kept consuming its share of every topic, and a bridge kept
        publishing. Stopped after the planned ones run, so that the group never has fewer workers; those of one
        round (`_stop_round`: users before what they use) together, on their signal, so that workers leave the
        consumer group themselves, in one rebalance. The supervisor watches only planned components, so it
        neither restarts them nor counts their end."""
        planned = {component.name for component in components}
        rounds: dict[int, list[ProcessRecord]] = {}
        for name, record in running.items():
            if name not in planned and name != SUPERVISOR:  # the supervisor: `_renew_supervisor`
                rounds.setdefault(_stop_round(name), []).append(record)
        for _, records in sorted(rounds.items()):
            for record, outcome in self._stop_together(records):
                progress(f"{record.name}: {outcome} ({self._not_planned_because(record.name)})")

    def _not_planned_because(self, name: str) -> str:
        settings = self.settings
        if name.startswith("worker-"):
            return f"workers.count is {settings.workers.count}"
        return {
            "mqtt-bridge": "bridge.enabled is off",
            "serving": ("serving.enabled is off" if not settings.serving.enabled
                        else "serving.ray_address names a Ray cluster"),
            "tansu": "kafka.bootstrap_servers names an external Kafka",
            "seaweedfs": "s3.endpoint_url names an external S3",
            "mqtt": "mqtt.host names an external broker",
            SUPERVISOR: "embedded.supervise is off",
        }.get(name, "these settings do not plan it")

    def _stop_together(self, records: list[ProcessRecord]) -> list[tuple[ProcessRecord, str]]:
        """Stop `records` in parallel (each takes a few seconds to stop cleanly) and forget them; their outcomes,
        in the order given."""
        if not records:
            return []
        timeout_s = self.settings.embedded.stop_timeout_s
        with ThreadPoolExecutor(max_workers=len(records)) as pool:
            outcomes = list(pool.map(lambda r: stop(r, timeout_s), records))
        for record in records:
            self._forget(record.name)
        return list(zip(records, outcomes, strict=True))

    def _renew_supervisor(self, running: dict[str, ProcessRecord], components: list[Component],
                          progress: Progress, restarting: list[str]) -> Component | None:
        """Stop a running supervisor that plans from other settings than these (it would not restart a worker
        that `up --workers 3` added), that these settings turn off, or while `up` starts components again
        (`restarting`); in the first and last cases a new one starts last. The planned supervisor, when one was
        stopped and these settings plan one (for a failed `up` to start it again)."""
        current = running.get(SUPERVISOR)
        if current is None:
            return None
        wanted = next((c for c in components if c.name == SUPERVISOR), None)
        if wanted is None:
            why = "embedded.supervise is off"
        elif wanted.settings_digest != current.settings_digest:
            why = "the settings changed"
        elif restarting:
            why = f"so as not to start again what `up` restarts: {', '.join(restarting)}"
        else:
            return None
        progress(f"{SUPERVISOR}: {stop(current, self.settings.embedded.stop_timeout_s)} ({why})")
        self._forget(SUPERVISOR)
        del running[SUPERVISOR]
        return wanted

    async def _start(self, component: Component, progress: Progress) -> ProcessRecord:
        proc, record = self._spawn(component, progress)
        await self._until_ready(component, proc, record, progress, forget_on_failure=True)
        return record

    def _spawn(self, component: Component, progress: Progress) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
        self._check_ports(component)
        progress(f"{component.name}: starting")
        try:
            proc, record = spawn(component.name, component.command, env=component.env, log=component.log,
                                 cwd=component.cwd, ports=component.ports, stop_signal=component.stop_signal,
                                 settings_digest=component.settings_digest)
        except OSError as exc:
            raise StackError(component.name, f"cannot run {component.command[0]}: {exc.strerror}",
                             log=str(component.log)) from None
        record.save(self.run_dir)
        return proc, record

    async def _until_ready(self, component: Component, proc: subprocess.Popen[bytes], record: ProcessRecord,
                           progress: Progress, *, forget_on_failure: bool) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await wait_ready(component, lambda: proc.poll() is None,
                             component.start_timeout_s or self.settings.embedded.start_timeout_s)
        except StackError as exc:
            stop(record, self.settings.embedded.stop_timeout_s)
            proc.poll()  # reap it: a zombie child would count as running
            if forget_on_failure:
                self._forget(record.name)
            port = component.ports[0] if component.ports else None
            raise StackError(component.name, f"{exc.reason}\n  last log lines:\n{tail(component.log)}",
                             port=port, log=str(component.log)) from None
        progress(f"{component.name}: ready in {loop.time() - t0:.1f}s - {component.endpoint} (pid {record.pid})")

    async def restart(self, name: str, progress: Progress = _noop) -> subprocess.Popen[bytes] | None:
        """Start the recorded component `name` again, as `up` would, if its process is gone (the supervisor's
        restart); wait until it answers. None when there is nothing to do: it runs (someone restarted it), or it
        is no longer part of the stack (`down` forgot it, or the settings no longer plan it).

        The lock is held for the spawn only, so `down` is never kept waiting for a start-up. A restart that does
        not become ready is stopped and its record kept, dead, so that the supervisor tries again.
        """
        component = next((c for c in plan(self.settings) if c.name == name), None)
        if component is None:
            return None
        async with self._locked_async():
            record = ProcessRecord.load(self.run_dir / f"{name}.json")
            if record is None or record.alive:
                return None
            self._forget(name)
            try:
                proc, started = self._spawn(component, progress)
            except StackError:
                record.save(self.run_dir)  # its port taken, say: kept, dead, so that the supervisor tries again
                raise
        await self._until_ready(component, proc, started, progress, forget_on_failure=False)
        return proc

    async def _create_topics(self, progress: Progress) -> None:
        from agents.registry import declared_topics, deployment_agents
        from infra.bus.admin import ensure_topics

        outcomes = await ensure_topics(self.settings, declared_topics(deployment_agents(self.settings)))
        created = [o.spec.name for o in outcomes if o.created]
        progress(f"topics: {len(outcomes)} declared, created {', '.join(created) if created else 'none'}")

    # -- down ----------------------------------------------------------------------------------------------------
    def down(self, progress: Progress = _noop) -> list[tuple[str, str]]:
        """Stop every recorded component, in rounds (`_stop_round`): the supervisor first (or it would start again
        what is stopped after it), then the workers and the bridge, then what they use, the brokers last. The
        components of one round are stopped together, each takes a few seconds to stop cleanly; the outcomes are
        reported in plan order."""
        planned = {name: i for i, (name, _, _) in enumerate(plan_names(self.settings))}
        outcomes = []
        with self._locked():  # records read under the lock: a start finishing meanwhile is stopped, not orphaned
            rounds: dict[int, list[ProcessRecord]] = {}
            for record in self.records():
                rounds.setdefault(_stop_round(record.name), []).append(record)
            for _, records in sorted(rounds.items()):
                records.sort(key=lambda r: -planned.get(r.name, len(planned)))
                for record, outcome in self._stop_together(records):
                    progress(f"{record.name}: {outcome}")
                    outcomes.append((record.name, outcome))
        return outcomes

    # -- status --------------------------------------------------------------------------------------------------
    async def status(self) -> list[ComponentStatus]:
        """Every planned component: running (by PID) and healthy (it answers its readiness check)."""
        from infra.embedded.restarts import read_restarts

        records = {r.name: r for r in self.records()}
        supervised = read_restarts(self.run_dir)
        statuses = []
        planned = plan_names(self.settings)
        ours = settings_digest(self.settings)  # of the workers, the bridge and the model server
        for name, endpoint, log in planned:
            record = records.get(name)
            running = record is not None and record.alive
            healthy: bool | None = None
            detail = ""
            if running:
                try:
                    await asyncio.wait_for(_health(self.settings, name), timeout=10)
                    healthy = True
                except Exception as exc:
                    healthy, detail = False, f"{type(exc).__name__}: {exc}"
            restarts = supervised.get(name)
            if restarts is not None:
                detail = "; ".join(part for part in (detail, restarts.describe(running)) if part)
            if (running and record is not None and _ours(name) and record.settings_digest
                    and record.settings_digest != ours):
                detail = "; ".join(part for part in (detail, "started with other settings: `switchboard up` starts "
                                                     "it again with these") if part)
            if name == SUPERVISOR and not running and any(r.alive for r in records.values()):
                detail = "; ".join(part for part in (detail, "nothing starts again a component that dies until "
                                                     "`switchboard up` starts the supervisor again") if part)
            statuses.append(ComponentStatus(name, record.pid if running and record else None, running, healthy,
                                            endpoint, log, detail))
        statuses.extend(self._unplanned(records, {name for name, _, _ in planned}))
        return statuses

    def _unplanned(self, records: dict[str, ProcessRecord], planned: set[str]) -> list[ComponentStatus]:
        """Running components these settings do not plan: left out, they would run unseen."""
        found = []
        for name, record in records.items():
            if name in planned or not record.alive:
                continue
            detail = f"not planned: {self._not_planned_because(name)}; `switchboard up` stops it"
            if name.startswith("worker-"):
                detail += ", and until then it consumes its share of the workers' topics"
            found.append(ComponentStatus(name, record.pid, True, None, "-", record.log, detail, planned=False))
        return found


def _ours(name: str) -> bool:
    """One of our own Python processes, started from the settings as a whole (`settings_digest`)."""
    return name.startswith("worker-") or name in ("mqtt-bridge", "serving")


def _outdated(record: ProcessRecord, component: Component) -> bool:
    """True when `record`'s process was started from other settings than `component` plans. A record without a
    digest (written before digests were recorded) is taken as current: nothing restarts on an upgrade alone."""
    return bool(record.settings_digest) and record.settings_digest != component.settings_digest


def _stop_round(name: str) -> int:
    """When `down` stops a component: after everything that uses it. Round 1 holds the workers, the bridge and any
    component no longer planned (a worker beyond `workers.count`); the model server outlives the workers that call
    it, the MQTT broker the bridge, Kafka everything that commits to it, and S3 the broker that stores on it."""
    return {SUPERVISOR: 0, "serving": 2, "mqtt": 2, "tansu": 3, "seaweedfs": 4}.get(name, 1)


def plan_names(settings: Settings) -> list[tuple[str, str, str]]:
    """(name, endpoint, log) of the planned components, without side effects."""
    logs = settings.data_dir / "logs"
    names: list[tuple[str, str, str]] = []
    if settings.s3.embedded:
        names.append(("seaweedfs", f"S3 {settings.s3_endpoint}", str(logs / "seaweedfs.log")))
    if settings.kafka.embedded:
        names.append(("tansu", f"Kafka {settings.bootstrap_servers}", str(logs / "tansu.log")))
    if settings.mqtt.embedded:
        host, port = settings.mqtt_address
        names.append(("mqtt", f"MQTT mqtt://{host}:{port}", str(logs / "mqtt.log")))
    if settings.serving.enabled and settings.serving.embedded:
        names.append(("serving", "Ray Serve models (local Ray on 127.0.0.1)", str(logs / "serving.log")))
    for i in range(settings.workers.count):
        names.append((f"worker-{i}", f"Faust worker (app {settings.workers.app_id})", str(logs / f"worker-{i}.log")))
    if settings.bridge.enabled:
        host, port = settings.mqtt_address
        names.append(("mqtt-bridge", f"MQTT bridge ({host}:{port} <-> Kafka)", str(logs / "mqtt-bridge.log")))
    if settings.embedded.supervise and names:
        names.append((SUPERVISOR, "restarts a component that dies", str(logs / f"{SUPERVISOR}.log")))
    return names


async def _health(settings: Settings, name: str) -> None:
    if name == "seaweedfs":
        await checks.s3_ready(settings)
    elif name == "tansu":
        await checks.kafka_ready(settings)
    elif name == "mqtt":
        await checks.mqtt_ready(settings)
    elif name == "mqtt-bridge":
        _bridge_health(settings)
    elif name == SUPERVISOR:
        ready = settings.data_dir / "run" / f"{SUPERVISOR}.ready"
        if not ready.exists() or int(ready.read_text() or 0) != _pid_of(settings, name):
            raise StackError(name, "is not watching the components yet")
    elif name == "serving":
        ready = settings.data_dir / "run" / "serving.ready"
        if not ready.exists() or int(ready.read_text() or 0) != _pid_of(settings, name):
            raise StackError(name, "the model deployments are not ready yet")
    else:  # a worker: alive and it has joined its group at least once
        ready = Path(settings.data_dir / "run" / f"{name}.ready")
        if not ready.exists():
            raise StackError(name, "has not joined its consumer group yet")
        if int(ready.read_text() or 0) != _pid_of(settings, name):
            raise StackError(name, "readiness file is stale")


def _bridge_health(settings: Settings) -> None:
    """The bridge is ready (it wrote its PID) and its status file reports no problem (MQTT or Kafka unreachable,
    buffer full)."""
    from streams.mqtt_bridge.service import COMPONENT, status_file
    from streams.mqtt_bridge.status import read_status

    ready = settings.data_dir / "run" / f"{COMPONENT}.ready"
    if not ready.exists() or int(ready.read_text() or 0) != _pid_of(settings, COMPONENT):
        raise StackError(COMPONENT, "has not connected to MQTT and Kafka yet")
    status = read_status(status_file(settings))
    if status is not None and status.get("pid") == _pid_of(settings, COMPONENT) and status.get("problem"):
        raise StackError(COMPONENT, str(status["problem"]))


def _pid_of(settings: Settings, name: str) -> int | None:
    record = ProcessRecord.load(settings.data_dir / "run" / f"{name}.json")
    return record.pid if record else None


__all__ = ["ComponentStatus", "EmbeddedStack"]
