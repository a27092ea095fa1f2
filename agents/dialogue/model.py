"""What a dialogue policy is once loaded: immutable, validated, with every regex, expression and template compiled.

The loader (`agents.dialogue.loader`) builds these from a policy YAML file; the pure core (`agents.dialogue.core`)
runs them. Every object keeps `at`, the file and line it came from, so run-time errors can point at the policy.

A policy is a list of dialogues (flows). A dialogue has triggers and nodes; the first node is the entry. A node runs
its actions, then either asks the slots of its form, or listens for the user's next turn and routes on it, or jumps
along its `next` routes (the first whose condition holds). A dialogue written with `actions:` only (the short form in
the README) is one node named `start`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.dialogue.expressions import Expression
from agents.dialogue.templates import Template

#: Route targets with a meaning of their own rather than a node id.
END = "end"  # the conversation ends (status ended)
DONE = "done"  # the dialogue is over; the session waits for the next trigger
SPECIAL_TARGETS = frozenset({END, DONE})

#: Names an expression or template in a policy may start with.
SCOPE_NAMES = frozenset(
    {"context", "slots", "entities", "intent", "confidence", "text", "turn", "history", "event", "session", "value",
     "workflow", "request", "iot"}
)


@dataclass(frozen=True)
class Location:
    """Where something was written: `file:line`."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Trigger:
    """What starts a dialogue or takes a listen route.

    Exactly one of `pattern` (a regex searched in the turn's text, case-insensitive), `intent` (the recognised intent,
    at `min_confidence` or more) or `event` (a signal of kind `event` with this name, e.g. `device.alarm`); `when`,
    when given, must also hold.
    """

    at: Location
    pattern: re.Pattern[str] | None = None
    intent: str | None = None
    min_confidence: float = 0.0
    event: str | None = None
    when: Expression | None = None
    request: str | None = None  # a request from another agent (`delegate`) with this name: a signal of kind `request`


@dataclass(frozen=True)
class Route:
    """A jump: to `target` (a node id of the same dialogue, `dialogue_id.node_id`, `end` or `done`), if `when` holds
    and, on a listen route, if `trigger` matches the user's turn."""

    at: Location
    target: str
    when: Expression | None = None
    trigger: Trigger | None = None


# --- actions ------------------------------------------------------------------------------------------------------
# Every action may carry `when` (`if:` in YAML): it runs only if the condition holds.


@dataclass(frozen=True)
class Reply:
    """Send the user a message (`content`, a template)."""

    at: Location
    content: Template
    when: Expression | None = None
    type: Literal["reply"] = "reply"


@dataclass(frozen=True)
class SetContext:
    """`context[key] = value`; string leaves of `value` are templates (`render_value`)."""

    at: Location
    key: str
    value: Any
    when: Expression | None = None
    type: Literal["set_context"] = "set_context"


@dataclass(frozen=True)
class UnsetContext:
    """Remove `context[key]` (no error if absent)."""

    at: Location
    key: str
    when: Expression | None = None
    type: Literal["unset_context"] = "unset_context"


@dataclass(frozen=True)
class Increment:
    """`context[key] += by` (a missing or non-numeric value counts as 0)."""

    at: Location
    key: str
    by: float = 1
    when: Expression | None = None
    type: Literal["increment"] = "increment"


@dataclass(frozen=True)
class Append:
    """Append `value` to the list `context[key]`, keeping the last `max_items` when given."""

    at: Location
    key: str
    value: Any
    max_items: int | None = None
    when: Expression | None = None
    type: Literal["append"] = "append"


@dataclass(frozen=True)
class ClearSlots:
    """Forget slot values (all, or the named ones), so a form asks again."""

    at: Location
    slots: tuple[str, ...] = ()
    when: Expression | None = None
    type: Literal["clear_slots"] = "clear_slots"


@dataclass(frozen=True)
class Goto:
    """Jump to another node now; the rest of this node's actions do not run."""

    at: Location
    target: str
    when: Expression | None = None
    type: Literal["goto"] = "goto"


@dataclass(frozen=True)
class Publish:
    """Publish a command on a declared command topic (an IoT device, another agent's inbox).

    `target` (a template) is the Kafka key: the device or agent addressed; `args` is rendered like `SetContext.value`.
    """

    at: Location
    topic: str
    target: Template
    name: str
    args: Any = None
    when: Expression | None = None
    type: Literal["publish"] = "publish"


