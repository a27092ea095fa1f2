"""Agents working together on the real bus: delegation with correlation, a delegation nobody answers, fan-out to a
capability, transfer of a conversation, the agent directory and `switchboard trace`.

The agents are tests/agents/concierge (asks), tests/agents/oracle (answers), tests/agents/sleepy (never answers a
request) and the shipped receptionist, customer_service and helpdesk.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import pytest

from infra.config import Settings
from infra.console import ChatSession
from infra.testing import collect_events, wait_for_event
from topics import catalog
from topics.event import Event

pytestmark = pytest.mark.integration
SWITCHBOARD = [sys.executable, "-m", "infra.cli"]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SWITCHBOARD, *args], env=env, capture_output=True, text=True, timeout=180, check=False)


async def _say(settings: Settings, agent: str, session: str, text: str, replies: int) -> tuple[Event, list[str]]:
    """Send a turn and await `replies` replies correlated with it (those after a delegation come later)."""
    async with ChatSession(settings, agent, session) as chat:
        turn, _ = await chat.say(text)
    answered = await collect_events(settings, catalog.DIALOGUE_REPLIES, lambda e: e.correlationid == turn.id,
                                    count=replies, timeout_s=60)
    return turn, [f"{e.data['agent']}: {e.data['text']}" for e in answered]


async def test_two_agents_delegate_and_answer_with_one_correlation_and_trace_shows_the_chain(
        stack: Settings, cli_env: dict[str, str]) -> None:
    session = f"ask-{uuid.uuid4().hex[:8]}"
    turn, said = await _say(stack, "concierge", session, "ask the oracle about rome", replies=2)
    assert said == ["concierge: Let me ask the oracle.", "concierge: The oracle says: sunny in rome (clear)"]

    request = await wait_for_event(stack, catalog.agent_topics("oracle").signals,
                                   lambda e: e.correlationid == turn.id and e.data["kind"] == "request")
    answer = await wait_for_event(stack, catalog.agent_topics("concierge").signals,
                                  lambda e: e.correlationid == turn.id and e.data["kind"] == "answer")
    request_id = json.loads(request.data["data"])["request_id"]
    assert json.loads(answer.data["data"])["request_id"] == request_id and answer.causationid == request.id
    assert (answer.subject, answer.data["name"]) == (session, "oracle")

    traced = _cli(["trace", turn.id], cli_env)
    assert traced.returncode == 0, traced.stderr
    lines = traced.stdout.splitlines()
    assert lines[0].startswith(f"trace {turn.id}: ")
    assert lines[1].endswith(f"[id {turn.id[:8]}]") and "dialogue.turns  Turn" in lines[1], "the turn is the root"

    def depth(fragment: str) -> int:
        line = next(line for line in lines if fragment in line)
        return len(re.match(r"[ │├└─]*", line).group(0))  # type: ignore[union-attr]

    assert depth("agent.concierge.understood") < depth("agent.oracle.signals  Signal") \
        < depth("agent.concierge.signals  Signal") < depth("The oracle says"), traced.stdout
    short = _cli(["trace", turn.id[:8]], cli_env)
    assert short.stdout.count("\n") == traced.stdout.count("\n"), "a short id finds the same chain"
    missing = _cli(["trace", "no-such-correlation"], cli_env)
    assert missing.returncode == 1 and "no event with correlation id 'no-such-correlation'" in missing.stderr


async def test_a_delegation_that_no_agent_answers_times_out_with_a_clear_error(stack: Settings) -> None:
    session = f"nobody-{uuid.uuid4().hex[:8]}"
    turn, said = await _say(stack, "concierge", session, "ask sleepy", replies=1)
    assert said == ["concierge: Sorry, I did not get an answer from sleepy in time. Please try again later."]
    failed = await wait_for_event(stack, catalog.agent_topics("concierge").transitions,
                                  lambda e: e.correlationid == turn.id and "timed out" in e.data["reason"])
    assert re.match(r"delegation forecast timed out after 2s: no answer from sleepy to request ", failed.data["reason"])
    ignored = await wait_for_event(stack, catalog.agent_topics("sleepy").transitions,
                                   lambda e: e.correlationid == turn.id)
    assert "request forecast from concierge matched no trigger; not answered" in ignored.data["reason"]


async def test_fan_out_reaches_every_agent_with_the_capability(stack: Settings) -> None:
    _, said = await _say(stack, "concierge", f"all-{uuid.uuid4().hex[:8]}", "ask everyone", replies=1)
    assert said[0].startswith("concierge: 2 answers: ")
    assert "hello from oracle" in said[0] and "hello from concierge" in said[0]
    _, said = await _say(stack, "concierge", f"any-{uuid.uuid4().hex[:8]}", "ask anyone", replies=1)
    assert re.fullmatch(r"concierge: First answer: hello from (oracle|concierge)", said[0])


async def test_the_receptionist_transfers_and_the_next_turns_reach_the_new_agent(stack: Settings) -> None:
    session = f"desk-{uuid.uuid4().hex[:8]}"
    first, said = await _say(stack, "receptionist", session, "where is my order?", replies=2)
    assert said == ["receptionist: Let me put you through to customer service.",
                    "customer_service: Sure. What is your order number? It looks like AB1234."]
    second, said = await _say(stack, "receptionist", session, "AB1234", replies=1)
    assert re.fullmatch(r"customer_service: Order AB1234 .*", said[0]), said
    reply = await wait_for_event(stack, catalog.DIALOGUE_REPLIES, lambda e: e.correlationid == second.id)
    assert reply.data["in_reply_to"] == second.id, "the answer is to the user's own turn"
    moved = await wait_for_event(stack, catalog.agent_topics("receptionist").transitions,
                                 lambda e: e.correlationid == first.id and e.data["to_state"].startswith("transferred"))
    assert moved.data["to_state"] == "transferred to customer_service"


async def test_agents_list_shows_the_directory(stack: Settings, cli_env: dict[str, str]) -> None:
    await wait_for_event(stack, catalog.AGENT_DIRECTORY, lambda e: e.subject == "oracle")
    listed = _cli(["agents", "list"], cli_env)
    assert listed.returncode == 0, listed.stderr
    assert "receptionist  (front office)  inbox agent.receptionist.signals" in listed.stdout
    assert "capabilities: forecast, greeting" in listed.stdout
    cards = {card["agent"]: card for card in json.loads(_cli(["agents", "list", "--json"], cli_env).stdout)}
    assert {"receptionist", "customer_service", "helpdesk", "concierge", "oracle", "sleepy"} <= set(cards)
    assert cards["concierge"]["capabilities"] == ["greeting"]
    assert cards["receptionist"]["intents"] == ["greet", "orders", "it_help"]
