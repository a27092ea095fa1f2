"""`switchboard serve`: train from the deployment's policies, start (or join) Ray, deploy, and keep a local Ray alive.

Training data is computed here from the agents' policies (`agents/` and `workers.agent_dirs`) and handed to the
replicas as plain values. With a local Ray the process stays in the foreground until SIGINT/SIGTERM (it *is* the
Ray head); against a cluster it deploys and returns unless told to block.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.config import Settings
from serving import cluster
from serving.cluster import Deployed, Progress
from serving.examples import training_sets
from serving.knowledge import knowledge_sets


def _noop(_: str) -> None:
    pass


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def running(settings: Settings, progress: Progress = _noop) -> Iterator[Deployed]:
    """The models deployed while the block runs: on a local Ray started here (stopped after), or on the cluster at
    `serving.ray_address` (left deployed there; this process only disconnects)."""
    from agents.registry import deployment_agents

    policies = [agent.policy for agent in deployment_agents(settings)]
    training = training_sets(policies)
    knowledge = knowledge_sets(policies) if settings.serving.knowledge else {}
    local = settings.serving.embedded
    address_path = cluster.address_file(settings)
    if local:
        progress("ray: starting a local Ray on 127.0.0.1")
        address = cluster.start_local_ray(settings)
    else:
        address = settings.serving.ray_address or ""
        progress(f"ray: joining the cluster at {address}")
        cluster.use_cluster_token(settings)
        cluster.connect(address, timeout_s=cluster.CONNECT_TIMEOUT_S)
    try:
        deployed = cluster.deploy(settings, training, knowledge or None, progress)
        if local:
            address_path.parent.mkdir(parents=True, exist_ok=True)
            address_path.write_text(address, encoding="utf-8")
        if settings.serving.intents_app:
            progress(cluster.user_intents_app(settings))
        progress(f"serving {', '.join(sorted(training))} at Ray {address} ({deployed.seconds:.1f}s)")
        yield deployed
    finally:
        if local:
            address_path.unlink(missing_ok=True)
            try:
                _stop_local()
            finally:
                cluster.token_file(settings).unlink(missing_ok=True)
        else:
            cluster.shutdown(settings)


def serve(settings: Settings, *, progress: Progress = _noop, block: bool | None = None,
          ready_file: Path | None = None) -> Deployed:
    """Deploy the models; `block` (default: when Ray is local) waits for SIGINT/SIGTERM, then stops the local Ray.

    `ready_file` gets this process's PID once every deployment answers (how `switchboard up` knows it is ready).
    """
    block = settings.serving.embedded if block is None else block
    with running(settings, progress) as deployed:
        if ready_file is not None:
            ready_file.write_text(str(os.getpid()), encoding="utf-8")
        if block:
            progress("serving until interrupted (Ctrl-C)")
            _wait_for_signal()
    return deployed


def _stop_local() -> None:
    """Stop the local Ray and everything on it. Not `serve.shutdown()` first: it waits for the controller (up to
    30 s, longer than `switchboard down` waits) and nothing outlives this Ray anyway."""
    cluster.import_ray().shutdown()
