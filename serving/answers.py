"""What the served models answer, as plain dataclasses that travel between workers and replicas (no NumPy, no
torch: the worker side imports only these)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IntentPrediction:
    """The best intent of a text (None below the similarity threshold), its confidence, and the runners-up as
    (intent, confidence) pairs, best first. `similarity` is the best intent's raw cosine score."""

    intent: str | None
    confidence: float
    alternatives: tuple[tuple[str, float], ...]
    similarity: float
    model: str

    def as_dict(self) -> dict[str, Any]:
        return {"intent": self.intent, "confidence": self.confidence, "similarity": self.similarity,
                "alternatives": [list(pair) for pair in self.alternatives], "model": self.model}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntentPrediction:
        return cls(data["intent"], float(data["confidence"]), tuple((str(n), float(c)) for n, c in
                                                                   data["alternatives"]),
                   float(data["similarity"]), str(data["model"]))