@dataclass(frozen=True)
class CallWorkflow:
    """Start workflow `workflow` with `input` and wait for its result.

    The node's remaining actions do not run; when the result arrives its output is stored in `context[save_as]`
    and the node continues with its `next` routes, or jumps to `on_error` if the workflow failed (without
    `on_error`: the policy's error reply, then `done`). Turns that arrive meanwhile get `settings.waiting_reply`.
    """

    at: Location
    workflow: str
    input: Any
    save_as: str
    on_error: str | None = None
    when: Expression | None = None
    type: Literal["call_workflow"] = "call_workflow"


@dataclass(frozen=True)
class Handoff:
    """Hand the session to a person: it is parked and a request goes to the human queue with `reason`."""

    at: Location
    reason: Template
    when: Expression | None = None
    type: Literal["handoff"] = "handoff"


@dataclass(frozen=True)
class EndSession:
    """End the conversation (after an optional goodbye); the next turn starts a new one with fresh context."""

    at: Location
    content: Template | None = None
    when: Expression | None = None
    type: Literal["end"] = "end"


@dataclass(frozen=True)
class Delegate:
    """Ask other agents: request `request` with `input`, to agent `to` or to every agent announcing `capability`.

    `collect`: `first` (the first answer), `all` (every addressed agent's) or `none` (a broadcast: nothing is
    awaited and the node goes on at once). While it waits, the session is like one waiting for a workflow; the
    answer(s) land in `context[save_as]` and the node continues with its `next` routes. Without enough answers by
    `timeout_s` (counted from the event's time; the worker's sweeper sends the `delegation_timeout` signal), the
    session goes to `on_timeout`, or says `settings.delegation_timeout_reply` and the dialogue is done.
    """

    at: Location
    request: str
    save_as: str
    to: str | None = None
    capability: str | None = None
    input: Any = None
    collect: Literal["first", "all", "none"] = "first"
    timeout_s: float = 30.0
    on_timeout: str | None = None
    when: Expression | None = None
    type: Literal["delegate"] = "delegate"


@dataclass(frozen=True)
class Answer:
    """Answer the request this session serves (it was started by a `{request: ...}` trigger): `content` (a template)
    and `data` (rendered like `SetContext.value`) go back to the asking agent's session."""

    at: Location
    content: Template | None = None
    data: Any = None
    when: Expression | None = None
    type: Literal["answer"] = "answer"


@dataclass(frozen=True)
class Transfer:
    """Hand the conversation to agent `to`: the current turn and the user's next ones go to it, until it ends or
    transfers the session on (see docs/policies.md, "Several agents")."""

    at: Location
    to: str
    reason: Template | None = None
    when: Expression | None = None
    type: Literal["transfer"] = "transfer"


Action = (
    Reply | SetContext | UnsetContext | Increment | Append | ClearSlots | Goto | Publish | CallWorkflow | Handoff
    | EndSession | Delegate | Answer | Transfer
)

#: YAML `type:` of each action.
ACTION_TYPES: dict[str, type[Any]] = {
    "reply": Reply,
    "set_context": SetContext,
    "unset_context": UnsetContext,
    "increment": Increment,
    "append": Append,
    "clear_slots": ClearSlots,
    "goto": Goto,
    "publish": Publish,
    "call_workflow": CallWorkflow,
    "handoff": Handoff,
    "end": EndSession,
    "delegate": Delegate,
    "answer": Answer,
    "transfer": Transfer,
}
#: Actions after which the node's remaining actions cannot run (the loader rejects actions after them).
FINAL_ACTIONS = (CallWorkflow, Handoff, EndSession, Transfer)


