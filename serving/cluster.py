"""Ray and the Switchboard application on it: start a local Ray (127.0.0.1 only) or join a cluster by address,
deploy the models, find their handles from another process.

Embedded (no `serving.ray_address`): `switchboard serve` starts Ray inside its own process, bound to 127.0.0.1,
without dashboard or HTTP proxy (callers use deployment handles), and writes the address to
`<data_dir>/run/serving.address` for the workers; the local Ray lives as long as that process. With
`serving.ray_address` the same code deploys to the cluster and returns: the application stays on the cluster.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import io
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import psutil

from infra.config import Settings
from serving.errors import ServingUnavailableError, missing

log = logging.getLogger(__name__)
T = TypeVar("T")
NAMESPACE = "switchboard"
ADDRESS_FILE = "serving.address"
TOKEN_FILE = "serving.token"
INTENTS_SUFFIX = "intents"
KNOWLEDGE_SUFFIX = "knowledge"
Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def app_names(settings: Settings) -> tuple[str, str]:
    """The Ray Serve application names of the intents and knowledge deployments."""
    return f"{settings.serving.app_name}-{INTENTS_SUFFIX}", f"{settings.serving.app_name}-{KNOWLEDGE_SUFFIX}"


def address_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / ADDRESS_FILE


def token_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / TOKEN_FILE


def use_local_token(settings: Settings, *, create: bool = False) -> None:
    """Ray's token authentication for the local Ray, with a token of this data directory (mode 0600) rather than
    the user-wide ~/.ray/auth_token, which other Ray clusters on the machine may replace. Call before `ray.init`."""
    path = token_file(settings)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(secrets.token_hex(32))
    use_token(path)


def use_cluster_token(settings: Settings) -> None:
    """`serving.ray_token_path` for a cluster with token authentication (unset: Ray's own environment variables
    and ~/.ray/auth_token decide). Call before `ray.init`."""
    path = settings.serving.ray_token_path
    if path is None:
        return
    if not path.is_file():
        raise ServingUnavailableError(f"serving.ray_token_path {path} is not a file: point it at the token file of "
                                      f"the Ray cluster at {settings.serving.ray_address}")
    use_token(path)


def use_token(path: Path) -> None:
    """Make this process's Ray authenticate with the token in `path` (Ray's RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if "ray" in sys.modules:  # Ray read its configuration when imported: make it read the variables again
        try:
            raylet = importlib.import_module("ray._raylet")
            raylet.Config.initialize("")
            raylet.AuthenticationTokenLoader.instance().reset_cache()
        except (ImportError, AttributeError):  # another Ray version: import Ray after this call instead
            pass


#: Ray's switch between "this node is reached on 127.0.0.1" ("0") and "on the address of the default route".
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_set_loopback: list[bool] = []  # whether this process set LOOPBACK_ENV (and so may take it back)


def import_ray(*, local: bool | None = None) -> Any:
    """`ray`, with a clear error when it is missing. `local=True`: this process's Ray is on 127.0.0.1 (a local
    Ray started here, or a driver of a head at 127.0.0.1); `False`: a cluster reached over the network; `None`:
    as the last start or join left it.

    Why: Ray turns the node address 127.0.0.1 into the address of the default route (`resolve_ip_for_localhost`)
    unless its cluster switch is off. On a machine with a network interface, a local Ray then registered as
    192.0.2.2, say, and a driver of a head at 127.0.0.1 waited for a raylet at that address that never came. Ray
    reads the switch when first imported, so the environment variable alone depended on which import came first
    (a test's own `from ray import serve`); the module constant is set too, each time."""
    if local and os.environ.get(LOOPBACK_ENV) != "0":
        os.environ[LOOPBACK_ENV] = "0"  # for Ray's own processes started from here
        _set_loopback.append(True)
    elif local is False and _set_loopback:
        os.environ.pop(LOOPBACK_ENV, None)
        _set_loopback.clear()
    try:
        import ray
        from ray import serve  # noqa: F401 - fails early when the [serve] extra is missing
    except ImportError as exc:
        raise missing("ray[serve]", exc) from None
    if local is not None:
        with contextlib.suppress(ImportError, AttributeError):  # another Ray version: the variable is all there is
            constants: Any = importlib.import_module("ray._private.ray_constants")
            # What Ray computes at import, from the variable as it is now.
            constants.ENABLE_RAY_CLUSTER = constants.env_bool(LOOPBACK_ENV, not constants.IS_WINDOWS_OR_OSX)
    return ray


