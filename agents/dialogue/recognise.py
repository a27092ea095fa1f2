"""Intent recognition as its own stage: a turn in, an `understood` event (intent, confidence, entities, model) out.

Policies consume `understood` events, never raw text through a model, so replaying a conversation needs no model and
gives the same answers even after the model changes. The interface is async because the real recogniser is a model
served elsewhere (Ray Serve); the built-in one is deterministic regular expressions from the policy's `intents` and
`entities` sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agents.dialogue.model import Policy


@dataclass(frozen=True)
class EntityMatch:
    """One entity found in a text, with its character span."""

    name: str
    value: str
    start: int
    end: int


@dataclass(frozen=True)
class Understanding:
    """What a recogniser made of one text."""

    intent: str | None
    confidence: float
    entities: tuple[EntityMatch, ...]
    model: str


class Recogniser(Protocol):
    """Turns text into an `Understanding`; `model` names the model and its version, recorded in every event."""

    @property
    def model(self) -> str: ...

    async def recognise(self, text: str, locale: str | None = None) -> Understanding: ...


class KeywordRecogniser:
    """The deterministic recogniser built from a policy: the intent whose example matches the most text wins.

    Ties go to the intent declared first. The confidence is the intent's declared confidence (0.9 unless set):
    a regex match says nothing finer. Entities: every match of every entity pattern, the first group's text if the
    pattern has a group.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.model = f"keyword:{policy.agent}@{policy.version or 'unversioned'}"

    def recognise_now(self, text: str) -> Understanding:
        """The synchronous core of `recognise` (for tests, stories and replay tools)."""
        best: tuple[int, int, str, float] | None = None  # (matched length, -declaration index, name, confidence)
        for index, intent in enumerate(self.policy.intents):
            for example in intent.examples:
                match = example.search(text)
                if match is None:
                    continue
                candidate = (match.end() - match.start(), -index, intent.name, intent.confidence)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
        entities: list[EntityMatch] = []
        for entity in self.policy.entities:
            for match in entity.pattern.finditer(text):
                group = 1 if entity.pattern.groups else 0
                if match.group(group) is None:
                    continue
                entities.append(EntityMatch(entity.name, match.group(group), match.start(group), match.end(group)))
        entities.sort(key=lambda e: (e.start, e.name))
        if best is None:
            return Understanding(None, 0.0, tuple(entities), self.model)
        return Understanding(best[2], best[3], tuple(entities), self.model)

    async def recognise(self, text: str, locale: str | None = None) -> Understanding:
        return self.recognise_now(text)
