"""Agents working together, as part of the pure dialogue step: delegation (requests, answers, their deadlines),
fan-out to every agent with a capability, and transfer of a conversation to another agent.

Kept out of `core.py` for size; `core._Step` inherits it. Everything here is as pure as the rest of the step: a
delegation's deadline is the input event's time plus its timeout, kept in the session state; the worker's sweeper
turns a passed deadline into a `delegation_timeout` signal in the agent's own inbox (`DialogueAgent.sweep`), which
the step applies only if the delegation still waits and the deadline really passed. So a replay of the inbox gives
the same result, and a sweep that runs twice is harmless.

Transfers: the agent the user addresses (the *entry*) keeps routing the session. After `transfer`, it passes each
user turn on (a turn on `dialogue.turns` with `via` = itself) to the agent that has the conversation; that agent,
when it transfers again, asks the entry to route elsewhere (a `transfer` signal), so turns never travel a chain.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from agents.dialogue.early import keep_early, take_early
from agents.dialogue.effects import (
    Effect,
    ForwardTurn,
    RecordTransition,
    SendAnswer,
    SendRequest,
    SendTransfer,
)
from agents.dialogue.errors import DialogueError
from agents.dialogue.model import Answer, Delegate, Dialogue, Location, Node, Policy, Transfer
from agents.dialogue.templates import Template
from agents.directory import Directory
from topics.event import Event, derived_id

DELEGATION = "delegation"


#: Answers kept that arrived before their request was applied (again), per session; see `on_answer`.
EARLY_ANSWERS = 8

class CollaborationError(DialogueError):
    """A delegation or transfer names an agent the deployment does not run."""

    def __init__(self, at: Location, message: str) -> None:
        super().__init__(f"{at}: {message}")
        self.at = at


def delegations_due(state: Mapping[str, Any] | None, now: datetime) -> list[dict[str, Any]]:
    """The delegations of a session (waiting, or set aside by an event) whose deadline has passed at `now`."""
    if not state:
        return []
    waits = [state.get("await"), *(entry.get("await") for entry in state.get("suspended") or ())]
    return [dict(w) for w in waits if isinstance(w, Mapping) and w.get("kind") == DELEGATION
            and not w.get("timed_out") and datetime.fromisoformat(str(w["deadline"])) <= now]


class Collaboration:
    """The delegation and transfer part of `core._Step` (which provides the attributes and helpers declared here)."""

    policy: Policy
    state: dict[str, Any]
    event: Event
    data: Mapping[str, Any]
    payload: Mapping[str, Any]
    effects: list[Effect]
    directory: Directory | None
    is_turn: bool
    text: str | None
    delegations: int

    # -- provided by core._Step --
    def label(self) -> str: raise NotImplementedError
    def current(self) -> tuple[Dialogue, Node]: raise NotImplementedError
    def after_actions(self, dialogue: Dialogue, node: Node) -> None: raise NotImplementedError
    def follow(self, dialogue: Dialogue | None, target: str, reason: str) -> None: raise NotImplementedError
    def finish(self, reason: str) -> None: raise NotImplementedError
    def restart(self) -> None: raise NotImplementedError
    def touch(self) -> None: raise NotImplementedError
    def idle_expired(self) -> bool: raise NotImplementedError
    def reply(self, text: str) -> None: raise NotImplementedError
    def render(self, template: Template, at: Location, **extra: Any) -> str: raise NotImplementedError
    def render_setting(self, text: str, **extra: Any) -> str: raise NotImplementedError
    def value(self, value: Any, at: Location) -> Any: raise NotImplementedError
    def try_dialogues(self, *, interrupts_only: bool) -> bool: raise NotImplementedError

    # -- delegating ------------------------------------------------------------------------------------------------

    def collaborate(self, action: Delegate | Answer | Transfer) -> bool:
        """Carry out a collaboration action; False when it moved the session (it waits, or the session left)."""
        if isinstance(action, Delegate):
            return self.delegate(action)
        if isinstance(action, Answer):
            self.answer(action)
            return True
        self.transfer(action.to, action.at, self.render(action.reason, action.at) if action.reason else "transfer")
        return False

    def delegate(self, action: Delegate) -> bool:
        """Send the request(s); wait for the answer(s) unless nothing is collected. False when the session waits."""
        st = self.state
        self.delegations += 1
        request_id = derived_id(self.event.id, f"delegate/{self.delegations}")
        recipients = self.recipients(action)
        payload = self.value(action.input, action.at)
        payload = payload if isinstance(payload, Mapping) else ({} if payload is None else {"value": payload})
        for agent in recipients:
            self.effects.append(SendRequest(agent, request_id, action.request, payload))
        asked = ", ".join(recipients) or f"no agent (none announces capability {action.capability})"
        if action.collect == "none":
            self.effects.append(RecordTransition(self.label(), self.label(),
                                                 f"broadcast {action.request} to {asked} ({action.at})"))
            return True
        deadline = self.event.time + timedelta(seconds=action.timeout_s)
        waiting: dict[str, Any] = {
            "kind": DELEGATION, "request_id": request_id, "request": action.request, "expected": recipients,
            "answers": [], "collect": action.collect, "save_as": action.save_as, "on_timeout": action.on_timeout,
            "timeout_s": action.timeout_s, "deadline": deadline.isoformat(), "correlation": self.event.correlationid,
            "cause": self.event.id, "capability": action.capability}
        st["await"] = waiting
        self.effects.append(RecordTransition(self.label(), f"{self.label()} (waiting for {asked})",
                                             f"delegate {action.request} ({action.at})"))
        if not recipients:
            self.delegation_failed(waiting)
            return False
        kept = take_early(st, "early_answers", request_id)
        if kept is not None:  # this step is applied again after a crash, and answers came already
            for answer in kept:
                if answer["agent"] in recipients and all(a["agent"] != answer["agent"] for a in waiting["answers"]):
                    waiting["answers"].append(answer)
            self.settle(waiting)
        return False

    def recipients(self, action: Delegate) -> list[str]:
        if action.to is not None:
            if self.directory is not None and action.to not in self.directory:
                raise CollaborationError(action.at, f"delegate: no agent named {action.to!r} runs in this "
                                                    f"deployment (agents: {', '.join(sorted(self.directory))}); "
                                                    "fix `to:` or deploy that agent")
            return [action.to]
        return sorted(name for name, card in (self.directory or {}).items()
                      if action.capability in card.capabilities)

    def on_answer(self) -> None:
        """An answer to a request this session made: collect it, and go on when enough have come."""
        request_id = self.payload.get("request_id")
        agent = str(self.payload.get("agent") or self.data.get("name"))
        found = self.find_delegation(request_id)
        if found is None:
            # After a crash the step that asked can be applied again after its answers arrived (they travel on
            # different topics): keep the last few, so that the same request (same id) finds them.
            keep_early(self.state, "early_answers", str(request_id), {"agent": agent, "text": self.payload.get("text"),
                                                                       "output": self.payload.get("output")},
                       limit=EARLY_ANSWERS, many=True)
            self.effects.append(RecordTransition(self.label(), self.label(), f"kept an answer from {agent} to "
                                                 f"request {request_id}: not waited for (yet, or late)"))
            return
        waiting, current = found
        if agent not in waiting["expected"] or any(a["agent"] == agent for a in waiting["answers"]):
            self.effects.append(RecordTransition(self.label(), self.label(), f"ignored an answer from {agent} to "
                                                 f"request {request_id}: not asked, or answered already"))
            return
        waiting["answers"].append({"agent": agent, "text": self.payload.get("text"),
                                   "output": self.payload.get("output")})
        if not current:
            self.effects.append(RecordTransition(self.label(), self.label(), f"kept the answer of {agent} for "
                                                 f"the delegation set aside ({waiting['request']})"))
            return
        self.effects.append(RecordTransition(self.label(), self.label(), f"answer from {agent} to "
                                             f"{waiting['request']} ({len(waiting['answers'])} of "
                                             f"{len(waiting['expected'])})"))
        self.settle(waiting)

    def on_delegation_timeout(self) -> None:
        """The sweeper says a deadline passed: applied only if that delegation still waits and it is really due."""
        found = self.find_delegation(self.payload.get("request_id"))
        if found is None:
            return
        waiting, current = found
        if self.event.time < datetime.fromisoformat(str(waiting["deadline"])):
            return
        if current:
            self.delegation_failed(waiting)
        else:
            waiting["timed_out"] = True
            self.effects.append(RecordTransition(self.label(), self.label(), f"the delegation set aside "
                                                 f"({waiting['request']}) timed out"))

    def settle(self, waiting: dict[str, Any]) -> None:
        """The delegation the session waits for (now current): go on if its answers are complete, fail if its
        deadline passed meanwhile, else keep waiting."""
        answers = waiting["answers"]
        complete = bool(answers) if waiting["collect"] == "first" else len(answers) >= len(waiting["expected"])
        if not complete:
            if waiting.get("timed_out"):
                self.delegation_failed(waiting)
            return
        self.state["await"] = None
        self.state["context"][waiting["save_as"]] = copy.deepcopy(answers[0] if waiting["collect"] == "first"
                                                                  else answers)
        dialogue, node = self.current()
        self.after_actions(dialogue, node)

    def delegation_failed(self, waiting: dict[str, Any]) -> None:
        """No (or too few) answers by the deadline, or nobody to ask: `on_timeout`, else the timeout reply."""
        st = self.state
        st["await"] = None
        answered = {a["agent"] for a in waiting["answers"]}
        missing = [agent for agent in waiting["expected"] if agent not in answered]
        waiting_for = ", ".join(missing) if waiting["expected"] else \
            f"any agent with capability {waiting.get('capability')}"
        st["context"][waiting["save_as"]] = copy.deepcopy(waiting["answers"]) if waiting["collect"] == "all" \
            else None
        # What the reply template and the on_timeout node see as `event.data`.
        self.payload = {"request_id": waiting["request_id"], "missing": missing, "waiting_for": waiting_for,
                        "answers": copy.deepcopy(waiting["answers"])}
        if waiting["expected"]:
            reason = (f"delegation {waiting['request']} timed out after {float(waiting['timeout_s']):g}s: no answer "
                      f"from {waiting_for} to request {waiting['request_id']}")
        else:
            reason = f"delegation {waiting['request']} failed: no agent announces capability " \
                     f"{waiting.get('capability')}"
        dialogue, _ = self.current()
        if waiting.get("on_timeout"):
            self.follow(dialogue, waiting["on_timeout"], reason)
        else:
            self.reply(self.render_setting(self.policy.settings.delegation_timeout_reply))
            self.finish(reason)

    def find_delegation(self, request_id: Any) -> tuple[dict[str, Any], bool] | None:
        """The delegation waiting for `request_id`, and whether it is the current wait (not set aside)."""
        waiting = self.state.get("await")
        if isinstance(waiting, dict) and waiting.get("kind") == DELEGATION and waiting["request_id"] == request_id:
            return waiting, True
        for entry in self.state.get("suspended") or ():
            aside = entry.get("await")
            if isinstance(aside, dict) and aside.get("kind") == DELEGATION and aside["request_id"] == request_id:
                return aside, False
        return None

    # -- serving requests ------------------------------------------------------------------------------------------

    def on_request(self) -> None:
        """Another agent asks: this session (keyed by the request id) runs the dialogue whose `request` trigger
        names it, and its `answer` actions go back to the asking session."""
        st = self.state
        if st["status"] == "ended":
            self.restart()
        st["request"] = {"id": self.payload.get("request_id"), "from": self.payload.get("from"),
                         "session": self.payload.get("reply_session"), "name": self.data.get("name"),
                         "input": self.payload.get("input") or {}}
        if self.try_dialogues(interrupts_only=False):
            return
        self.effects.append(RecordTransition(self.label(), self.label(), f"request {self.data.get('name')} from "
                                             f"{self.payload.get('from')} matched no trigger; not answered"))

    def answer(self, action: Answer) -> None:
        request = self.state.get("request")
        if not request:
            self.effects.append(RecordTransition(self.label(), self.label(), f"answer ({action.at}): this session "
                                                 "serves no request (it was not started by a `request` trigger)"))
            return
        text = self.render(action.content, action.at) if action.content is not None else None
        output = self.value(action.data, action.at) if action.data is not None else None
        self.effects.append(SendAnswer(str(request["from"]), str(request["session"]), str(request["id"]), text,
                                       output))
        self.effects.append(RecordTransition(self.label(), self.label(), f"answered request {request['name']} of "
                                             f"{request['from']} ({action.at})"))

    # -- transfers -------------------------------------------------------------------------------------------------

    def transfer(self, to: str, at: Location, reason: str) -> None:
        """Give the conversation to agent `to`: the entry routes to it; another agent asks the entry to."""
        if self.directory is not None and to not in self.directory:
            raise CollaborationError(at, f"transfer: no agent named {to!r} runs in this deployment (agents: "
                                         f"{', '.join(sorted(self.directory))}); fix `to:` or deploy that agent")
        st = self.state
        me = self.policy.agent
        entry = st.get("entry") or me
        before = self.label()
        st.update(flow=None, node=None, suspended=[], **{"await": None})
        turn = self.current_turn()
        if entry == me:
            if to != me:
                self.route_to(to, turn)
        else:
            self.effects.append(SendTransfer(entry, to, turn))
            st.pop("entry", None)
        self.effects.append(RecordTransition(before, self.label(), f"transfer to {to} ({at}): {reason}"))

    def on_transfer(self) -> None:
        """An agent that has one of our sessions hands it on: route the session (and the turn it got) there."""
        before = self.label()
        to = str(self.payload.get("to"))
        turn = self.payload.get("turn")
        self.route_to(to, turn if isinstance(turn, Mapping) else None)
        self.effects.append(RecordTransition(before, self.label(),
                                             f"transfer to {to}, asked by {self.data.get('name')}"))

    def route_to(self, to: str, turn: Mapping[str, Any] | None) -> None:
        me = self.policy.agent
        if to == me:
            self.state.pop("transferred_to", None)
        else:
            self.state["transferred_to"] = to
        if turn is not None and turn.get("text") is not None:
            self.effects.append(ForwardTurn(to, me, str(turn["text"]), str(turn["turn_id"]),
                                            str(turn.get("channel") or "api"), turn.get("locale")))

    def route_turn(self) -> bool:
        """Before a turn is handled: a forwarded turn makes this agent the session's holder; a user's turn for a
        session this agent transferred goes on to the holder. True when the turn was passed on."""
        st = self.state
        via = self.data.get("via")
        if via:
            if via == self.policy.agent:
                st.pop("entry", None)
            else:
                st["entry"] = via
            st.pop("transferred_to", None)
            return False
        st.pop("entry", None)
        target = st.get("transferred_to")
        if not target or st["status"] != "active" or self.idle_expired():
            return False
        self.touch()
        turn = self.current_turn()
        assert turn is not None
        self.route_to(str(target), turn)
        return True

    def current_turn(self) -> dict[str, Any] | None:
        if not self.is_turn:
            return None
        return {"text": self.text or "", "turn_id": self.data.get("turn_id") or self.event.id,
                "channel": self.data.get("channel") or "api", "locale": self.data.get("locale")}