# --- forms --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One value a form asks for.

    Filled from the recognised entity `entity` when the turn has one, else from the turn's whole text (stripped).
    Valid if it matches `pattern` (full match) and `validate` holds (with the candidate as `value`); otherwise the
    user hears `invalid` and `ask` again, up to `max_attempts` tries, then the session goes to `on_fail` (a route
    target) or the fallback's limit handling.
    """

    at: Location
    name: str
    ask: Template
    entity: str | None = None
    pattern: re.Pattern[str] | None = None
    validate: Expression | None = None
    invalid: Template | None = None
    max_attempts: int = 3
    on_fail: str | None = None


@dataclass(frozen=True)
class Form:
    """Slots asked in order; a slot already filled (this session, or from the triggering turn's entities) is
    not asked again."""

    at: Location
    slots: tuple[Slot, ...]


# --- structure ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A state of a dialogue: `actions` on entry, then `form`, then `listen` or `next`.

    `listen`: wait for the next turn and take the first route that matches it; if none does, the global triggers
    and then the fallback apply (the node keeps listening after a fallback reply). `next`: jump at once along the
    first route whose condition holds; if none (or no `next`), the dialogue is `done`.
    """

    at: Location
    id: str
    actions: tuple[Action, ...] = ()
    form: Form | None = None
    listen: tuple[Route, ...] = ()
    next: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Dialogue:
    """A flow: its triggers start it at its first node.

    `interrupts`: its triggers are also tried while the session waits for a slot value or listens, before the
    slot is filled or a listen route is taken (for "cancel", "talk to a person").
    """

    at: Location
    id: str
    triggers: tuple[Trigger, ...]
    nodes: tuple[Node, ...]
    interrupts: bool = False

    @property
    def entry(self) -> Node:
        return self.nodes[0]

    def node(self, node_id: str) -> Node | None:
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None


@dataclass(frozen=True)
class Fallback:
    """What happens when nothing matches a turn: `actions` (say you did not understand); after `limit`
    consecutive misses, `on_limit` instead (e.g. a handoff), and the count starts again."""

    at: Location
    actions: tuple[Action, ...]
    limit: int = 2
    on_limit: tuple[Action, ...] = ()


@dataclass(frozen=True)
class IntentDefinition:
    """An intent for the built-in keyword recogniser: `examples` are regexes; a match scores `confidence`."""

    at: Location
    name: str
    examples: tuple[re.Pattern[str], ...]
    confidence: float = 0.9


@dataclass(frozen=True)
class EntityDefinition:
    """An entity the built-in recogniser extracts with `pattern` (the first group if it has one, else the match)."""

    at: Location
    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class PolicySettings:
    """Per-agent knobs, all with working defaults."""

    history: int = 20  # turns kept in the session's memory
    session_timeout_s: float = 1800.0  # idle time after which the session ends
    timeout_reply: str | None = "This conversation was closed after a period of inactivity."
    waiting_reply: str = "One moment please, I am still working on your request."
    error_reply: str = "Sorry, something went wrong on my side. Let us start again."
    handoff_reply: str = "I am passing you to a colleague; please wait a moment."
    handoff_taken_reply: str = "You are now talking to {{ event.person }}."
    handoff_released_reply: str = "I am back. How else can I help?"
    max_jumps: int = 50  # node entries per event before the policy is declared looping
    delegation_timeout_reply: str = ("Sorry, I did not get an answer from {{ event.data.waiting_for }} in time. "
                                     "Please try again later.")
    # A turn no dialogue takes is answered by the best knowledge-base entry retrieved for it (served FAQ retrieval,
    # in the understood event) when that entry scores at least this; otherwise it is a fallback.
    knowledge_min_score: float = 0.5


@dataclass(frozen=True)
class TelemetryRule:
    """`iot.rules` item: raise event `event` when `metric` of `device_id` goes above `above` (or below `below`).

    Edge-triggered: it fires when a reading starts to meet the condition, and re-arms when a reading no longer does,
    so a room that stays hot raises one alert, not one per reading. The device twin evaluates it (agents/iot).
    """

    at: Location
    id: str
    device_id: str
    metric: str
    event: str
    above: float | None = None
    below: float | None = None
    room: str | None = None

    def holds(self, value: float) -> bool:
        """Whether a reading meets the condition."""
        return value > self.above if self.above is not None else value < float(self.below or 0.0)

    @property
    def condition(self) -> str:
        return "above" if self.above is not None else "below"

    @property
    def threshold(self) -> float:
        return float(self.above if self.above is not None else self.below or 0.0)


@dataclass(frozen=True)
class IotSettings:
    """A policy's `iot:` section: its rooms (room -> device role -> device id) and telemetry rules.

    Rooms are tuples (the policy stays hashable); expressions read them as `iot.rooms` (see `scope`).
    """

    rooms: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    rules: tuple[TelemetryRule, ...] = ()

    def scope(self) -> dict[str, object]:
        """What expressions see as `iot`: `rooms` (a mapping of mappings) and `room_names` (a list, in order)."""
        return {"rooms": {room: dict(devices) for room, devices in self.rooms},
                "room_names": [room for room, _ in self.rooms]}


@dataclass(frozen=True)
class Policy:
    """An agent's whole dialogue policy, validated."""

    agent: str
    file: str
    dialogues: tuple[Dialogue, ...]
    fallback: Fallback
    intents: tuple[IntentDefinition, ...] = ()
    entities: tuple[EntityDefinition, ...] = ()
    settings: PolicySettings = field(default_factory=PolicySettings)
    iot: IotSettings = field(default_factory=IotSettings)  # rooms and telemetry rules (docs/policies.md)
    description: str = ""  # for the agent directory (`switchboard agents list`)
    owner: str = ""  # who answers for the agent, for the agent directory
    version: str = ""  # a digest of the file, recorded in transitions so a replay can check it runs the same policy

    def dialogue(self, dialogue_id: str) -> Dialogue | None:
        for dialogue in self.dialogues:
            if dialogue.id == dialogue_id:
                return dialogue
        return None
