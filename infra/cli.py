"""The `switchboard` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from infra.config import Settings, load_settings
from topics import catalog
from topics.errors import BusError, SwitchboardError

T = TypeVar("T")


def declared_topics(settings: Settings) -> tuple[Any, ...]:
    """Every declared topic; loads the deployment's agents' policies (a broken policy is reported here)."""
    from agents.registry import declared_topics as declared
    from agents.registry import deployment_agents

    return declared(deployment_agents(settings))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _settings(ctx: click.Context) -> Settings:
    cached: Settings | None = ctx.obj.get("settings")
    if cached is None:
        cached = load_settings(ctx.obj.get("config"), **ctx.obj.get("overrides", {}))
        ctx.obj["settings"] = cached
    return cached


class _Group(click.Group):
    """Prints Switchboard's own errors as one clear message (exit 1) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwitchboardError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except TimeoutError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)


@click.group(cls=_Group)
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML settings file (default: $SWITCHBOARD_CONFIG). Environment variables override it.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the embedded stack keeps data, logs and PIDs (default: $SWITCHBOARD_DATA_DIR).")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, data_dir: Path | None) -> None:
    """Switchboard: a digital employee built as an event-driven message bus."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["overrides"] = {"data_dir": data_dir} if data_dir else {}


# -- stack -----------------------------------------------------------------------------------------------------
def _print_status(statuses: list[Any]) -> None:
    width = max((len(s.name) for s in statuses), default=10)
    for s in statuses:
        if not s.planned:
            state = click.style("unplanned", fg="yellow")
        elif not s.running:
            state = click.style("stopped", fg="yellow")
        elif s.healthy:
            state = click.style("healthy", fg="green")
        else:
            state = click.style("unhealthy", fg="red")
        pid = f"pid {s.pid}" if s.pid else "-"
        click.echo(f"  {s.name:<{width}} {state:<18} {pid:<11} {s.endpoint}")
        indent = " " * (width + 3)
        if s.detail:
            click.echo(f"{indent}{s.detail}")
        if s.running and not s.healthy and s.planned:
            click.echo(f"{indent}log: {s.log}")


@cli.command()
@click.option("--workers", type=click.IntRange(0, 16), default=None, help="Number of stream workers.")
@click.pass_context
def up(ctx: click.Context, workers: int | None) -> None:
    """Start the embedded stack (S3, Kafka-protocol broker, MQTT, workers) and wait until each answers.

    Parts configured as external (Kafka, S3 or MQTT address set) are checked, not started. Run it again after
    changing the settings: it starts again what runs with other settings (workers one at a time) and stops what
    the settings no longer plan.
    """
    from infra.embedded import EmbeddedStack

    if workers is not None:
        ctx.obj["overrides"]["workers"] = {"count": workers}
    settings = _settings(ctx)
    stack = EmbeddedStack(settings)
    click.echo(f"Switchboard up (data: {settings.data_dir})")
    statuses = _run(stack.up(progress=lambda line: click.echo(f"  {line}")))
    click.echo("Running:")
    _print_status(statuses)
    click.echo(f"Logs: {settings.data_dir / 'logs'}.  Try: switchboard chat   Stop: switchboard down")
    if not all(s.running and s.healthy for s in statuses if s.planned):
        sys.exit(1)


@cli.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop everything `switchboard up` started (by PID): the supervisor first, then workers, then the brokers."""
    from infra.embedded import EmbeddedStack

    settings = _settings(ctx)
    outcomes = EmbeddedStack(settings).down(progress=lambda line: click.echo(f"  {line}"))
    if not outcomes:
        click.echo(f"nothing was running (data: {settings.data_dir})")


async def _worker_lag(settings: Settings) -> list[Any] | None:
    from infra.bus.lag import group_lag
    from streams.app import default_processors
    from streams.shell import sources_of

    inputs = sorted({spec.name for processor in default_processors(settings) for spec in sources_of(processor)})
    try:
        return await group_lag(settings, settings.workers.app_id, inputs)
    except Exception:  # lag is informative; status must still answer when the bus does not
        return None


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """What runs, and whether each part answers."""
    from infra.embedded import EmbeddedStack

    settings = _settings(ctx)
    statuses = _run(EmbeddedStack(settings).status())
    lags = _run(_worker_lag(settings)) if any(s.name == "tansu" and s.healthy for s in statuses) or (
        not settings.kafka.embedded) else None
    if as_json:
        click.echo(json.dumps({"components": [s.__dict__ for s in statuses],
                               "lag": [dict(lag.__dict__, lag=lag.lag) for lag in lags or []]}, indent=2))
    else:
        click.echo(f"Switchboard (data: {settings.data_dir})")
        _print_status(statuses)
        if lags is not None:
            total = sum(lag.lag for lag in lags)
            click.echo(f"Worker lag (group {settings.workers.app_id}): {total} event(s) not yet processed")
            for lag in lags:
                if lag.lag:
                    click.echo(f"  {lag.topic}/{lag.partition}: committed {lag.committed}, end {lag.end}, "
                               f"lag {lag.lag}")
    if not all(s.running and s.healthy for s in statuses if s.planned):
        sys.exit(3)


