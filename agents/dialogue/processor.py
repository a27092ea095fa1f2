"""The dialogue engine on the bus: the recogniser stage and one stateful processor per agent.

Both are thin: the recogniser stage turns each `dialogue.turns` event into an `understood` event on the addressed
agent's topic; the agent processor decodes nothing itself (the stream shell does), calls the pure `core.step`, and
maps its effects to events. Event ids derive from the input's id and the effect's position, so a redelivered input
yields identical events that readers drop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from agents.dialogue import core
from agents.dialogue.collaboration import delegations_due
from agents.dialogue.effects import (
    Effect,
    ForwardTurn,
    NotifyHandoff,
    RecordTransition,
    SendAnswer,
    SendCommand,
    SendReply,
    SendRequest,
    SendTransfer,
    StartWorkflow,
)
from agents.dialogue.errors import DialogueError
from agents.dialogue.model import Policy
from agents.dialogue.recognise import KeywordRecogniser, Recogniser
from agents.dialogue.retrieval import Retrieval, Retriever
from agents.directory import Directory
from topics import catalog
from topics.event import Event, derived_id
from topics.processor import Emit, State

RECOGNISER_SOURCE = "/switchboard/recogniser"


class UnknownAgentError(DialogueError):
    """A turn is addressed to an agent no worker runs."""


class RecogniserStage:
    """`dialogue.turns` -> `agent.<name>.understood`, for every dialogue agent this worker knows.

    Turns for agents in `others` (Python agents such as `echo` that read `dialogue.turns` themselves) are left to
    them; a turn for an agent nobody runs is dead-lettered with the list of known agents.

    An agent with a retriever (served FAQ retrieval) also gets the best knowledge-base entries in the event. With
    `concurrency` above 1 the shell handles that many turns at once, so that calls to a served model travel as one
    batched request; `ordered_by_subject` keeps each session's `understood` events in its turns' order.
    """

    name = "recogniser"
    source = catalog.DIALOGUE_TURNS
    ordered_by_subject = True

    def __init__(self, recognisers: Mapping[str, Recogniser], others: Collection[str] = (), *,
                 retrievers: Mapping[str, Retriever] | None = None, concurrency: int = 1) -> None:
        self.recognisers = dict(recognisers)
        self.others = frozenset(others)
        self.retrievers = dict(retrievers or {})
        self.concurrency = concurrency

    async def handle(self, event: Event) -> Sequence[Emit]:
        turn = event.data
        agent = turn["agent"]
        if agent in self.others:
            return ()
        recogniser = self.recognisers.get(agent)
        if recogniser is None:
            known = sorted({*self.recognisers, *self.others})
            raise UnknownAgentError(f"turn {event.id} is addressed to agent {agent!r}, which no worker runs; "
                                    f"known agents: {', '.join(known)} (check the turn's 'agent' field)")
        retriever = self.retrievers.get(agent)
        retrieval: Retrieval | None = None
        if retriever is None:
            understanding = await recogniser.recognise(turn["text"], turn.get("locale"))
        else:  # both calls in one tick: each joins its deployment's batch
            understanding, retrieval = await asyncio.gather(recogniser.recognise(turn["text"], turn.get("locale")),
                                                            retriever.retrieve(turn["text"]))
        data = {
            "session_id": turn["session_id"],
            "agent": agent,
            "turn_id": event.id,
            "text": turn["text"],
            "channel": turn.get("channel") or "api",
            "locale": turn.get("locale"),
            "intent": understanding.intent,
            "confidence": float(understanding.confidence),
            "entities": [{"name": e.name, "value": e.value, "start": e.start, "end": e.end}
                         for e in understanding.entities],
            "model": understanding.model,
        }
        if retrieval is not None:
            data["knowledge"] = retrieval.as_data()
        if turn.get("via"):  # passed on by the agent the user addresses, after a transfer
            data.update(via=turn["via"], turn_id=turn.get("turn_id") or event.id)
        understood = event.caused(core.UNDERSTOOD, f"{RECOGNISER_SOURCE}/{agent}", data, effect="understood",
                                  subject=turn["session_id"], time=event.time)
        return (Emit(catalog.agent_topics(agent).understood, understood),)


class DialogueAgent:
    """One agent's sessions: `(state, event) -> (state, effects)` by its policy, keyed by session id.

    Reads the agent's `understood` and `signals` topics (co-partitioned by session id), so every event of a session
    reaches the same worker and the same table partition.
    """

    def __init__(self, policy: Policy, directory: Directory | None = None) -> None:
        self.policy = policy
        self.directory = directory  # the agents `delegate` and `transfer` may address (agents/directory.py)
        self.topics = catalog.agent_topics(policy.agent)
        self.name = f"dialogue-{policy.agent}"
        self.source = self.topics.understood
        self.sources = (self.topics.understood, self.topics.signals)
        self.event_source = f"/switchboard/agents/{policy.agent}"

    def initial(self, subject: str) -> State:
        return core.initial_state(subject)

    def step(self, state: State, event: Event) -> tuple[State, Sequence[Emit]]:
        new_state, effects = core.step(state, event, self.policy, self.directory)
        return new_state, [self.emit(index, effect, event, new_state) for index, effect in enumerate(effects)]

    def sweep(self, subject: str, state: State, now: datetime) -> Sequence[Emit]:
        """A `timeout` signal to this agent's inbox for a session whose idle deadline has passed, and a
        `delegation_timeout` for each delegation whose deadline has.

        The id is derived from the session and its last activity (the request, for a delegation), so every sweep of
        the same deadline sends the same event; the step ignores one that is no longer due (the user spoke meanwhile,
        the answer came, or it was applied). A delegation's timeout keeps the delegation's correlation and cause, so
        `switchboard trace` shows it in the chain that asked.
        """
        emits = [self.delegation_timeout(subject, waiting, now) for waiting in delegations_due(state, now)]
        due = core.idle_deadline(state, self.policy)
        if due is None or now < due:
            return tuple(emits)
        data = {"session_id": subject, "agent": self.policy.agent, "kind": "timeout", "name": None, "text": None,
                "data": "{}"}
        signal = Event(type=core.SIGNAL, source=f"{self.event_source}/timeouts", data=data, subject=subject,
                       id=derived_id(f"{self.policy.agent}/{subject}", f"timeout@{state.get('last_at')}"), time=now)
        return (*emits, Emit(self.topics.signals, signal))

    def delegation_timeout(self, subject: str, waiting: Mapping[str, Any], now: datetime) -> Emit:
        request_id = str(waiting["request_id"])
        data = {"session_id": subject, "agent": self.policy.agent, "kind": "delegation_timeout",
                "name": waiting.get("request"), "text": None, "data": json.dumps({"request_id": request_id})}
        signal = Event(type=core.SIGNAL, source=f"{self.event_source}/timeouts", data=data, subject=subject,
                       id=derived_id(f"{self.policy.agent}/{subject}", f"delegation-timeout@{request_id}"), time=now,
                       correlationid=str(waiting.get("correlation") or ""), causationid=waiting.get("cause"))
        return Emit(self.topics.signals, signal)

    def emit(self, index: int, effect: Effect, cause: Event, state: Mapping[str, Any]) -> Emit:
        """The event for one effect; its id is derived from the cause and the effect's position."""
        session = str(cause.data["session_id"])
        agent = self.policy.agent
        name = f"{index}.{type(effect).__name__}"
        if isinstance(effect, SendReply):
            # After a workflow or a person, the answer is to the user's last turn.
            in_reply_to = cause.data.get("turn_id") if cause.type == core.UNDERSTOOD else state.get("last_turn")
            data: dict[str, Any] = {"session_id": session, "agent": agent, "text": effect.text,
                                    "in_reply_to": in_reply_to or cause.id, "author": effect.author}
            return Emit(catalog.DIALOGUE_REPLIES, cause.caused(catalog.DIALOGUE_REPLIES.value_schema,
                                                               self.event_source, data, effect=name, subject=session))
        if isinstance(effect, RecordTransition):
            data = {"session_id": session, "agent": agent, "from_state": effect.from_state,
                    "to_state": effect.to_state, "reason": effect.reason, "turn": int(state.get("turns", 0)),
                    "policy_version": self.policy.version,
                    "context": json.dumps(state.get("context", {}), sort_keys=True, default=str)}
            spec = self.topics.transitions
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name, subject=session))
        if isinstance(effect, SendCommand):
            spec = catalog.get(effect.topic)
            data = {"target": effect.target, "name": effect.name, "args": json.dumps(dict(effect.args),
                                                                                     sort_keys=True, default=str),
                    "agent": agent, "session_id": session}
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name,
                                           subject=effect.target))
        if isinstance(effect, StartWorkflow):
            spec = catalog.WORKFLOW_REQUESTS
            data = {"run_id": effect.run_id, "workflow": effect.workflow,
                    "input": json.dumps(dict(effect.input), sort_keys=True, default=str), "requester": agent,
                    "reply_to": self.topics.signals.name, "reply_key": session}
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name,
                                           subject=effect.run_id))
        if isinstance(effect, NotifyHandoff):
            spec = catalog.DIALOGUE_HANDOFFS
            data = {"session_id": session, "agent": agent, "kind": effect.kind, "reason": effect.reason,
                    "text": effect.text, "person": effect.person,
                    "history": [{"role": role, "text": text} for role, text in effect.history]}
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name,
                                           subject=session))
        return self.emit_collaboration(name, effect, cause, session)

    def emit_collaboration(self, name: str, effect: Effect, cause: Event, session: str) -> Emit:
        """The event for a request, an answer, a forwarded turn or a transfer: to another agent's inbox, or a turn."""
        agent = self.policy.agent
        if isinstance(effect, SendRequest):
            spec = catalog.agent_topics(effect.agent).signals
            payload: dict[str, Any] = {"request_id": effect.request_id, "from": agent, "reply_session": session,
                       "input": dict(effect.input)}
            data: dict[str, Any] = {"session_id": effect.request_id, "agent": effect.agent, "kind": "request",
                                    "name": effect.name, "text": None,
                                    "data": json.dumps(payload, sort_keys=True, default=str)}
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name,
                                           subject=effect.request_id))
        if isinstance(effect, SendAnswer):
            spec = catalog.agent_topics(effect.agent).signals
            payload = {"request_id": effect.request_id, "agent": agent, "text": effect.text, "output": effect.output}
            data = {"session_id": effect.session, "agent": effect.agent, "kind": "answer", "name": agent,
                    "text": effect.text, "data": json.dumps(payload, sort_keys=True, default=str)}
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name,
                                           subject=effect.session))
        if isinstance(effect, ForwardTurn):
            spec = catalog.DIALOGUE_TURNS
            data = {"session_id": session, "agent": effect.agent, "text": effect.text, "channel": effect.channel,
                    "locale": effect.locale, "via": effect.via, "turn_id": effect.turn_id}
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name, subject=session))
        if isinstance(effect, SendTransfer):
            spec = catalog.agent_topics(effect.entry).signals
            payload = {"to": effect.to, "turn": dict(effect.turn) if effect.turn is not None else None}
            data = {"session_id": session, "agent": effect.entry, "kind": "transfer", "name": agent, "text": None,
                    "data": json.dumps(payload, sort_keys=True, default=str)}
            return Emit(spec, cause.caused(spec.value_schema, self.event_source, data, effect=name, subject=session))
        raise DialogueError(f"no event for effect {effect!r}")  # pragma: no cover - the union above is complete


def keyword_recognisers(policies: Sequence[Policy]) -> dict[str, Recogniser]:
    """The built-in recogniser for each policy."""
    return {policy.agent: KeywordRecogniser(policy) for policy in policies}
