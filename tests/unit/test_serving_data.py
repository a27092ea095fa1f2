"""What the intent model learns from, and what it is measured on: expanded policy examples and the labelled set.

No model needed: regexes expand to the sentences they stand for, every intent of the shipped agents gets training
sentences, and the labelled utterances are many, labelled with real intents, and held apart from training.
"""

from __future__ import annotations

import re

import pytest

from agents.registry import discover_agents
from serving.examples import expand_pattern, intent_examples, training_sets
from serving.quantization import LABELLED, labelled_utterances

AGENTS = {agent.name: agent.policy for agent in discover_agents()}


@pytest.mark.parametrize(("pattern", "expected"), [
    ("where is my (order|package)", {"where is my order", "where is my package"}),
    ("ok(ay)?", {"ok", "okay"}),
    ("never ?mind", {"nevermind", "never mind"}),
    ("(can.?t|cannot) log ?in", {"can't log in", "cant log in", "can't login", "cant login", "cannot log in",
                                 "cannot login"}),
    ("(order|parcel).*(arrive|ship)", {"order arrive", "order ship", "parcel arrive", "parcel ship"}),
    ("PRN-\\d{3}", {"PRN-111"}),
    ("(?<![A-Za-z0-9_])(?:talk to (a )?human)(?![A-Za-z0-9_])", {"talk to human", "talk to a human"}),
])
def test_patterns_expand_to_the_sentences_they_match(pattern: str, expected: set[str]) -> None:
    found = expand_pattern(pattern)
    assert set(found) == expected
    for sentence in found:
        assert re.search(pattern, sentence), sentence


def test_expansions_are_capped_and_spread() -> None:
    pattern = "(a|b|c|d|e|f) (g|h|i|j|k|l) (m|n|o|p|q|r)"
    found = expand_pattern(pattern, limit=10)
    assert len(found) == 10
    assert len({sentence[0] for sentence in found}) > 1, "not only the first alternatives"


def test_a_broken_pattern_expands_to_nothing() -> None:
    assert expand_pattern("(unclosed") == []


@pytest.mark.parametrize("agent", ["customer_service", "helpdesk"])
def test_every_intent_of_the_shipped_agents_has_training_sentences(agent: str) -> None:
    policy = AGENTS[agent]
    examples = intent_examples(policy)
    assert set(examples) == {intent.name for intent in policy.intents}
    assert all(examples.values())
    data = training_sets([policy])[agent]
    assert data["version"] == policy.version and data["intents"] == examples
    # The greeting is a pattern-triggered dialogue: learned as a class of its own, never returned as an intent.
    assert [name for name in data["patterns"] if name.startswith("pattern:")] == list(data["patterns"])
    assert any("hello" in sentences for sentences in data["patterns"].values())


def test_the_labelled_set_is_large_labelled_with_real_intents_and_held_apart() -> None:
    labelled = labelled_utterances(LABELLED)
    assert len(labelled) >= 200
    assert {agent for agent, _, _ in labelled} == {"customer_service", "helpdesk", "smart_office", "receptionist"}
    for agent, intent, text in labelled:
        assert intent in {i.name for i in AGENTS[agent].intents}, (agent, intent)
        assert text.strip() == text and text
    training = {agent: {s.casefold() for sentences in intent_examples(policy).values() for s in sentences}
                for agent, policy in AGENTS.items()}
    leaked = [(agent, text) for agent, _, text in labelled if text.casefold() in training[agent]]
    assert not leaked, f"labelled utterances that are training sentences: {leaked}"
    texts = [(agent, text.casefold()) for agent, _, text in labelled]
    assert len(texts) == len(set(texts)), "no duplicates"
    for agent, policy in AGENTS.items():
        covered = {intent for a, intent, _ in labelled if a == agent}
        assert covered == {i.name for i in policy.intents}, f"{agent}: every intent is measured"
