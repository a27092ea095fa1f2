"""The pure dialogue step: `step(state, event, policy) -> (new_state, effects)`.

No I/O, no clock, no randomness: the time is the event's, ids derive from the event's id. So replaying a recorded log
of `understood` and `signal` events through `step` reproduces exactly the replies and transitions recorded, and
tests need no bus.

The input event is a `topics.event.Event` whose data is a `switchboard.dialogue.Understood` (a user's turn, with
intent and entities) or a `switchboard.dialogue.Signal` (a person, a workflow result, a timeout, an external event).
Session state is a JSON-serialisable dict (see `initial_state`); it is never mutated, a new one is returned.

A policy error at run time (a condition that cannot be evaluated, a jump loop) does not stop the session: the step
is discarded, the user hears the policy's error reply, the session returns to idle, and the transition records the
error with the policy file and line.

An event-triggered dialogue (a trigger `{event: ...}`) that arrives while the session waits for a slot value, a listen
route or a workflow does not abandon the waiting dialogue: that one is set aside (`state["suspended"]`, a stack) and
the session goes back to it, where it waited, when the dialogue on top is done. See docs/policies.md.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from agents.dialogue.collaboration import Collaboration
from agents.dialogue.early import keep_early, take_early
from agents.dialogue.effects import (
    Effect,
    NotifyHandoff,
    RecordTransition,
    SendCommand,
    SendReply,
    StartWorkflow,
)
from agents.dialogue.errors import DialogueError
from agents.dialogue.expressions import Expression, truthy
from agents.dialogue.model import (
    DONE,
    END,
    Action,
    Answer,
    Append,
    CallWorkflow,
    ClearSlots,
    Delegate,
    Dialogue,
    EndSession,
    Goto,
    Handoff,
    Increment,
    Location,
    Node,
    Policy,
    Publish,
    Reply,
    SetContext,
    Slot,
    Transfer,
    Trigger,
    UnsetContext,
)
from agents.dialogue.templates import Template, compile_template, render_value
from agents.directory import Directory
from topics.event import Event, derived_id

UNDERSTOOD = "switchboard.dialogue.Understood"
SIGNAL = "switchboard.dialogue.Signal"
STATE_VERSION = 1

ACTIVE, PARKED, ENDED = "active", "parked", "ended"
IDLE = "idle"
#: Dialogues set aside by event-triggered ones, at most; beyond it the oldest is dropped.
SUSPEND_LIMIT = 3


class PolicyRuntimeError(DialogueError):
    """The policy could not be followed for this event (a bad condition at run time, a jump loop)."""

    def __init__(self, at: Location | None, message: str) -> None:
        super().__init__(f"{at}: {message}" if at else message)
        self.at = at


#: Workflow results kept that arrived before their request was applied (again), per session; see on_workflow_result.
EARLY_RESULTS = 8


def initial_state(session_id: str = "") -> dict[str, Any]:
    """A session nobody has spoken in yet."""
    return {
        "v": STATE_VERSION,
        "session": session_id,
        "status": ACTIVE,
        "flow": None,  # dialogue id
        "node": None,  # node id in that dialogue
        "await": None,  # None | {"kind": "listen"} | {"kind": "slot", ...} | {"kind": "workflow", ...}
        "context": {},
        "slots": {},
        "history": [],  # [{"role": "user" | "bot" | "human", "text": ...}], the last `settings.history`
        "fallbacks": 0,  # consecutive turns nothing matched
        "turns": 0,
        "last_at": None,  # ISO time of the last user or person activity
        "handoff": None,  # {"reason": ..., "person": ...} while parked
        "workflow": None,  # the last workflow result: {"workflow", "status", "output", "error"}
        "last_turn": None,  # id of the user's last turn, which later replies (after a workflow, a person) answer
        # Dialogues an event-triggered dialogue set aside while they waited, innermost last:
        # [{"flow", "node", "await", "event", "result"?}]; "result" is a workflow result that came meanwhile.
        "suspended": [],
    }


def step(state: Mapping[str, Any] | None, event: Event, policy: Policy,
         directory: Directory | None = None) -> tuple[dict[str, Any], list[Effect]]:
    """Advance one session by one event. Deterministic; never raises for a policy error at run time.

    `directory` (agent name -> card) is who `delegate` and `transfer` may address; None: any named agent, and no
    agent for a capability."""
    start = copy.deepcopy(dict(state)) if state else initial_state(event.subject or "")
    run = _Step(policy, copy.deepcopy(start), event, directory)
    try:
        run.handle()
    except DialogueError as exc:
        run = _Step(policy, copy.deepcopy(start), event, directory)
        run.fail(exc)
    return run.state, run.effects


def idle_deadline(state: Mapping[str, Any] | None, policy: Policy) -> datetime | None:
    """When an active session falls idle: its last turn plus the policy's `session_timeout_s`; None for a session
    that is parked with a person, ended, or has not started. A `timeout` signal at or after it ends the session."""
    if not state or state.get("status") != ACTIVE or not state.get("last_at"):
        return None
    return datetime.fromisoformat(str(state["last_at"])) + timedelta(seconds=policy.settings.session_timeout_s)


@lru_cache(maxsize=256)
def _setting_template(text: str) -> Template:
    return compile_template(text)


class _Step(Collaboration):
    """One application of one event to one session's state (mutates its own copy)."""

    def __init__(self, policy: Policy, state: dict[str, Any], event: Event,
                 directory: Directory | None = None) -> None:
        self.policy = policy
        self.directory = directory
        self.delegations = 0
        self.state = state
        state.setdefault("suspended", [])  # a state stored before set-aside dialogues existed
        self.event = event
        self.effects: list[Effect] = []
        self.jumps = 0
        self.workflows = 0
        data = event.data
        self.data = data
        self.is_turn = event.type == UNDERSTOOD
        self.kind = "turn" if self.is_turn else str(data.get("kind"))
        self.text: str | None = data.get("text")
        self.entities: dict[str, str] = {}
        if self.is_turn:
            for entity in data.get("entities") or ():
                self.entities.setdefault(entity["name"], entity["value"])
        payload: Any = {}
        if not self.is_turn:
            try:
                payload = json.loads(data.get("data") or "{}")
            except ValueError:
                payload = {"raw": data.get("data")}
        self.payload: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {"value": payload}

    # --- entry points ---------------------------------------------------------------------------------------------

    def handle(self) -> None:
        if self.event.type not in (UNDERSTOOD, SIGNAL):
            raise PolicyRuntimeError(None, f"a dialogue step takes {UNDERSTOOD} or {SIGNAL} events, "
                                           f"not {self.event.type}")
        handler = {
            "turn": self.on_turn,
            "human_take": self.on_human_take,
            "human_reply": self.on_human_reply,
            "human_release": self.on_human_release,
            "workflow_result": self.on_workflow_result,
            "timeout": self.on_timeout,
            "event": self.on_event,
            "request": self.on_request,
            "answer": self.on_answer,
            "transfer": self.on_transfer,
            "delegation_timeout": self.on_delegation_timeout,
        }.get(self.kind)
        if handler is None:
            raise PolicyRuntimeError(None, f"unknown signal kind {self.kind!r}")
        handler()

    def fail(self, exc: Exception) -> None:
        """The policy failed for this event: say so, return to idle, record why."""
        if self.is_turn:
            self.state["turns"] += 1
            self.remember("user", self.text or "")
            self.touch()
        before = self.label()
        self.state.update(flow=None, node=None, suspended=[], **{"await": None})
        self.reply(self.policy.settings.error_reply)
        self.effects.append(RecordTransition(before, self.label(), f"error: {exc}"))

    def on_turn(self) -> None:
        if self.route_turn():
            return
        st = self.state
        st["turns"] += 1
        if st["status"] == ACTIVE and self.idle_expired():
            self.end("idle timeout (noticed on the next turn)")
        if st["status"] == ENDED:
            self.restart()
        self.remember("user", self.text or "")
        self.touch()
        st["last_turn"] = self.data.get("turn_id")
        if st["status"] == PARKED:
            self.effects.append(NotifyHandoff("user_message", text=self.text))
            return
        waiting = st["await"]
        if waiting and waiting["kind"] in ("workflow", "delegation"):
            if not self.try_dialogues(interrupts_only=True):
                self.reply(self.render_setting(self.policy.settings.waiting_reply))
            return
        if waiting and waiting["kind"] == "slot":
            if not self.try_dialogues(interrupts_only=True):
                self.fill_slot(waiting)
            return
        listening = waiting is not None and waiting["kind"] == "listen"
        if listening and (self.try_dialogues(interrupts_only=True) or self.try_listen()):
            return
        if not self.try_dialogues(interrupts_only=False) and not self.try_knowledge():
            self.fallback()

    def on_human_take(self) -> None:
        person = str(self.data.get("name") or "a colleague")
        st = self.state
        before = self.label()
        if st["status"] != PARKED:
            st["status"] = PARKED
            st["handoff"] = {"reason": "taken over by a person", "person": person}
            st["await"] = None
            st["suspended"] = []
        else:
            st["handoff"] = {**(st["handoff"] or {}), "person": person}
        self.touch()
        self.effects.append(NotifyHandoff("taken", person=person))
        self.reply(self.render_setting(self.policy.settings.handoff_taken_reply, person=person))
        self.effects.append(RecordTransition(before, self.label(), f"taken by {person}"))

    def on_human_reply(self) -> None:
        st = self.state
        person = str(self.data.get("name") or (st["handoff"] or {}).get("person") or "a colleague")
        if st["status"] != PARKED:
            self.effects.append(RecordTransition(self.label(), self.label(),
                                                 f"ignored a reply from {person}: the session is not handed off"))
            return
        self.touch()
        text = self.text or ""
        self.effects.append(SendReply(text, author=f"human:{person}"))
        self.remember("human", text)
        self.effects.append(NotifyHandoff("replied", text=text, person=person))

    def on_human_release(self) -> None:
        st = self.state
        if st["status"] != PARKED:
            return
        before = self.label()
        person = (st["handoff"] or {}).get("person")
        st.update(status=ACTIVE, handoff=None, flow=None, node=None, fallbacks=0, **{"await": None})
        self.touch()
        self.effects.append(NotifyHandoff("released", person=person))
        released = self.policy.settings.handoff_released_reply
        if released:
            self.reply(self.render_setting(released, person=person or ""))
        self.effects.append(RecordTransition(before, self.label(), f"released by {person or 'a person'}"))

    def on_workflow_result(self) -> None:
        st = self.state
        waiting = st["await"]
        run_id = self.payload.get("run_id")
        if waiting and waiting["kind"] == "workflow" and waiting["run_id"] == run_id:
            self.apply_workflow_result(waiting, self.payload)
            return
        for entry in reversed(self.suspended):
            aside = entry.get("await") or {}
            if aside.get("kind") == "workflow" and aside.get("run_id") == run_id and "result" not in entry:
                # The waiting dialogue was set aside by an event: keep the result until the session goes back to it.
                entry["result"] = {key: self.payload.get(key) for key in ("status", "output", "error")}
                self.effects.append(RecordTransition(self.label(), self.label(),
                                                     f"kept the result of workflow {aside.get('workflow')} for "
                                                     f"{entry['flow']}/{entry['node']}, set aside"))
                return
        # Not waited for (yet). After a crash the input that started the run can be applied again after its
        # result arrived (they travel on different topics): keep the last few, so that call_workflow finds it.
        keep_early(st, "early_results", str(run_id),
                   {key: self.payload.get(key) for key in ("status", "output", "error")}, limit=EARLY_RESULTS)
        self.effects.append(RecordTransition(self.label(), self.label(),
                                             f"kept a result of workflow {self.data.get('name')} run "
                                             f"{run_id}: not waited for (yet)"))

    def call_workflow(self, action: CallWorkflow) -> None:
        """Start the workflow and wait for its result; the run id derives from the input, so the same step applied
        again starts the same run (which the workflow engine does not run twice)."""
        st = self.state
        self.workflows += 1
        run_id = derived_id(self.event.id, f"workflow/{self.workflows}")
        payload = self.value(action.input, action.at)
        self.effects.append(StartWorkflow(run_id, action.workflow,
                                          payload if isinstance(payload, Mapping) else {"value": payload}))
        st["await"] = {"kind": "workflow", "run_id": run_id, "workflow": action.workflow,
                       "save_as": action.save_as, "on_error": action.on_error}
        self.effects.append(RecordTransition(self.label(), f"{self.label()} (waiting for {action.workflow})",
                                             f"call_workflow ({action.at})"))
        result = take_early(st, "early_results", run_id)
        if result is not None:  # this step is applied again after a crash, and the run's result came already
            self.apply_workflow_result(st["await"], result)

    def apply_workflow_result(self, waiting: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """The workflow the session waits for (at its current node) has finished: go on from that node."""
        st = self.state
        status = str(result.get("status") or "failed")
        output = result.get("output")
        st["workflow"] = {"workflow": waiting["workflow"], "status": status, "output": output,
                          "error": result.get("error")}
        st["await"] = None
        dialogue, node = self.current()
        if status == "succeeded":
            st["context"][waiting["save_as"]] = output
            self.after_actions(dialogue, node)
        elif waiting.get("on_error"):
            self.follow(dialogue, waiting["on_error"], f"workflow {waiting['workflow']} {status}")
        else:
            self.reply(self.policy.settings.error_reply)
            self.finish(f"workflow {waiting['workflow']} {status}: {result.get('error')}")

    def on_timeout(self) -> None:
        if self.state["status"] != ACTIVE or not self.idle_expired():
            return  # activity since the timer fired, or nothing to close
        if self.state.get("transferred_to"):  # the agent that has the conversation says goodbye, if it wants to
            self.end(f"idle timeout (transferred to {self.state['transferred_to']})")
            return
        if self.policy.settings.timeout_reply:
            self.reply(self.render_setting(self.policy.settings.timeout_reply))
        self.end("idle timeout")

    def on_event(self) -> None:
        st = self.state
        if st["status"] == PARKED:
            self.effects.append(NotifyHandoff("user_message", text=f"[event {self.data.get('name')}] "
                                              f"{json.dumps(self.payload, sort_keys=True)}"))
            return
        if st["status"] == ENDED:
            self.restart()
        waiting = st["await"]
        if waiting and waiting["kind"] == "listen" and self.try_listen():
            return
        # A dialogue waiting for the user (or a workflow) is set aside, not abandoned: the session goes back to it
        # when the event's dialogue is done (`finish`).
        set_aside = bool(st["flow"] and waiting)
        if set_aside:
            self.set_aside()
        if self.try_dialogues(interrupts_only=False):
            self.trim_suspended()
            return
        if set_aside:
            self.suspended.pop()
        self.effects.append(RecordTransition(self.label(), self.label(),
                                             f"event {self.data.get('name')} matched no trigger"))

    # --- matching -------------------------------------------------------------------------------------------------

    def matches(self, trigger: Trigger) -> bool:
        if trigger.pattern is not None:
            fired = self.is_turn and trigger.pattern.search(self.text or "") is not None
        elif trigger.intent is not None:
            fired = (self.is_turn and self.data.get("intent") == trigger.intent
                     and float(self.data.get("confidence") or 0.0) >= trigger.min_confidence)
        elif trigger.event is not None:
            fired = self.kind == "event" and self.data.get("name") == trigger.event
        elif trigger.request is not None:
            fired = self.kind == "request" and self.data.get("name") == trigger.request
        else:
            fired = True
        return fired and (trigger.when is None or self.holds(trigger.when, trigger.at))

    def try_dialogues(self, *, interrupts_only: bool) -> bool:
        for dialogue in self.policy.dialogues:
            if interrupts_only and not dialogue.interrupts:
                continue
            for trigger in dialogue.triggers:
                if self.matches(trigger):
                    self.state["fallbacks"] = 0
                    self.enter(dialogue, dialogue.entry, f"trigger of {dialogue.id} ({trigger.at})")
                    return True
        return False

    def try_listen(self) -> bool:
        dialogue, node = self.current()
        for route in node.listen:
            if route.trigger is not None and not self.matches(route.trigger):
                continue
            if route.when is not None and not self.holds(route.when, route.at):
                continue
            self.state["fallbacks"] = 0
            self.state["await"] = None
            self.follow(dialogue, route.target, f"listen route ({route.at})")
            return True
        return False

    def try_knowledge(self) -> bool:
        """No dialogue took the turn: the best knowledge-base entry retrieved for it (recorded in the event, so a
        replay needs no model) answers through its `faq_<id>` dialogue if it scores at least the policy's
        `knowledge_min_score`."""
        retrieval = self.data.get("knowledge") if self.is_turn else None
        hits = (retrieval or {}).get("hits") or []
        if not hits:
            return False
        best = max(hits, key=lambda hit: float(hit["score"]))  # the first of equals: the retriever's order
        score = float(best["score"])
        dialogue = self.policy.dialogue(f"faq_{best['id']}")
        if score < self.policy.settings.knowledge_min_score or dialogue is None:
            return False
        self.state["fallbacks"] = 0
        self.enter(dialogue, dialogue.entry, f"knowledge base: entry {best['id']} scored {score:.3f} "
                                             f"(knowledge_min_score {self.policy.settings.knowledge_min_score:g})")
        return True

    # --- moving through the policy --------------------------------------------------------------------------------

    def current(self) -> tuple[Dialogue, Node]:
        st = self.state
        dialogue = self.policy.dialogue(st["flow"] or "")
        node = dialogue.node(st["node"] or "") if dialogue else None
        if dialogue is None or node is None:
            raise PolicyRuntimeError(None, f"the session is at {st['flow']}/{st['node']}, which the policy "
                                           f"(version {self.policy.version}) does not have; was it changed?")
        return dialogue, node

    def resolve(self, dialogue: Dialogue | None, target: str) -> tuple[Dialogue, Node]:
        if dialogue is not None and (node := dialogue.node(target)) is not None:
            return dialogue, node
        name, _, node_id = target.partition(".")
        other = self.policy.dialogue(name)
        if other is not None:
            node = other.node(node_id) if node_id else other.entry
            if node is not None:
                return other, node
        raise PolicyRuntimeError(None, f"jump to unknown node {target!r}")

    def follow(self, dialogue: Dialogue | None, target: str, reason: str) -> None:
        if target == END:
            self.end(reason)
        elif target == DONE:
            self.finish(reason)
        else:
            next_dialogue, node = self.resolve(dialogue, target)
            self.enter(next_dialogue, node, reason)

    def enter(self, dialogue: Dialogue, node: Node, reason: str) -> None:
        self.jumps += 1
        if self.jumps > self.policy.settings.max_jumps:
            raise PolicyRuntimeError(node.at, f"more than {self.policy.settings.max_jumps} jumps for one event: "
                                              f"the policy loops (last at node {dialogue.id}/{node.id})")
        st = self.state
        if any(entry["flow"] == dialogue.id for entry in self.suspended):
            # Entering a dialogue that was set aside replaces the set-aside copy: the session never goes back to it.
            st["suspended"] = [entry for entry in self.suspended if entry["flow"] != dialogue.id]
        before = self.label()
        st.update(flow=dialogue.id, node=node.id, **{"await": None})
        self.effects.append(RecordTransition(before, self.label(), reason))
        if self.run_actions(dialogue, node.actions):
            self.after_actions(dialogue, node)

    def run_actions(self, dialogue: Dialogue | None, actions: Sequence[Action]) -> bool:
        """Run actions in order; False when one of them moved the session elsewhere (a jump, a wait, the end)."""
        for action in actions:
            if action.when is not None and not self.holds(action.when, action.at):
                continue
            if not self.do(dialogue, action):
                return False
        return True

    def after_actions(self, dialogue: Dialogue, node: Node) -> None:
        if node.form is not None and not self.ask_next_slot(dialogue, node):
            return
        self.after_form(dialogue, node)

    def finish(self, reason: str) -> None:
        """The dialogue is over; the session goes back to a dialogue an event set aside, or waits for the next
        trigger."""
        before = self.label()
        self.state.update(flow=None, node=None, **{"await": None})
        self.effects.append(RecordTransition(before, self.label(), reason))
        self.resume()

    def end(self, reason: str) -> None:
        before = self.label()
        self.state.update(status=ENDED, flow=None, node=None, handoff=None, suspended=[], **{"await": None})
        self.effects.append(RecordTransition(before, self.label(), reason))

    # --- dialogues set aside by events ----------------------------------------------------------------------------

    @property
    def suspended(self) -> list[dict[str, Any]]:
        """The dialogues set aside, innermost last."""
        stack: list[dict[str, Any]] = self.state["suspended"]
        return stack

    def set_aside(self) -> None:
        """Put the waiting dialogue aside for an event's dialogue."""
        st = self.state
        self.suspended.append({"flow": st["flow"], "node": st["node"], "await": copy.deepcopy(st["await"]),
                               "event": self.data.get("name")})

    def trim_suspended(self) -> None:
        """Keep at most `SUSPEND_LIMIT` set-aside dialogues: the oldest beyond it are dropped."""
        stack = self.suspended
        while len(stack) > SUSPEND_LIMIT:
            dropped = stack.pop(0)
            self.effects.append(RecordTransition(self.label(), self.label(),
                                                 f"dropped {dropped['flow']}/{dropped['node']}: more than "
                                                 f"{SUSPEND_LIMIT} dialogues set aside"))

    def resume(self) -> None:
        """The session is idle: go back to the innermost set-aside dialogue, waiting where it waited (no re-prompt).

        A workflow result that arrived while it was set aside is applied now.
        """
        st = self.state
        stack = self.suspended
        if st["status"] != ACTIVE or st["flow"] is not None or not stack:
            return
        entry = stack.pop()
        dialogue = self.policy.dialogue(entry["flow"])
        node = dialogue.node(entry["node"]) if dialogue else None
        before = self.label()
        if dialogue is None or node is None or not entry.get("await"):
            self.effects.append(RecordTransition(before, before, f"could not go back to {entry['flow']}/"
                                                                 f"{entry['node']}: the policy (version "
                                                                 f"{self.policy.version}) does not have it"))
            self.resume()
            return
        st.update(flow=dialogue.id, node=node.id, **{"await": entry["await"]})
        self.effects.append(RecordTransition(before, self.label(), f"back to {dialogue.id}/{node.id}, set aside by "
                                                                   f"event {entry.get('event')}"))
        if "result" in entry and entry["await"]["kind"] == "workflow":
            self.apply_workflow_result(entry["await"], entry["result"])
        elif entry["await"]["kind"] == "delegation":
            self.settle(st["await"])  # answers (or the deadline) that came while it was set aside

    def restart(self) -> None:
        """A turn after the end starts a new conversation: memory of the old one is dropped."""
        fresh = initial_state(self.state.get("session", ""))
        fresh["turns"] = self.state["turns"]
        before = self.label()
        self.state.clear()
        self.state.update(fresh)
        self.effects.append(RecordTransition(before, self.label(), "new conversation"))

    # --- forms ----------------------------------------------------------------------------------------------------

    def ask_next_slot(self, dialogue: Dialogue, node: Node) -> bool:
        """Ask the first unfilled slot (filling from this turn's entities first); True when all are filled."""
        assert node.form is not None
        slots = self.state["slots"]
        for slot in node.form.slots:
            if slot.name in slots:
                continue
            if slot.entity and slot.entity in self.entities and self.valid(slot, self.entities[slot.entity]):
                slots[slot.name] = self.entities[slot.entity]
                continue
            self.reply_template(slot.ask, slot.at)
            self.state["await"] = {"kind": "slot", "slot": slot.name, "attempts": 0}
            return False
        return True

    def fill_slot(self, waiting: dict[str, Any]) -> None:
        dialogue, node = self.current()
        slot = next((s for s in node.form.slots if s.name == waiting["slot"]), None) if node.form else None
        if slot is None:
            raise PolicyRuntimeError(node.at, f"the session waits for slot {waiting['slot']!r}, which node "
                                              f"{dialogue.id}/{node.id} does not ask")
        candidate = self.entities.get(slot.entity) if slot.entity else None
        if candidate is None:
            candidate = (self.text or "").strip()
        if self.valid(slot, candidate):
            self.state["slots"][slot.name] = candidate
            self.state["fallbacks"] = 0
            self.state["await"] = None
            if self.ask_next_slot(dialogue, node):
                self.after_form(dialogue, node)
            return
        attempts = int(waiting.get("attempts", 0)) + 1
        if attempts >= slot.max_attempts:
            self.state["await"] = None
            reason = f"slot {slot.name} invalid {attempts} times"
            if slot.on_fail:
                self.follow(dialogue, slot.on_fail, reason)
            else:
                self.fallback(give_up=True)
            return
        if slot.invalid is not None:
            self.reply_template(slot.invalid, slot.at, value=candidate)
        self.reply_template(slot.ask, slot.at)
        self.state["await"] = {"kind": "slot", "slot": slot.name, "attempts": attempts}

    def after_form(self, dialogue: Dialogue, node: Node) -> None:
        """The node's actions ran and its form is complete: listen, or take the first `next` route that holds."""
        if node.listen:
            self.state["await"] = {"kind": "listen"}
            return
        for route in node.next:
            if route.when is None or self.holds(route.when, route.at):
                self.follow(dialogue, route.target, f"next ({route.at})")
                return
        self.finish(f"end of {dialogue.id}")

    def valid(self, slot: Slot, candidate: str) -> bool:
        if not candidate:
            return False
        if slot.pattern is not None and not slot.pattern.fullmatch(candidate):
            return False
        return slot.validate is None or self.holds(slot.validate, slot.at, value=candidate)

    # --- fallback ---------------------------------------------------------------------------------------------

    def fallback(self, *, give_up: bool = False) -> None:
        """Nothing matched (or a slot was given up on): apologise, or after `limit` misses run `on_limit`."""
        fallback = self.policy.fallback
        st = self.state
        st["fallbacks"] += 1
        if (give_up or st["fallbacks"] >= fallback.limit) and fallback.on_limit:
            st["fallbacks"] = 0
            self.effects.append(RecordTransition(self.label(), self.label(), "fallback limit reached"))
            dialogue = self.policy.dialogue(st["flow"] or "")
            self.run_actions(dialogue, fallback.on_limit)
            return
        dialogue = self.policy.dialogue(st["flow"] or "")
        self.run_actions(dialogue, fallback.actions)

    # --- actions ----------------------------------------------------------------------------------------------

    def do(self, dialogue: Dialogue | None, action: Action) -> bool:
        """Carry out one action; False when it moved the session (the caller stops running actions)."""
        st = self.state
        context = st["context"]
        if isinstance(action, Reply):
            self.reply_template(action.content, action.at)
        elif isinstance(action, SetContext):
            context[action.key] = self.value(action.value, action.at)
        elif isinstance(action, UnsetContext):
            context.pop(action.key, None)
        elif isinstance(action, Increment):
            current = context.get(action.key)
            base = current if isinstance(current, int | float) and not isinstance(current, bool) else 0
            total = base + action.by
            context[action.key] = int(total) if float(total).is_integer() else total
        elif isinstance(action, Append):
            current = context.get(action.key)
            items = list(current) if isinstance(current, list) else []
            items.append(self.value(action.value, action.at))
            if action.max_items is not None:
                items = items[-action.max_items:]
            context[action.key] = items
        elif isinstance(action, ClearSlots):
            if action.slots:
                for name in action.slots:
                    st["slots"].pop(name, None)
            else:
                st["slots"].clear()
        elif isinstance(action, Goto):
            self.follow(dialogue, action.target, f"goto ({action.at})")
            return False
        elif isinstance(action, Publish):
            args = self.value(action.args, action.at)
            self.effects.append(SendCommand(
                topic=action.topic,
                target=self.render(action.target, action.at),
                name=action.name,
                args=args if isinstance(args, Mapping) else ({} if args is None else {"value": args}),
            ))
        elif isinstance(action, CallWorkflow):
            self.call_workflow(action)
            return False
        elif isinstance(action, Handoff):
            self.hand_off(self.render(action.reason, action.at))
            return False
        elif isinstance(action, Delegate | Answer | Transfer):
            return self.collaborate(action)
        elif isinstance(action, EndSession):
            if action.content is not None:
                self.reply_template(action.content, action.at)
            self.end(f"end ({action.at})")
            return False
        else:  # pragma: no cover - the loader builds only the actions above
            raise PolicyRuntimeError(getattr(action, "at", None), f"unknown action {action!r}")
        return True

    def hand_off(self, reason: str) -> None:
        st = self.state
        before = self.label()
        lines = tuple((line["role"], line["text"]) for line in st["history"])
        st.update(status=PARKED, handoff={"reason": reason, "person": None}, suspended=[], **{"await": None})
        if self.policy.settings.handoff_reply:
            self.reply(self.render_setting(self.policy.settings.handoff_reply))
        self.effects.append(NotifyHandoff("requested", reason=reason, history=lines))
        self.effects.append(RecordTransition(before, self.label(), f"handoff: {reason}"))

    # --- helpers ----------------------------------------------------------------------------------------------

    def scope(self, **extra: Any) -> dict[str, Any]:
        st = self.state
        scope: dict[str, Any] = {
            "context": st["context"],
            "slots": st["slots"],
            "entities": self.entities,
            "intent": self.data.get("intent") if self.is_turn else None,
            "confidence": float(self.data.get("confidence") or 0.0) if self.is_turn else 0.0,
            "text": self.text or "",
            "turn": st["turns"],
            "history": st["history"],
            "event": {"kind": self.kind, "name": self.data.get("name"), "data": self.payload,
                      "person": extra.pop("person", self.data.get("name") if self.kind.startswith("human") else None)},
            "session": {"id": st.get("session") or self.event.subject, "agent": self.policy.agent,
                        "channel": self.data.get("channel"), "status": st["status"]},
            "workflow": st["workflow"],
            "value": None,
            "request": st.get("request"),  # the request this session serves (started by a `request` trigger)
            "iot": self.policy.iot.scope(),  # declared rooms: config, not state, so replay stays exact
        }
        scope.update(extra)
        return scope

    def holds(self, expression: Expression, at: Location, **extra: Any) -> bool:
        try:
            return truthy(expression.evaluate(self.scope(**extra)))
        except DialogueError as exc:
            raise PolicyRuntimeError(at, str(exc)) from exc

    def render(self, template: Template, at: Location, **extra: Any) -> str:
        try:
            return template.render(self.scope(**extra))
        except DialogueError as exc:
            raise PolicyRuntimeError(at, str(exc)) from exc

    def value(self, value: Any, at: Location) -> Any:
        try:
            return render_value(value, self.scope())
        except DialogueError as exc:
            raise PolicyRuntimeError(at, str(exc)) from exc

    def render_setting(self, text: str, **extra: Any) -> str:
        try:
            return _setting_template(text).render(self.scope(**extra))
        except DialogueError as exc:
            raise PolicyRuntimeError(None, f"{self.policy.file}: settings: {exc}") from exc

    def reply_template(self, template: Template, at: Location, **extra: Any) -> None:
        self.reply(self.render(template, at, **extra))

    def reply(self, text: str) -> None:
        self.effects.append(SendReply(text))
        self.remember("bot", text)

    def remember(self, role: str, text: str) -> None:
        history = self.state["history"]
        history.append({"role": role, "text": text})
        limit = self.policy.settings.history
        if len(history) > limit:
            del history[: len(history) - limit]

    def touch(self) -> None:
        self.state["last_at"] = self.event.time.isoformat()

    def idle_expired(self) -> bool:
        last = self.state.get("last_at")
        if not last:
            return False
        idle = (self.event.time - datetime.fromisoformat(last)).total_seconds()
        return idle >= self.policy.settings.session_timeout_s

    def label(self) -> str:
        st = self.state
        if st["status"] == PARKED:
            return "parked"
        if st["status"] == ENDED:
            return "ended"
        if st["flow"]:
            return f"{st['flow']}/{st['node']}"
        if st.get("transferred_to"):
            return f"transferred to {st['transferred_to']}"
        return IDLE