def resolve_address(settings: Settings) -> str:
    """The Ray address a worker connects to: `serving.ray_address`, else the one `switchboard serve` recorded."""
    if settings.serving.ray_address:
        use_cluster_token(settings)
        return settings.serving.ray_address
    path = address_file(settings)
    try:
        address = path.read_text(encoding="utf-8").strip()
    except OSError:
        address = ""
    if not address:
        raise ServingUnavailableError(f"no model server is running for {settings.data_dir} (no {path}); start it "
                                      "with `switchboard serve` (or `switchboard up` with serving.enabled=true), or "
                                      "set serving.ray_address to a Ray cluster")
    use_local_token(settings)
    return address


def start_local_ray(settings: Settings, cpus: float | None = None) -> str:
    """Start Ray in this process on 127.0.0.1 (no dashboard); returns its GCS address."""
    use_local_token(settings, create=True)
    ray = import_ray(local=True)
    needed = 2 * settings.serving.replicas * settings.serving.replica_cpus
    num_cpus = max(os.cpu_count() or 1, int(needed + 0.999)) if cpus is None else cpus
    with _JOINING:
        _leave(ray, "to start a local Ray")
        _enable_faulthandler()
        def init() -> Any:
            return ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                            log_to_driver=False, namespace=NAMESPACE, configure_logging=False)

        def shutdown() -> None:
            with contextlib.suppress(Exception):
                ray.shutdown()

        try:
            context = retry_node_startup(init, shutdown)
        except Exception as exc:  # Ray raises plain RuntimeErrors and ConnectionErrors here
            raise ServingUnavailableError(f"Ray could not start: {type(exc).__name__}: {exc}; check free memory "
                                          "and /tmp space (Ray keeps its session files in /tmp/ray), or point "
                                          "serving.ray_address at a running cluster") from None
        address = str(context.address_info["gcs_address"])
        _connected_to.append(address)  # a client of this process's own Ray: connecting to it again is a no-op
    return address


#: Attempts at starting a local Ray. `ray.init` gives its node a fixed 30 s to register with the GCS (ray 2.60,
#: `ray/_private/node.py`), which a loaded two-core machine can miss (seen once in CI, ray-project/ray#47087).
LOCAL_START_ATTEMPTS = 2
_NODE_STARTUP_TIMEOUT = "timed out during startup"


def is_node_startup_timeout(exc: BaseException) -> bool:
    """Whether `ray.init` failed because its new node did not register in time (Ray raises a plain Exception)."""
    return _NODE_STARTUP_TIMEOUT in str(exc)


def retry_node_startup(init: Callable[[], T], shutdown: Callable[[], None],
                       attempts: int = LOCAL_START_ATTEMPTS) -> T:
    """`init()` (a local `ray.init`), started once more when its node did not register in time, after
    `shutdown()` and after killing what the failed start left; any other error, and the last attempt's,
    propagate."""
    for attempt in range(1, attempts + 1):
        before = _children()
        try:
            return init()
        except Exception as exc:
            if attempt == attempts or not is_node_startup_timeout(exc):
                raise
            log.warning("Ray's node did not register within Ray's fixed 30 s (attempt %d of %d; a busy machine); "
                        "stopping what that start left and starting again", attempt, attempts)
            shutdown()
            _kill_children_since(before)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _kill_children_since(before: set[int]) -> None:
    """Kill the processes this process started since `before` was taken: what a failed `ray.init` left (its GCS,
    raylet and helpers), which would otherwise run on beside the next attempt's."""
    leftovers = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    for child in leftovers:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(leftovers, timeout=10)


def _enable_faulthandler() -> None:
    """Ray enables faulthandler on `sys.stderr`; in a Faust worker that is mode's log proxy, which has no file
    descriptor, and `ray.init` fails with NotImplementedError. Enable it on the process's real stderr first."""
    if not faulthandler.is_enabled() and sys.__stderr__ is not None:
        with contextlib.suppress(ValueError, OSError, io.UnsupportedOperation):
            faulthandler.enable(file=sys.__stderr__, all_threads=False)


