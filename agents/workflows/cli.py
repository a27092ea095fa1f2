"""`switchboard workflow check|list|run|status|cancel`: the engine from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from agents.workflows.errors import WorkflowDefinitionError, WorkflowNotFound
from infra.config import Settings, load_settings
from topics import catalog
from topics.event import Event

FINAL = ("succeeded", "failed", "cancelled")


def _settings(ctx: click.Context) -> Settings:
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    cached: Settings | None = obj.get("settings")
    if cached is None:
        cached = load_settings(obj.get("config"), **obj.get("overrides", {}))
        obj["settings"] = cached
    return cached


@click.group()
def workflow() -> None:
    """Check, list, run, watch and cancel workflows (docs/workflows.md)."""


@workflow.command("check")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def check(ctx: click.Context, paths: tuple[Path, ...]) -> None:
    """Validate workflow files (default: every workflow of the deployment); each problem as `file:line: ...`."""
    from agents.workflows.executors import discover_executors, executor_params
    from agents.workflows.loader import check_workflow_file
    from agents.workflows.registry import deployment_workflows

    if not paths:
        try:
            found = deployment_workflows(_settings(ctx))
        except WorkflowDefinitionError as exc:
            for problem in exc.problems:
                click.echo(str(problem))
            sys.exit(1)
        click.echo(f"{len(found)} workflow(s) valid: {', '.join(sorted(found)) or 'none'}")
        return
    known = executor_params(discover_executors())
    files = [file for path in paths for file in (sorted(path.rglob("*.y*ml")) if path.is_dir() else [path])]
    problems = [problem for file in files for problem in check_workflow_file(file, known)]
    for problem in problems:
        click.echo(str(problem))
    if problems:
        sys.exit(1)
    click.echo(f"{len(files)} file(s) valid")


@workflow.command("list")
@click.pass_context
def list_workflows(ctx: click.Context) -> None:
    """The deployment's workflows: name, tasks, where each is defined."""
    from agents.workflows.registry import deployment_workflows

    for name, wf in sorted(deployment_workflows(_settings(ctx)).items()):
        click.echo(f"{name}: {len(wf.tasks)} task(s) ({' -> '.join(wf.order())})  [{wf.where.file}]")


@workflow.command("run")
@click.argument("name")
@click.option("--input", "payload", default="{}", help="The run's input, a JSON object.")
@click.option("--offline", is_flag=True, help="Run here, through the same processors and executors, without the bus.")
@click.option("--wait/--no-wait", default=True, help="Wait for the run to end and print its result.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for the result.")
@click.pass_context
def run(ctx: click.Context, name: str, payload: str, offline: bool, wait: bool, timeout: float) -> None:
    """Start a run of workflow NAME (or of the workflow file NAME with --offline); prints its run id, then
    (waiting) its status and output as JSON."""
    from agents.workflows.registry import deployment_workflows

    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from exc
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--input")
    settings = _settings(ctx)
    if Path(name).suffix in (".yaml", ".yml") and Path(name).is_file():
        from agents.workflows.executors import discover_executors, executor_params
        from agents.workflows.loader import load_workflow

        loaded = load_workflow(name, executor_params(discover_executors()))
        workflows = {loaded.name: loaded}
        name = loaded.name
    else:
        workflows = deployment_workflows(settings)
    if name not in workflows:
        raise WorkflowNotFound(f"no workflow named {name!r}; known: {', '.join(sorted(workflows)) or 'none'} "
                               "(see `switchboard workflow list`)")
    run_id = str(uuid.uuid4())
    if offline:
        from agents.workflows.offline import run_offline

        result = asyncio.run(run_offline(workflows[name], data, run_id=run_id))
        click.echo(json.dumps({"run_id": run_id, "status": result.status, "output": result.output,
                               "error": result.state.get("error")}, default=str))
        sys.exit(0 if result.status == "succeeded" else 2)
    asyncio.run(_send(settings, catalog.WORKFLOW_REQUESTS.name, _request(run_id, name, data)))
    click.echo(f"run {run_id} started", err=True)
    if not wait:
        click.echo(run_id)
        return
    final = asyncio.run(_await_end(settings, run_id, timeout))
    detail = json.loads(final.data["detail"] or "{}")
    output = asyncio.run(_resolved(settings, detail.get("output")))
    click.echo(json.dumps({"run_id": run_id, "status": final.data["to_state"], "output": output,
                           "error": detail.get("error")}, default=str))
    sys.exit(0 if final.data["to_state"] == "succeeded" else 2)


