"""The Faust application of a Switchboard worker, built from settings."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any, cast

import faust

from infra.bus.clients import ssl_context
from infra.config import Settings
from streams import tables
from streams.bounded_stop import Worker
from streams.directory import announce_agents
from streams.recognisers import run_shared_caches
from streams.shell import StreamShell
from streams.tables import TableManager
from topics.processor import Closing, Processor, StatefulProcessor

log = logging.getLogger(__name__)


class SwitchboardApp(faust.App):
    """A Faust app that also carries the consumer fetch wait and the settings (read by `streams.transport`)."""

    fetch_max_wait_ms: int = 500
    switchboard_settings: Settings | None = None  # read by streams.transport (true partition ends)


def _credentials(settings: Settings) -> Any:
    kafka = settings.kafka
    context: ssl.SSLContext | None = ssl_context(settings)
    if kafka.sasl_mechanism:
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        return faust.SASLCredentials(username=kafka.sasl_username, password=password,
                                     ssl_context=context, mechanism=kafka.sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def worker_data_dir(settings: Settings, worker_id: str) -> Path:
    return settings.data_dir / "workers" / worker_id


def default_processors(settings: Settings | None = None) -> list[Processor | StatefulProcessor]:
    """The processors a Switchboard worker runs: the echo agent, every dialogue agent of the deployment (under
    `agents/` and `workers.agent_dirs`), the workflow engine (run processor and task worker), and the IoT processors
    (device twin, device queries, alerts) where a policy declares `iot:`."""
    from agents.echo import EchoAgent
    from agents.iot.registry import IOT_WORKFLOWS, iot_processors, uses_iot
    from agents.registry import agent_engine_workflows, deployment_agents, dialogue_processors
    from agents.workflows.errors import WorkflowError
    from agents.workflows.registry import deployment_workflows, workflow_processors

    agents = deployment_agents(settings)
    workflows = deployment_workflows(settings)  # YAML files in the agent folders, and plugins
    functions = agent_engine_workflows(agents)  # the agents' Python WORKFLOWS, each a one-task engine workflow
    clash = sorted(set(workflows) & set(functions))
    if clash:
        raise WorkflowError(f"workflow(s) {', '.join(clash)} are both an agent's Python function (WORKFLOWS) and a "
                            "workflow definition (YAML or plugin); rename or remove one of each")
    workflows = {**workflows, **functions}
    policies = [agent.policy for agent in agents]
    recognisers = retrievers = None
    concurrency = 1  # the keyword recogniser does not wait on anything
    if settings is not None and settings.serving.enabled:  # the served models (imports Ray only then)
        from serving.recogniser import served_recognisers
        from serving.retrieval import served_retrievers

        recognisers = served_recognisers(policies, settings)
        if settings.serving.knowledge:
            retrievers = served_retrievers(policies, settings)
        concurrency = settings.serving.stream_concurrency
    # device_reading requests are the device twin's (agents/iot), not a workflow runner's.
    answered_elsewhere = [*workflows, *(IOT_WORKFLOWS if uses_iot(policies) else ())]
    return [EchoAgent(),
            *dialogue_processors(agents, engine_workflows=answered_elsewhere, recognisers=recognisers,
                                 retrievers=retrievers, recogniser_concurrency=concurrency, inline=False),
            # Only where workflows are deployed: every subscribed partition costs each fetch on the embedded broker.
            *(workflow_processors(workflows, settings=settings, answer_unknown=True,
                                  others=answered_elsewhere) if workflows else []),
            *iot_processors(policies)]


def create_app(settings: Settings, processors: list[Processor | StatefulProcessor] | None = None, *,
               worker_id: str = "0") -> SwitchboardApp:
    """A worker app running `processors` (default: the built-in agents) under the stream shell."""
    kafka = settings.kafka
    datadir = worker_data_dir(settings, worker_id)
    datadir.mkdir(parents=True, exist_ok=True)
    tables.install()  # a rebalance collects garbage only when a table store dropped a database
    brokers = ";".join(f"switchboard://{server.strip()}" for server in settings.bootstrap_servers.split(","))
    app = SwitchboardApp(
        settings.workers.app_id,
        broker=brokers,
        broker_credentials=_credentials(settings),
        broker_client_id=f"{kafka.client_id}-worker-{worker_id}",
        store=settings.workers.store,
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        topic_replication_factor=kafka.replication_factor,
        topic_partitions=4,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=kafka.effective_session_timeout_ms / 1000,
        broker_heartbeat_interval=kafka.heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=kafka.effective_rebalance_timeout_ms / 1000,
        broker_request_timeout=kafka.request_timeout_ms / 1000,
        # A worker's local store can be ahead of what the broker shows for a moment (Tansu on S3 serves
        # acknowledged changelog records late); that is not an inconsistency, so recover from the local offset
        # rather than refuse to start. The ends themselves come from streams.recovery_ends.
        recovery_consistency_check=False,
        table_standby_replicas=settings.standby_replicas,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        Worker=Worker,  # its stop has a deadline (workers.stop_timeout_s)
        TableManager=TableManager,  # without Faust's 1 s pause at start (and see tables.install above)
    )
    app.fetch_max_wait_ms = kafka.effective_fetch_max_wait_ms
    app.switchboard_settings = settings
    shell = StreamShell(app, timeout_sweep_s=settings.workers.timeout_sweep_s,
                        pipeline_depth=settings.workers.pipeline_depth)
    running = default_processors(settings) if processors is None else processors
    shell.register_all(running)
    announce_agents(app, shell, running, worker=f"{kafka.client_id}-worker-{worker_id}")
    run_shared_caches(app, running)
    _close_on_shutdown(app, running)
    return app


def _close_on_shutdown(app: faust.App, processors: list[Processor | StatefulProcessor]) -> None:
    """Close what processors hold (object storage clients) once the consumer has stopped: an input being handled
    has finished by then, and nothing is left open at exit."""
    closing = [processor for processor in processors if isinstance(processor, Closing)]
    if not closing:
        return

    async def close(sender: Any, **kwargs: Any) -> None:
        for processor in closing:
            try:
                await processor.close()
            except Exception:
                log.exception("closing %s failed", getattr(processor, "name", processor))

    cast(Any, app.on_before_shutdown).connect(close, weak=False)