def in_daemon_thread(function: Callable[[], T], timeout_s: float, what: str) -> T:
    """`function()` in a daemon thread, waited for at most `timeout_s` (Ray retries an unreachable address for
    minutes; a daemon thread left behind does not keep the process from exiting)."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="switchboard-ray-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise ServingUnavailableError(f"{what} did not answer within {timeout_s:g}s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


#: How long a Ray client process keeps trying to reach a GCS that went away. Ray's default (60 s) then *exits the
#: process*: a worker must outlive a model server that stops, and fall back meanwhile.
CLIENT_GCS_RECONNECT_S = 10 * 365 * 24 * 3600
GCS_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
_connected_to: list[str] = []  # the address this process joined (Ray allows one per process)
#: `ray.init` is not thread-safe: two clients joining at once failed with "Perhaps you called ray.init twice by
#: accident?". Every join, leave and local start of this process holds this lock.
_JOINING = threading.Lock()


def _client_config() -> None:
    os.environ[GCS_RECONNECT_ENV] = str(CLIENT_GCS_RECONNECT_S)
    if "ray" in sys.modules:  # Ray read its configuration when imported: make it read the variables again
        with contextlib.suppress(ImportError, AttributeError):
            importlib.import_module("ray._raylet").Config.initialize("")


def _leave(ray: Any, why: str) -> None:
    """Leave the Ray this process joined or started, if any: a process belongs to one Ray at a time (a worker after
    `switchboard serve` restarted elsewhere; a process that was a client of one Ray and now starts its own)."""
    if not ray.is_initialized():
        return
    log.info("leaving Ray %s %s", _connected_to[-1] if _connected_to else "(started here)", why)
    ray.shutdown()
    _connected_to.clear()
    # Serve caches its controller per job id, and the new cluster numbers jobs from 1 again: forget it.
    with contextlib.suppress(ImportError, AttributeError):
        importlib.import_module("ray.serve.context")._set_global_client(None)


#: Attempts at joining through `ray://` when the cluster's client proxy failed to start this client's server.
CLIENT_INIT_ATTEMPTS = 4
CLIENT_INIT_BACKOFF_S = 0.5
_CLIENT_INIT_FAILURE = "Initialization failure from server"


def is_client_server_startup_failure(exc: BaseException) -> bool:
    """Whether `ray.init("ray://...")` failed because the cluster's client proxy could not start the per-client
    server. Ray's proxy forks that server from a multi-threaded gRPC process, and a few percent of forks die
    (ray-project/ray#63202: "specific_server intermittently dies during fork()"; seen on our CI as a ZombieProcess
    from the proxy's `cmdline()`); the next attempt gets a new server."""
    return isinstance(exc, ConnectionAbortedError) and _CLIENT_INIT_FAILURE in str(exc)


def retry_client_init(init: Callable[[], T], address: str, attempts: int = CLIENT_INIT_ATTEMPTS,
                      backoff_s: float = CLIENT_INIT_BACKOFF_S) -> T:
    """`init()`, tried again (with a doubling pause) while it fails with the client proxy's startup failure;
    any other error, and the last attempt's, propagate. Ray's client cleans up after a failed `ray.init`, so a
    retry starts from nothing."""
    for attempt in range(1, attempts + 1):
        try:
            return init()
        except Exception as exc:
            if attempt == attempts or not is_client_server_startup_failure(exc):
                raise
            last_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.warning("Ray at %s could not start a client server for this process (attempt %d of %d: %s); "
                        "trying again", address, attempt, attempts, last_line)
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def connect(address: str, timeout_s: float | None = None) -> None:
    """Join the Ray cluster at `address` as a client of its deployments (idempotent in a process; a different
    address leaves the old cluster first, e.g. after `switchboard serve` restarted); with `timeout_s`, give up
    after that long. Safe from several threads at once (a worker's intents and knowledge clients connect side by
    side): the check and `ray.init` happen under one lock, held by whichever thread joins."""
    ray = import_ray(local=address.startswith(("127.0.0.1", "localhost")))

    def join() -> None:
        with _JOINING:
            if ray.is_initialized():
                if not _connected_to or _connected_to[-1] == address:
                    return
                _leave(ray, f"to join {address}")
            _client_config()
            _enable_faulthandler()
            try:
                retry_client_init(lambda: ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                                                   configure_logging=False), address)
                _connected_to.append(address)
            except Exception as exc:
                log.debug("ray.init(address=%r) failed", address, exc_info=True)
                raise ServingUnavailableError(f"cannot reach Ray at {address}: {type(exc).__name__}: {exc}; is "
                                              "`switchboard serve` (or the Ray cluster) running? A cluster with "
                                              "token authentication needs its token: serving.ray_token_path") from None

    if timeout_s is None:
        join()
    else:
        in_daemon_thread(join, timeout_s, f"Ray at {address} (is the address right and the cluster up?)")


