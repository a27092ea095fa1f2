"""Every topic of Switchboard, declared once. Code refers to these objects, never to topic-name strings."""

from __future__ import annotations

import re
from dataclasses import dataclass

from topics.errors import TopicError
from topics.spec import DAY_MS, Cleanup, TopicSpec

DIALOGUE_TURNS = TopicSpec(
    name="dialogue.turns",
    value_schema="switchboard.dialogue.Turn",
    key="session id",
    owner="channels (chat, voice, upstream systems)",
    description="What people and upstream systems say; each turn is answered on dialogue.replies.",
)
DIALOGUE_REPLIES = TopicSpec(
    name="dialogue.replies",
    value_schema="switchboard.dialogue.Reply",
    key="session id",
    owner="dialogue processors",
    description="Agents' answers to turns; ids derive from the turn, so duplicates are recognisable.",
)
DEAD_LETTERS = TopicSpec(
    name="bus.deadletters",
    value_schema="switchboard.bus.DeadLetter",
    key="original topic",
    owner="every stream processor",
    description="Messages a processor could not handle, with the reason and the original bytes.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)

DIALOGUE_HANDOFFS = TopicSpec(
    name="dialogue.handoffs",
    value_schema="switchboard.dialogue.Handoff",
    key="session id",
    owner="dialogue processors (requests, user messages) and people (through `switchboard handoff`)",
    description="The human queue: sessions handed to people and everything that happens to them there.",
)
DEVICE_COMMANDS = TopicSpec(
    name="devices.commands",
    value_schema="switchboard.agents.Command",
    key="device id",
    owner="dialogue and workflow processors",
    description="Commands for IoT devices; the MQTT bridge delivers them.",
)
IOT_TELEMETRY = TopicSpec(
    name="iot.telemetry",
    value_schema="switchboard.iot.Telemetry",
    key="device id",
    owner="the MQTT bridge (streams/mqtt_bridge)",
    description="Device readings and state reports bridged from MQTT, validated against their schema.",
)
IOT_PRESENCE = TopicSpec(
    name="iot.presence",
    value_schema="switchboard.iot.DevicePresence",
    key="device id",
    owner="the MQTT bridge (devices' status messages and last wills; the bridge's own presence)",
    description="Devices (and the bridge) coming online and going offline.",
)
# The IoT side of dialogues (agents/iot): the device twin keeps each device's latest readings, answers queries and
# raises the policies' telemetry rules; the alert dispatcher passes alerts to the sessions that watch an agent.
# iot.queries is co-partitioned with iot.telemetry (same partitions, keyed by device id): the twin reads both.
IOT_TWINS = TopicSpec(
    name="iot.twins",
    value_schema="switchboard.iot.DeviceTwin",
    key="device id",
    owner="the device-twin processor (agents/iot)",
    description="Each device's latest reading per metric after every telemetry event; compacted: the last per device.",
    cleanup=Cleanup.COMPACT,
    retention_ms=None,
)
IOT_QUERIES = TopicSpec(
    name="iot.queries",
    value_schema="switchboard.workflow.Request",
    key="device id",
    owner="the device-query router (workflow requests for device_reading, re-keyed by device)",
    description="Reads of a device's latest telemetry; the device twin answers each on the request's reply_to.",
    partitions=IOT_TELEMETRY.partitions,
)
IOT_ALERTS = TopicSpec(
    name="iot.alerts",
    value_schema="switchboard.iot.Alert",
    key="agent",
    owner="the device-twin processor (the policies' iot.rules)",
    description="Telemetry rules that started to hold (a reading crossed its threshold), keyed by the rule's agent.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)
IOT_SUBSCRIPTIONS = TopicSpec(
    name="iot.subscriptions",
    value_schema="switchboard.agents.Command",
    key="agent watched",
    owner="dialogue sessions (a policy's `publish` of watch / unwatch)",
    description="Sessions that want an agent's telemetry alerts (watch, with args.ttl_s) or no longer (unwatch).",
    partitions=IOT_ALERTS.partitions,
)
IOT_TOPICS: tuple[TopicSpec, ...] = (IOT_TWINS, IOT_QUERIES, IOT_ALERTS, IOT_SUBSCRIPTIONS)
WORKFLOW_REQUESTS = TopicSpec(
    name="workflow.requests",
    value_schema="switchboard.workflow.Request",
    key="run id",
    owner="anyone starting a workflow (dialogues, upstream systems)",
    description="Workflow runs to start; each result goes to the request's reply_to topic.",
)

# The workflow engine (agents/workflows): requests, results and control are co-partitioned by run id, since the
# run processor reads all three with each run's state; task commands are keyed by run id/task, so that parallel
# branches spread over the executor workers.
WORKFLOW_TASKS = TopicSpec(
    name="workflow.tasks",
    value_schema="switchboard.workflow.TaskCommand",
    key="run id/task",
    owner="the workflow run processor",
    description="One attempt of one task to run; executor workers consume it and answer on workflow.results.",
)
WORKFLOW_RESULTS = TopicSpec(
    name="workflow.results",
    value_schema="switchboard.workflow.TaskResult",
    key="run id",
    owner="workflow executor workers",
    description="The outcome of each task attempt: output, or an error marked transient or not.",
)
WORKFLOW_CONTROL = TopicSpec(
    name="workflow.control",
    value_schema="switchboard.workflow.Control",
    key="run id",
    owner="people (`switchboard workflow cancel`) and the run processor's retry timer",
    description="Moves runs without a task result: cancellations, and retries whose wait is over.",
)
WORKFLOW_TRANSITIONS = TopicSpec(
    name="workflow.transitions",
    value_schema="switchboard.workflow.Transition",
    key="run id",
    owner="the workflow run processor",
    description="Every state change of every run and task: the audit trail, and what `workflow status` reads.",
    retention_ms=30 * DAY_MS,
)
WORKFLOW_DEADLETTERS = TopicSpec(
    name="workflow.deadletters",
    value_schema="switchboard.workflow.DeadTask",
    key="run id",
    owner="the workflow run processor",
    description="Tasks that failed for good, with their params and the history of every attempt.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)
# Who the agents are: compacted, so the latest announcement of every agent stays, however long ago it was made.
AGENT_DIRECTORY = TopicSpec(
    name="agents.directory",
    value_schema="switchboard.agents.Announcement",
    key="agent name",
    owner="stream workers (each announces the agents it runs when it starts)",
    description="The agent directory: name, description, owner, capabilities and intents of every agent; "
                "`switchboard agents list` reads it.",
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=None,
)
# The shared level of the served recognisers' cache (serving/shared_cache.py): every worker mirrors it and publishes
# what the model answered on a miss. Compacted: the latest answer per key stays; one partition, since every worker
# reads all of it anyway (and each partition costs every fetch on the embedded broker).
SERVING_ANSWERS = TopicSpec(
    name="serving.answers",
    value_schema="switchboard.serving.CachedAnswer",
    key="digest of model, agent, policy version and normalised text",
    owner="stream workers with serving enabled (each answer of the served intent model to a cache miss)",
    description="Answers of the served intent model, reused by every worker as the second level of its cache.",
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=None,
)
WORKFLOW_TOPICS: tuple[TopicSpec, ...] = (WORKFLOW_TASKS, WORKFLOW_RESULTS, WORKFLOW_CONTROL, WORKFLOW_TRANSITIONS,
                                          WORKFLOW_DEADLETTERS)

ALL: tuple[TopicSpec, ...] = (DIALOGUE_TURNS, DIALOGUE_REPLIES, DEAD_LETTERS, DIALOGUE_HANDOFFS, DEVICE_COMMANDS,
                              WORKFLOW_REQUESTS, IOT_TELEMETRY, IOT_PRESENCE, *WORKFLOW_TOPICS,
                              *IOT_TOPICS, AGENT_DIRECTORY, SERVING_ANSWERS)
_BY_NAME = {spec.name: spec for spec in ALL}
if len(_BY_NAME) != len(ALL):  # pragma: no cover - a declaration mistake caught at import
    raise TopicError("two topics in topics/catalog.py share a name")

_AGENT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_AGENT_TOPIC = re.compile(r"^agent\.([a-z][a-z0-9_-]{0,62})\.(understood|signals|transitions)$")


@dataclass(frozen=True)
class AgentTopics:
    """The topics each dialogue agent owns, declared by one naming rule so that agents can be added as folders.

    `understood`: its users' turns with intent and entities (from the recogniser stage); `signals`: its inbox for
    everything else (people, workflow results, timeouts, other agents, devices); `transitions`: its audit trail.
    """

    agent: str
    understood: TopicSpec
    signals: TopicSpec
    transitions: TopicSpec

    @property
    def all(self) -> tuple[TopicSpec, ...]:
        return (self.understood, self.signals, self.transitions)


def agent_topics(agent: str) -> AgentTopics:
    """The topics of dialogue agent `agent` (a lower-case name like `customer_service`)."""
    if not _AGENT_NAME.fullmatch(agent):
        raise TopicError(f"agent name {agent!r} must be lower-case letters, digits, '_' or '-', starting with a letter")
    return AgentTopics(
        agent=agent,
        understood=TopicSpec(
            name=f"agent.{agent}.understood",
            value_schema="switchboard.dialogue.Understood",
            key="session id",
            owner="the recogniser stage",
            description=f"Turns for agent {agent} with intent, confidence and entities.",
        ),
        signals=TopicSpec(
            name=f"agent.{agent}.signals",
            value_schema="switchboard.dialogue.Signal",
            key="session id",
            owner="people, workflows, timers, devices and other agents",
            description=f"Agent {agent}'s inbox: everything but user turns that moves its sessions.",
        ),
        transitions=TopicSpec(
            name=f"agent.{agent}.transitions",
            value_schema="switchboard.dialogue.Transition",
            key="session id",
            owner=f"agent {agent}'s dialogue processor",
            description=f"Every state change of agent {agent}'s sessions: the audit trail.",
            retention_ms=30 * DAY_MS,
        ),
    )


def get(name: str) -> TopicSpec:
    """The declared topic called `name` (including `agent.<name>.<kind>`); the error lists the declared ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        pass
    match = _AGENT_TOPIC.fullmatch(name)
    if match:
        family = agent_topics(match.group(1))
        return {"understood": family.understood, "signals": family.signals,
                "transitions": family.transitions}[match.group(2)]
    raise TopicError(f"unknown topic {name!r}; declared topics: {', '.join(sorted(_BY_NAME))} and "
                     "agent.<agent>.understood|signals|transitions") from None