# -- topics & schemas ------------------------------------------------------------------------------------------
@cli.group()
def topics() -> None:
    """The declared topics (topics/catalog.py, and each dialogue agent's agent.<name>.* topics)."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create every declared topic that does not exist (idempotent)."""
    from infra.bus.admin import ensure_topics

    for outcome in _run(ensure_topics(_settings(ctx), declared_topics(_settings(ctx)))):
        verb = "created" if outcome.created else "exists "
        note = f"  ({outcome.note})" if outcome.note else ""
        click.echo(f"  {verb} {outcome.spec.name}{note}")


@topics.command("list")
@click.option("--offline", is_flag=True, help="Only the declarations; do not ask the bus.")
@click.pass_context
def topics_list(ctx: click.Context, offline: bool) -> None:
    """Declared topics with their schema, key, partitions, retention and owner."""
    existing: dict[str, int] = {}
    if not offline:
        from infra.bus.admin import existing_topics

        existing = _run(existing_topics(_settings(ctx)))
    for spec in declared_topics(_settings(ctx)):
        retention = "compacted" if spec.cleanup.value == "compact" else (
            f"{spec.retention_ms // 86_400_000}d" if spec.retention_ms else "forever")
        missing = "  [missing: switchboard topics create]"
        state = "" if offline else ("  [on bus]" if spec.name in existing else missing)
        click.echo(f"{spec.name}{state}\n    schema {spec.value_schema}   key: {spec.key}   "
                   f"partitions {spec.partitions}   retention {retention}\n"
                   f"    owner: {spec.owner}\n    {spec.description}")


@cli.group()
def schemas() -> None:
    """The Avro schemas in schemas/."""


@schemas.command("list")
def schemas_list() -> None:
    """Every current schema and its fingerprint."""
    from topics.schema_store import default_store

    store = default_store()
    for name in store.names():
        schema = store.current(name)
        click.echo(f"{name:<32} {schema.fingerprint_hex}  {schema.path.name}")


@schemas.command("freeze")
def schemas_freeze() -> None:
    """Record every current schema version in schemas/history/ (do this after changing a schema)."""
    from schemas import SCHEMA_DIR
    from topics.compat import freeze

    written = freeze(SCHEMA_DIR)
    for path in written:
        click.echo(f"  recorded {path.name}")
    if not written:
        click.echo("  all current schemas are already recorded")


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """The effective settings (secrets hidden) and what runs embedded."""
    settings = _settings(ctx)
    click.echo(settings.model_dump_json(indent=2))
    parts = {"kafka": settings.kafka.embedded, "s3": settings.s3.embedded, "mqtt": settings.mqtt.embedded}
    click.echo("embedded: " + ", ".join(k for k, v in parts.items() if v) + "   external: "
               + (", ".join(k for k, v in parts.items() if not v) or "none"))


# -- people's tools --------------------------------------------------------------------------------------------
@cli.command()
@click.argument("topic")
@click.option("--data", "data", default=None, help="One JSON payload (otherwise JSON objects, one per line, on stdin).")
@click.option("--subject", default=None, help="Event subject / Kafka key (default: the payload's key field).")
@click.option("--principal", default=None, help="Who acts (default: user:$USER).")
@click.option("--correlation-id", default=None, help="Join an existing chain of events.")
@click.pass_context
def produce(ctx: click.Context, topic: str, data: str | None, subject: str | None, principal: str | None,
            correlation_id: str | None) -> None:
    """Publish JSON payloads to TOPIC as validated Avro events (CloudEvents headers added)."""
    from infra import console

    spec = catalog.get(topic)
    lines = [data] if data is not None else console.stdin_lines()
    events = _run(console.produce(_settings(ctx), spec, console.parse_payloads(lines),
                                  subject_field=console.default_subject_field(spec), subject=subject,
                                  principal=principal, correlation_id=correlation_id))
    for event in events:
        click.echo(f"sent {event.type} id={event.id} subject={event.subject}")