@dataclass(frozen=True)
class Deployed:
    """What `deploy` started: application names, seconds it took, and each deployment's `info()`."""

    apps: tuple[str, ...]
    seconds: float
    info: dict[str, Any]


def deploy(settings: Settings, training: dict[str, Any], knowledge: dict[str, Any] | None,
           progress: Progress = _noop) -> Deployed:
    """Deploy the intents (unless `serving.intents_app` names the user's own) and, with `knowledge`, the knowledge
    application on the Ray this process joined; returns once every replica is ready."""
    import_ray()
    from ray import serve

    from serving.deployments import intents_app, knowledge_app

    started = time.perf_counter()
    serve.start(proxy_location="Disabled")  # callers use deployment handles; no HTTP port is opened
    intents_name, knowledge_name = app_names(settings)
    apps = [] if settings.serving.intents_app else [(intents_name, intents_app(settings.serving, training))]
    if knowledge:
        apps.append((knowledge_name, knowledge_app(settings.serving, knowledge)))
    info: dict[str, Any] = {}
    for name, app in apps:
        progress(f"{name}: deploying")
        try:
            handle = serve.run(app, name=name, route_prefix=None)
            info[name] = _blocking_result(handle.info.remote(), settings.serving.start_timeout_s)
        except Exception as exc:
            raise ServingUnavailableError(f"deploying {name} failed: {type(exc).__name__}: {exc}") from None
        progress(f"{name}: ready ({info[name]['model']}, loaded in {info[name]['load_s']}s)")
    return Deployed(tuple(name for name, _ in apps), time.perf_counter() - started, info)


def user_intents_app(settings: Settings) -> str:
    """Whether the application `serving.intents_app` names is deployed on the Ray this process joined, in words
    (`switchboard serve` reports it; the workers fall back until it is)."""
    name = settings.serving.intents_app
    try:
        handle(settings, INTENTS_SUFFIX)
    except ServingUnavailableError:
        return (f"{name}: NOT deployed on this Ray yet (serving.intents_app); workers use the keyword recogniser "
                "until it is")
    return f"{name}: your intents application (serving.intents_app), deployed; workers call it"


def _blocking_result(response: Any, timeout_s: float) -> Any:
    """A DeploymentResponse's result, also from a thread that runs an event loop (Ray refuses `.result()` there)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(response.result, timeout_s=timeout_s).result()


def intents_app_name(settings: Settings) -> str:
    """The application workers call for intents: the user's (`serving.intents_app`) or Switchboard's."""
    return settings.serving.intents_app or app_names(settings)[0]


def handle(settings: Settings, which: str = INTENTS_SUFFIX) -> Any:
    """The deployment handle of `intents` or `knowledge` (this process must have joined Ray: `connect`); for
    intents with `serving.intents_app`, the ingress deployment of the user's application."""
    import_ray()
    from ray import serve

    user_app = settings.serving.intents_app
    if which == INTENTS_SUFFIX and user_app:  # before importing Switchboard's deployments (torch): not needed here
        try:
            return serve.get_app_handle(user_app)
        except Exception as exc:
            raise ServingUnavailableError(f"the application {user_app} (serving.intents_app) is not deployed on "
                                          f"this Ray ({type(exc).__name__}: {exc}); deploy it (docs/serving.md, "
                                          "'Your own intents deployment') or unset serving.intents_app") from None

    from serving.deployments import INTENTS, KNOWLEDGE

    intents_name, knowledge_name = app_names(settings)
    app, deployment = (intents_name, INTENTS) if which == INTENTS_SUFFIX else (knowledge_name, KNOWLEDGE)
    try:
        return serve.get_deployment_handle(deployment, app_name=app)
    except Exception as exc:
        raise ServingUnavailableError(f"the application {app} is not deployed on this Ray ({exc}); run "
                                      "`switchboard serve`") from None


def shutdown(settings: Settings) -> None:
    """Leave Ray (the applications stay deployed on a cluster)."""
    ray = import_ray()
    with _JOINING:
        _leave(ray, "(shutdown)")
        _connected_to.clear()  # also when Ray was down already: a later Ray of this process starts afresh
