"""The contract an intents application keeps (Switchboard's or the user's, `serving.intents_app`), checked on the
worker's side: optional fields filled in, and every wrong shape a `DeploymentContractError` that falls back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agents.registry import discover_agents
from infra.config import load_settings
from serving.cluster import intents_app_name, resolve_address
from serving.contract import check_answers, prediction
from serving.errors import DeploymentContractError, ServingUnavailableError
from serving.recogniser import served_recognisers


def test_the_minimal_answer_is_intent_and_confidence() -> None:
    answer = prediction({"intent": "printer", "confidence": 0.8}, "my-intents", "my-intents")
    assert (answer.intent, answer.confidence, answer.alternatives) == ("printer", 0.8, ())
    assert (answer.similarity, answer.model) == (0.8, "my-intents")
    full = prediction({"intent": None, "confidence": 0, "alternatives": [["a", 0.1]], "similarity": 0.2,
                       "model": "mine"}, "app", "app")
    assert (full.intent, full.alternatives, full.similarity, full.model) == (None, (("a", 0.1),), 0.2, "mine")


@pytest.mark.parametrize(("answer", "why"), [
    ({"confidence": 0.5}, "answered without 'intent'"),
    ({"intent": 3, "confidence": 0.5}, "'intent' is a int"),
    ({"intent": "a", "confidence": 1.5}, "outside [0, 1]"),
    ({"intent": "a", "confidence": "high"}, "wrong shape"),
    ({"intent": "a", "confidence": 1, "alternatives": [1, 2]}, "wrong shape"),
])
def test_a_wrong_answer_says_what_is_wrong(answer: dict[str, Any], why: str) -> None:
    with pytest.raises(DeploymentContractError, match="recognise\\(pairs\\)") as raised:
        prediction(answer, "my-intents", "my-intents")
    assert why in str(raised.value) and "my-intents" in str(raised.value)


@pytest.mark.parametrize(("answers", "why"), [
    ("printer", "answered a str, not a list"),
    ([{"intent": "a", "confidence": 1}], "answered 1 of 2 turns"),
    ([{"intent": "a", "confidence": 1}, ["b", 1]], "answered turn 2 with a list, not a dict"),
])
def test_a_wrong_answer_list_says_what_is_wrong(answers: Any, why: str) -> None:
    with pytest.raises(DeploymentContractError, match="one dict per"):
        check_answers(answers, 2, "app")
    with pytest.raises(DeploymentContractError) as raised:
        check_answers(answers, 2, "app")
    assert why in str(raised.value)


class ShapelessHandle:
    """A stand-in for a user's application that answers in the wrong shape (Ray itself: integration tests)."""

    def __init__(self) -> None:
        self.recognise = self

    def remote(self, pairs: Sequence[tuple[str, str]]) -> Any:
        async def answer() -> list[dict[str, Any]]:
            return [{"label": "printer"} for _ in pairs]
        return answer()


async def test_a_wrong_shape_falls_back_to_the_keyword_recogniser_and_says_why() -> None:
    from serving.client import IntentClient

    settings = load_settings(serving={"enabled": True, "intents_app": "my-intents", "retry_after_s": 30.0})
    policies = [agent.policy for agent in discover_agents()]
    client = IntentClient(settings, handle_factory=ShapelessHandle)
    recognisers = served_recognisers(policies, settings, client)
    first, second = await asyncio.gather(recognisers["helpdesk"].recognise("the printer on floor 2 is jammed"),
                                         recognisers["helpdesk"].recognise("I forgot my password"))
    assert (first.intent, second.intent) == ("printer", "password")
    assert first.model.startswith("keyword:helpdesk@")
    assert "(fallback: the intents application my-intents answered without 'intent'" in first.model
    later = await recognisers["helpdesk"].recognise("the printer on floor 2 is jammed")
    assert "next try in" in later.model, "the workers leave a broken application alone for retry_after_s"


def test_the_intents_application_and_the_cluster_token_come_from_the_settings(tmp_path: Path) -> None:
    assert intents_app_name(load_settings()) == "switchboard-intents"
    assert intents_app_name(load_settings(serving={"intents_app": "my-intents"})) == "my-intents"
    missing = load_settings(serving={"ray_address": "ray://head:10001", "ray_token_path": str(tmp_path / "nope")})
    with pytest.raises(ServingUnavailableError, match=r"serving\.ray_token_path .* is not a file"):
        resolve_address(missing)
