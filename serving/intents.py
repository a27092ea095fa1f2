"""Intent recognition over sentence embeddings: one prototype model per agent, learned from its policy's examples.

Each intent keeps the embeddings of its example sentences and their centroid (the prototype). A text scores, per
intent, a mix of its cosine similarity to the centroid and to the nearest example (`NEAREST_WEIGHT`): the centroid
generalises, the nearest example keeps intents whose examples differ a lot (`human`, `representative`,
`talk to a person`) from being averaged away. The confidence is a softmax over the intents' scores with a low
temperature; below `min_similarity` the text has no intent (what the keyword recogniser says when nothing matches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serving.answers import IntentPrediction
from serving.errors import ServingError, UnknownAgentModelError
from serving.examples import PATTERN_CLASS

#: Weight of the nearest example against the centroid in an intent's score.
NEAREST_WEIGHT = 0.5
#: Softmax temperature over cosine scores: a lead of 0.1 in cosine is a factor e^2.5 ~ 12 in odds.
TEMPERATURE = 0.04
#: Below this cosine score the best intent is not taken (intent None).
MIN_SIMILARITY = 0.35
#: Ranked alternatives returned with each prediction.
ALTERNATIVES = 3


class Encoder(Protocol):
    """What the models need of an encoder (`serving.encoder.SentenceEncoder`, or a stand-in in tests)."""

    @property
    def model_id(self) -> str: ...

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    shifted = (scores - scores.max(axis=1, keepdims=True)) / temperature
    weights = np.exp(shifted)
    result: np.ndarray = weights / weights.sum(axis=1, keepdims=True)
    return result


@dataclass
class IntentModel:
    """One agent's intents: centroids and example embeddings, from `fit`."""

    intents: tuple[str, ...]  # classes: intents, then `pattern:<dialogue>` classes
    centroids: np.ndarray  # (intents, dim), unit rows
    examples: np.ndarray  # (examples, dim), unit rows
    owners: np.ndarray  # (examples,) index of each example's intent
    model: str
    min_similarity: float = MIN_SIMILARITY
    nearest_weight: float = NEAREST_WEIGHT
    temperature: float = TEMPERATURE
    version: str = ""

    @classmethod
    def fit(cls, examples: Mapping[str, Sequence[str]], encoder: Encoder, *, version: str = "",
            min_similarity: float = MIN_SIMILARITY, nearest_weight: float = NEAREST_WEIGHT,
            temperature: float = TEMPERATURE) -> IntentModel:
        """Learn prototypes from intent -> example sentences (one encoder pass over every example)."""
        names = tuple(name for name, sentences in examples.items() if sentences)
        if not names:
            raise ServingError("no intent has example sentences to learn from; give the policy's intents examples")
        sentences = [s for name in names for s in examples[name]]
        owners = np.array([i for i, name in enumerate(names) for _ in examples[name]])
        vectors = encoder.encode(sentences)
        centroids = np.stack([vectors[owners == i].mean(axis=0) for i in range(len(names))])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-9)
        return cls(names, centroids.astype(np.float32), vectors, owners, encoder.model_id, min_similarity,
                   nearest_weight, temperature, version)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(texts, intents) scores of unit `vectors`."""
        to_centroid = vectors @ self.centroids.T
        to_examples = vectors @ self.examples.T
        nearest = np.full((len(vectors), len(self.intents)), -1.0, dtype=np.float32)
        for index in range(len(self.intents)):
            nearest[:, index] = to_examples[:, self.owners == index].max(axis=1)
        mixed: np.ndarray = (1 - self.nearest_weight) * to_centroid + self.nearest_weight * nearest
        return mixed

    def predict(self, vectors: np.ndarray) -> list[IntentPrediction]:
        """A prediction per row of `vectors` (unit sentence embeddings from the same encoder)."""
        if len(vectors) == 0:
            return []
        scores = self.scores(vectors)
        confidences = _softmax(scores, self.temperature)
        order = np.argsort(-scores, axis=1)
        predictions = []
        for row in range(len(vectors)):
            best = int(order[row, 0])
            best_score = float(scores[row, best])
            ranked = [(self.intents[i], round(float(confidences[row, i]), 4)) for i in order[row]
                      if not self.intents[i].startswith(PATTERN_CLASS)][:ALTERNATIVES + 1]
            if best_score < self.min_similarity or self.intents[best].startswith(PATTERN_CLASS):
                # Nothing close enough, or closest to a pattern-triggered dialogue: no intent (the policy decides).
                predictions.append(IntentPrediction(None, 0.0, tuple(ranked), round(best_score, 4), self.model))
            else:
                predictions.append(IntentPrediction(ranked[0][0], ranked[0][1], tuple(ranked[1:]),
                                                    round(best_score, 4), self.model))
        return predictions


@dataclass
class IntentService:
    """Every agent's intent model over one encoder: what the Ray Serve deployment (and the benchmark) runs."""

    encoder: Encoder
    models: dict[str, IntentModel] = field(default_factory=dict)

    @classmethod
    def build(cls, encoder: Encoder, training: Mapping[str, Mapping[str, Any]], *,
              min_similarity: float = MIN_SIMILARITY) -> IntentService:
        """`training`: agent -> {"version", "intents": intent -> sentences} (`serving.examples.training_sets`)."""
        models = {agent: IntentModel.fit({**data["intents"], **data.get("patterns", {})}, encoder,
                                         version=str(data.get("version", "")), min_similarity=min_similarity)
                  for agent, data in training.items() if data.get("intents")}
        return cls(encoder, models)

    def model_for(self, agent: str) -> IntentModel:
        model = self.models.get(agent)
        if model is None:
            raise UnknownAgentModelError(
                f"the served intent model was not trained for agent {agent!r} (it knows: "
                f"{', '.join(sorted(self.models)) or 'none'}); redeploy with `switchboard serve` after adding agents")
        return model

    def recognise(self, queries: Sequence[tuple[str, str]]) -> list[IntentPrediction]:
        """Predictions for (agent, text) pairs, encoded as one batch."""
        for agent in {agent for agent, _ in queries}:
            self.model_for(agent)
        vectors = self.encoder.encode([text for _, text in queries])
        results: list[IntentPrediction | None] = [None] * len(queries)
        by_agent: dict[str, list[int]] = {}
        for index, (agent, _) in enumerate(queries):
            by_agent.setdefault(agent, []).append(index)
        for agent, indices in by_agent.items():
            for index, prediction in zip(indices, self.models[agent].predict(vectors[indices]), strict=True):
                results[index] = prediction
        return [r for r in results if r is not None]
