"""What an intents application must answer, checked on the worker's side: Switchboard's own deployment and one the
user plugs in with `serving.intents_app` keep the same contract (docs/serving.md, "Your own intents deployment").

A request is `recognise(pairs)` with a list of (agent, text) pairs; the answer is a list with one dict per pair, in
order: `{"intent": str | None, "confidence": float in [0, 1]}`, optionally `alternatives` ([[intent, confidence],
...], best first), `similarity` (float) and `model` (a name for `understood.model`); or `{"error": str}` for a pair
it cannot answer. A wrong answer becomes a `DeploymentContractError` (the turn falls back), never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.answers import IntentPrediction
from serving.errors import DeploymentContractError

CONTRACT = ("`recognise(pairs)` must return a list with one dict per (agent, text) pair: {'intent': str or None, "
            "'confidence': number in [0, 1]} and optionally 'alternatives' ([[intent, confidence], ...]), "
            "'similarity', 'model'; or {'error': str} (docs/serving.md)")


def check_answers(answers: Any, pairs: int, app: str) -> list[Mapping[str, Any]]:
    """The answer list of a request of `pairs` turns, or a `DeploymentContractError` that says what is wrong."""
    if not isinstance(answers, list | tuple):
        raise DeploymentContractError(f"the intents application {app} answered a {type(answers).__name__}, not a "
                                      f"list; {CONTRACT}")
    if len(answers) != pairs:
        raise DeploymentContractError(f"the intents application {app} answered {len(answers)} of {pairs} turns; "
                                      f"{CONTRACT}")
    for index, answer in enumerate(answers):
        if not isinstance(answer, Mapping):
            raise DeploymentContractError(f"the intents application {app} answered turn {index + 1} with a "
                                          f"{type(answer).__name__}, not a dict; {CONTRACT}")
    return list(answers)


def prediction(answer: Mapping[str, Any], app: str, default_model: str) -> IntentPrediction:
    """One turn's answer as an `IntentPrediction` (optional fields filled in), or a `DeploymentContractError`."""
    try:
        intent = answer["intent"]
        confidence = float(answer["confidence"])
        if intent is not None and not isinstance(intent, str):
            raise TypeError(f"'intent' is a {type(intent).__name__}")
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"'confidence' {confidence} is outside [0, 1]")
        alternatives = tuple((str(name), float(score)) for name, score in answer.get("alternatives") or ())
        similarity = float(answer.get("similarity", confidence))
        model = str(answer.get("model") or default_model)
    except KeyError as exc:
        raise DeploymentContractError(f"the intents application {app} answered without {exc}: {dict(answer)!r:.200}"
                                      f"; {CONTRACT}") from None
    except (TypeError, ValueError) as exc:
        raise DeploymentContractError(f"the intents application {app} answered in the wrong shape ({exc}): "
                                      f"{dict(answer)!r:.200}; {CONTRACT}") from None
    return IntentPrediction(intent, confidence, alternatives, similarity, model)