@workflow.command("status")
@click.argument("run_id")
@click.pass_context
def status(ctx: click.Context, run_id: str) -> None:
    """Every recorded change of run RUN_ID, oldest first, and where it stands."""
    trail = asyncio.run(_transitions(_settings(ctx), run_id))
    if not trail:
        click.echo(f"no transitions for run {run_id} (not started yet, or not a run id)", err=True)
        sys.exit(1)
    for event in trail:
        d = event.data
        what = f"task {d['task']} (attempt {d['attempt']})" if d["task"] else "run"
        click.echo(f"{event.time:%H:%M:%S.%f}"[:-3] + f"  {what}: {d['from_state']} -> {d['to_state']}  {d['reason']}")
    runs = [e for e in trail if e.data["task"] is None]
    click.echo(f"run {run_id}: {runs[-1].data['to_state'] if runs else 'unknown'}")


@workflow.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="cancelled from the command line", show_default=True)
@click.pass_context
def cancel(ctx: click.Context, run_id: str, reason: str) -> None:
    """Cancel run RUN_ID: what has not finished is cancelled, and its requester gets a `cancelled` result."""
    from agents.workflows.processors import cancel_event

    asyncio.run(_send(_settings(ctx), catalog.WORKFLOW_CONTROL.name, cancel_event(run_id, reason)))
    click.echo(f"cancel sent for run {run_id}")


def _request(run_id: str, name: str, data: dict[str, Any]) -> Event:
    from agents.workflows.processors import request_event

    return request_event(run_id, name, data)


async def _send(settings: Settings, topic: str, event: Event) -> None:
    from infra.bus.clients import producer
    from topics.binding import encode_event
    from topics.codec import AvroCodec

    record = encode_event(event, AvroCodec())
    client = producer(settings)
    await client.start()
    try:
        await client.send_and_wait(topic, record.value, key=record.key, headers=record.headers)
    finally:
        await client.stop()


async def _resolved(settings: Settings, output: Any) -> Any:
    """The run's output with claim-checked parts (too large for the bus) read back from object storage."""
    from agents.workflows.claims import find_markers, resolve_markers
    from agents.workflows.storage import OutputStore, S3Store

    if not any(True for _ in find_markers(output)):
        return output
    store = S3Store.from_settings(settings, wait_s=30)
    try:
        return await resolve_markers(output, OutputStore(store).load_output)
    finally:
        await store.close()


async def _await_end(settings: Settings, run_id: str, within_s: float) -> Event:
    from infra.testing import wait_for_event

    return await wait_for_event(settings, catalog.WORKFLOW_TRANSITIONS,
                                lambda e: e.data["run_id"] == run_id and e.data["task"] is None
                                and e.data["to_state"] in FINAL, timeout_s=within_s)


async def _transitions(settings: Settings, run_id: str) -> list[Event]:
    from infra.bus.reading import read_topic
    from topics.binding import decode_event
    from topics.codec import AvroCodec
    from topics.errors import DecodeError

    codec = AvroCodec()
    found = []
    async for record in read_topic(settings, catalog.WORKFLOW_TRANSITIONS.name):
        if record.key is not None and record.key != run_id.encode():
            continue
        try:
            event = decode_event(record.value, record.headers, codec)
        except DecodeError:
            continue
        if event.data["run_id"] == run_id:
            found.append(event)
    return found