@cli.command()
@click.argument("topic")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new events.")
@click.option("--from-end", is_flag=True, help="Start at the end (only new events).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option("--limit", "-n", type=int, default=None, help="Stop after this many events.")
@click.pass_context
def tail(ctx: click.Context, topic: str, follow: bool, from_end: bool, as_json: bool, limit: int | None) -> None:
    """Print TOPIC's events, decoded and readable (undecodable ones are shown, not skipped)."""
    from infra import console

    spec = catalog.get(topic)
    with contextlib.suppress(KeyboardInterrupt):
        _run(console.tail(_settings(ctx), spec, sys.stdout, follow=follow, from_end=from_end, as_json=as_json,
                          limit=limit))


@cli.command()
@click.option("--agent", default="echo", show_default=True, help="The agent to talk to.")
@click.option("--session", default=None, help="Session id (default: a new one).")
@click.option("--say", "said", multiple=True, help="Say this and exit (repeatable); otherwise interactive.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for a reply.")
@click.pass_context
def chat(ctx: click.Context, agent: str, session: str | None, said: tuple[str, ...], timeout: float) -> None:
    """Talk to an agent: each line is a turn on the bus; the agent's reply comes back through the bus."""
    from infra import console

    lines = list(said) if said else None
    with contextlib.suppress(KeyboardInterrupt):
        _run(console.chat(_settings(ctx), agent, session, lines, sys.stdout, prompt=console.read_prompt,
                          timeout_s=timeout))


# -- the human queue -----------------------------------------------------------------------------------------------
@cli.group()
def handoff() -> None:
    """Sessions handed to people: list them, take one, answer the user, release it back to the bot."""


@handoff.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include released sessions.")
@click.option("--lines", type=int, default=4, show_default=True, help="Last messages shown per session.")
@click.pass_context
def handoff_list(ctx: click.Context, show_all: bool, lines: int) -> None:
    """The human queue: waiting and taken sessions with the reason and the last messages."""
    from infra import handoff as queue

    cases = [c for c in _run(queue.queue(_settings(ctx))).values() if show_all or c.open]
    if not cases:
        click.echo("no session is waiting for a person")
    for case in cases:
        click.echo(f"{case.session_id}  agent {case.agent}  [{case.status}]  {case.reason or ''}")
        for role, text in case.messages[-lines:] if lines > 0 else []:
            click.echo(f"    {role}> {text}")


def _handoff_act(ctx: click.Context, session: str, kind: str, person: str | None, text: str | None,
                 agent: str | None) -> None:
    from infra import handoff as queue

    who = person or queue.whoami()
    event = _run(queue.act(_settings(ctx), session, kind, person=who, text=text, agent=agent))
    click.echo(f"sent {kind} for session {session} as {who} (id {event.id})")


_as_option = click.option("--as", "person", default=None, help="Your name as the user sees it (default: $USER).")
_agent_option = click.option("--agent", default=None,
                             help="The session's agent (default: from the queue; needed to take a session that "
                                  "was not handed off).")


@handoff.command("take")
@click.argument("session")
@_as_option
@_agent_option
@click.pass_context
def handoff_take(ctx: click.Context, session: str, person: str | None, agent: str | None) -> None:
    """Take SESSION: the bot stays quiet and the user is told who they are talking to."""
    _handoff_act(ctx, session, "human_take", person, None, agent)


@handoff.command("reply")
@click.argument("session")
@click.argument("text")
@_as_option
@_agent_option
@click.pass_context
def handoff_reply(ctx: click.Context, session: str, text: str, person: str | None, agent: str | None) -> None:
    """Send TEXT to the user of SESSION."""
    _handoff_act(ctx, session, "human_reply", person, text, agent)


@handoff.command("release")
@click.argument("session")
@_as_option
@_agent_option
@click.pass_context
def handoff_release(ctx: click.Context, session: str, person: str | None, agent: str | None) -> None:
    """Give SESSION back to the bot."""
    _handoff_act(ctx, session, "human_release", person, None, agent)


# -- dialogue policies ---------------------------------------------------------------------------------------------
@cli.group()
def policy() -> None:
    """Dialogue policies (agents/<agent>/policy.yaml; format: docs/policies.md)."""


@policy.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def policy_check(paths: tuple[Path, ...]) -> None:
    """Check each policy PATH (a policy file, an agent folder, or a folder of agents); every problem is listed."""
    from agents.dialogue.loader import POLICY_FILE, PolicyError, discover_policies, load_policy, policy_summary

    failed = False
    for path in paths:
        files = [path]
        if path.is_dir():
            files = [path / POLICY_FILE] if (path / POLICY_FILE).exists() else discover_policies(path) or [
                path / POLICY_FILE]
        for file in files:
            try:
                loaded = load_policy(file)
            except PolicyError as exc:
                failed = True
                for problem in exc.problems:
                    click.secho(str(problem), fg="red")
                continue
            click.echo(f"OK {file} ({policy_summary(loaded)})")
    if failed:
        sys.exit(1)


# -- conversation tests --------------------------------------------------------------------------------------------
@cli.command("test-stories")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--offline", is_flag=True, help="Run through the pure core here, without the bus or a worker.")
@click.option("--timeout", type=float, default=20.0, show_default=True,
              help="Seconds one step may take on the bus before it fails.")
@click.pass_context
def test_stories_command(ctx: click.Context, paths: tuple[Path, ...], offline: bool, timeout: float) -> None:
    """Run conversation tests: each PATH is a stories file, an agent folder (its
    stories/*.yaml) or a folder of agents (e.g. `agents`).

    Without --offline the stories run against the running stack (`switchboard up`), each on a fresh session.
    """
    from agents.dialogue.stories import Agents, collect_stories, run_offline, run_on_bus

    found = collect_stories(paths)
    if offline:
        agents = Agents()
        results = [run_offline(story, agents) for story in found]
    else:
        results = _run(run_on_bus(_settings(ctx), found, timeout))
    for result in results:
        click.secho(result.report(), fg="green" if result.ok else "red")
    failed = sum(not result.ok for result in results)
    click.echo(f"{len(results) - failed} passed, {failed} failed ({'offline' if offline else 'on the bus'})")
    if failed:
        sys.exit(1)


# -- agents working together ---------------------------------------------------------------------------------------
@cli.group("agents")
def agents_group() -> None:
    """The agent directory: who the agents are and what they answer (docs/policies.md, "Several agents")."""


@agents_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def agents_list(ctx: click.Context, as_json: bool) -> None:
    """Every agent announced on the directory topic: description, owner, capabilities, intents, inbox."""
    from infra.collaboration import directory_json, format_directory, read_directory

    listings = _run(read_directory(_settings(ctx)))
    if as_json:
        click.echo(json.dumps(directory_json(listings), indent=2, ensure_ascii=False))
        return
    if not listings:
        click.echo(f"no agent has announced itself on {catalog.AGENT_DIRECTORY.name} yet; workers announce their "
                   "agents when they start (`switchboard up`, `switchboard status`)")
        return
    for line in format_directory(listings):
        click.echo(line)


@cli.command("trace")
@click.argument("correlation_id")
@click.pass_context
def trace(ctx: click.Context, correlation_id: str) -> None:
    """Print every event of the chain CORRELATION_ID across the bus topics, as a tree by causation id.

    CORRELATION_ID is a turn's id (what `chat` shows as `turn ...`) or any event's correlation id (`tail` shows its
    first 8 characters, which are enough)."""
    from infra.collaboration import build_tree, collect_chain, format_tree

    settings = _settings(ctx)
    names = [spec.name for spec in declared_topics(settings)]
    chain = _run(collect_chain(settings, names, correlation_id))
    if not chain:
        raise BusError(f"no event with correlation id {correlation_id!r} on the bus (read {len(names)} topics to "
                       "their end); take it from `switchboard chat` (turn ...) or `switchboard tail TOPIC` (corr=...)")
    topics_seen = {item.topic for item in chain}
    click.echo(f"trace {chain[0].event.correlationid}: {len(chain)} event(s) on {len(topics_seen)} topic(s)")
    for line in format_tree(build_tree(chain)):
        click.echo(line)


# -- IoT -------------------------------------------------------------------------------------------------------------
@cli.group()
def iot() -> None:
    """IoT devices and the MQTT bridge (docs/iot.md)."""


@iot.command("simulate")
@click.option("--devices", type=click.IntRange(1, 1000), default=3, show_default=True, help="How many devices.")
@click.option("--interval", type=click.FloatRange(0.01), default=2.0, show_default=True,
              help="Seconds between two readings of a device.")
@click.option("--rounds", type=click.IntRange(1), default=None, help="Stop after this many readings per device.")
@click.option("--prefix", default="sim", show_default=True, help="Device ids are PREFIX-1, PREFIX-2, ...")
@click.option("--heat", "heat", multiple=True, metavar="DEVICE=C",
              help="Warm DEVICE's room by C degrees per reading while its fan is off, e.g. sim-2=0.5 (repeatable).")
@click.pass_context
def iot_simulate(ctx: click.Context, devices: int, interval: float, rounds: int | None, prefix: str,
                 heat: tuple[str, ...]) -> None:
    """Simulated devices: publish temperature telemetry, announce presence, obey commands by reporting state."""
    from streams.mqtt_bridge.simulator import simulate

    warming: dict[str, float] = {}
    for item in heat:
        device, _, degrees = item.partition("=")
        try:
            warming[device.strip()] = float(degrees)
        except ValueError:
            raise click.BadParameter(f"{item!r}: give DEVICE=DEGREES, e.g. sim-2=0.5", param_hint="--heat") from None
    with contextlib.suppress(KeyboardInterrupt):
        try:
            _run(simulate(_settings(ctx), devices=devices, interval_s=interval, rounds=rounds, prefix=prefix,
                          say=click.echo, heat=warming))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--heat") from None



def _add_workflow_commands() -> None:
    """`switchboard workflow ...` lives with the engine (agents/workflows/cli.py)."""
    from agents.workflows.cli import workflow

    cli.add_command(workflow)


_add_workflow_commands()


# -- model serving ---------------------------------------------------------------------------------------------------
@cli.command("serve")
@click.option("--block/--no-block", default=None,
              help="Stay in the foreground until Ctrl-C (default: with a local Ray, which lives in this process; "
                   "against serving.ray_address, deploy and return).")
@click.pass_context
def serve_command(ctx: click.Context, block: bool | None) -> None:
    """Deploy the models (intent recognition, FAQ retrieval) on Ray Serve, trained from the agents' policies.

    Without serving.ray_address a local Ray starts on 127.0.0.1 in this process; workers with serving.enabled find
    it through the data directory. Needs the serving extra (docs/serving.md).
    """
    from serving.server import serve

    settings = _settings(ctx)
    deployed = serve(settings, progress=lambda line: click.echo(f"  {line}"), block=block)
    for name, info in deployed.info.items():
        click.echo(f"{name}: {info['model']}, {info['threads']} torch thread(s), agents: "
                   f"{', '.join(info['agents'])}")


@cli.command("quantize")
@click.option("--model", "model", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="FP32 model folder (default: the bundled all-MiniLM-L6-v2).")
@click.option("--output", "output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the artefact (serving.model_path can point at it).")
@click.option("--level", type=click.Choice(["fp32", "int8", "int8-per-tensor", "bnb-int8", "bnb-nf4"]), default="int8",
              show_default=True, help="Optimisation level: int8 = torch dynamic quantization, per-channel weight "
              "scales (CPU); bnb-int8 / bnb-nf4 = bitsandbytes LLM.int8() / 4-bit NF4 (CUDA when available, else "
              "CPU, slower there than FP32; needs bitsandbytes).")
@click.option("--labelled", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Labelled utterances (agent -> intent -> texts) to measure quality on "
                   "(default: serving/data/labelled_utterances.yaml).")
@click.option("--seconds", type=click.FloatRange(0.1), default=3.0, show_default=True,
              help="Time spent measuring each speed figure.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads (default: every core).")
@click.pass_context
def quantize_command(ctx: click.Context, model: Path | None, output: Path, level: str, labelled: Path | None,
                     seconds: float, threads: int | None) -> None:
    """Quantize a sentence encoder and report size, speed and quality against FP32."""
    from agents.registry import deployment_agents
    from serving.encoder import SentenceEncoder
    from serving.examples import training_sets
    from serving.quantization import LABELLED, apply_level, artefact_bytes, compare, labelled_utterances, save_artefact

    settings = _settings(ctx)
    fp32 = SentenceEncoder.load(model, "fp32", threads=threads)
    click.echo(f"input:  {fp32.path} ({fp32.name}, FP32)")
    candidate = apply_level(fp32, level)
    click.echo(f"level:  {level} on {candidate.device}")
    training = training_sets([agent.policy for agent in deployment_agents(settings)])
    report = compare(fp32, candidate, level, training, labelled_utterances(labelled or LABELLED), min_s=seconds)
    path = save_artefact(candidate, output, level, str(fp32.path), report)
    for line in report.lines():
        click.echo(line)
    click.echo(f"output: {path} ({artefact_bytes(path) / 1e6:.1f} MB on disk); serve it with "
               f"SWITCHBOARD_SERVING__MODEL_PATH={path}")


def main() -> None:
    import logging

    # Client libraries log every failed connection attempt while a server boots; the CLI reports outcomes itself.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "gmqtt", "botocore", "aiobotocore", "kafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    cli(obj={})


if __name__ == "__main__":
    main()
