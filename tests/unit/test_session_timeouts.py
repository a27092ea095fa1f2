"""Idle sessions end without a further turn: the dialogue agent's sweep says which are due, as inbox signals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.dialogue import core
from agents.dialogue.errors import DialogueError
from agents.dialogue.processor import DialogueAgent
from agents.registry import AGENTS_DIR, agent_roots, deployment_agents, discover_agents
from infra.config import load_settings
from topics import catalog
from topics.event import Event
from topics.processor import Sweeping

TEST_AGENTS = Path(__file__).resolve().parents[1] / "agents"
SLEEPY = next(agent for agent in discover_agents(TEST_AGENTS) if agent.name == "sleepy")
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _turn(processor: DialogueAgent, session: str, text: str, at: datetime) -> Event:
    return Event(type=core.UNDERSTOOD, source="/test", subject=session, time=at, data={
        "session_id": session, "agent": processor.policy.agent, "turn_id": f"turn-{at.timestamp()}", "text": text,
        "channel": "test", "locale": None, "intent": None, "confidence": 0.0, "entities": [], "model": "test"})


def test_a_session_falls_due_after_its_policy_timeout_and_only_once() -> None:
    agent = DialogueAgent(SLEEPY.policy)
    assert isinstance(agent, Sweeping)
    state, _ = agent.step(agent.initial("s"), _turn(agent, "s", "hi", START))
    assert core.idle_deadline(state, agent.policy) == START + timedelta(seconds=2)

    assert agent.sweep("s", state, START + timedelta(seconds=1.9)) == ()
    (due,) = agent.sweep("s", state, START + timedelta(seconds=2))
    again = agent.sweep("s", state, START + timedelta(seconds=7))
    assert due.topic == catalog.agent_topics("sleepy").signals
    assert [e.event.id for e in again] == [due.event.id], "one id per idle period: re-sweeps are duplicates"

    closed, emits = agent.step(state, due.event)
    texts = [e.event.data["text"] for e in emits if e.topic == catalog.DIALOGUE_REPLIES]
    assert texts == ["I closed this conversation (greeted: yes)."]
    assert all(e.event.data["in_reply_to"] == state["last_turn"] for e in emits if e.topic == catalog.DIALOGUE_REPLIES)
    assert closed["status"] == core.ENDED
    assert core.idle_deadline(closed, agent.policy) is None
    assert agent.sweep("s", closed, START + timedelta(hours=1)) == ()
    # A late copy of the signal changes nothing.
    assert agent.step(closed, again[0].event) == (closed, [])


def test_a_timeout_that_arrives_after_the_user_spoke_again_is_ignored() -> None:
    agent = DialogueAgent(SLEEPY.policy)
    state, _ = agent.step(agent.initial("s"), _turn(agent, "s", "hi", START))
    (due,) = agent.sweep("s", state, START + timedelta(seconds=3))
    state, _ = agent.step(state, _turn(agent, "s", "hello", START + timedelta(seconds=2.5)))
    after, emits = agent.step(state, due.event)
    assert emits == [] and after["status"] == core.ACTIVE


def test_parked_and_fresh_sessions_never_fall_due() -> None:
    agent = DialogueAgent(SLEEPY.policy)
    assert core.idle_deadline(None, agent.policy) is None
    assert core.idle_deadline(agent.initial("s"), agent.policy) is None
    state, _ = agent.step(agent.initial("s"), _turn(agent, "s", "hi", START))
    assert core.idle_deadline({**state, "status": core.PARKED}, agent.policy) is None


def test_extra_agent_folders_come_from_settings_and_clash_clearly() -> None:
    settings = load_settings(workers={"agent_dirs": [str(TEST_AGENTS)]})
    assert agent_roots(settings) == (AGENTS_DIR, TEST_AGENTS)
    assert "sleepy" in {agent.name for agent in deployment_agents(settings)}
    assert "sleepy" not in {agent.name for agent in deployment_agents()}
    with pytest.raises(DialogueError, match="declared twice"):
        discover_agents(TEST_AGENTS, TEST_AGENTS)


def test_a_missing_agent_folder_is_a_settings_error_naming_the_key() -> None:
    with pytest.raises(Exception, match=r"workers\.agent_dirs .*not a folder: /no/such/folder"):
        load_settings(workers={"agent_dirs": ["/no/such/folder"]})
