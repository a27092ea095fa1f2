"""FAQ retrieval as part of understanding a turn: the best knowledge-base entries for its text, recorded in the
`understood` event (`knowledge`), so the policy's decision on them replays without a model.

The built-in (keyword) path retrieves nothing; the served path (serving/retrieval.py) asks the knowledge deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class KnowledgeMatch:
    """One retrieved entry: its id (the policy's dialogue is `faq_<id>`), cosine score and answer text."""

    id: str
    score: float
    answer: str


@dataclass(frozen=True)
class Retrieval:
    """What a retriever found for one text, best first; `model` names it, or says why nothing was retrieved
    (`none (fallback: ...)`)."""

    model: str
    hits: tuple[KnowledgeMatch, ...] = ()

    def as_data(self) -> dict[str, Any]:
        """The `knowledge` field of an `understood` event."""
        return {"model": self.model,
                "hits": [{"id": hit.id, "score": float(hit.score), "answer": hit.answer} for hit in self.hits]}


class Retriever(Protocol):
    """Finds an agent's knowledge-base entries for a text; never raises for a model that cannot answer (it returns
    no hits and says why in `model`)."""

    async def retrieve(self, text: str) -> Retrieval: ...
