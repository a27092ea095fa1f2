"""FAQ retrieval over an agent's knowledge base with the same sentence embeddings as the intent model.

A knowledge base is the `knowledge:` file a policy names (entries with `id`, `questions`, `answer`). Each entry is
indexed by its questions (regexes, expanded like intent examples) and its answer text; a query scores an entry by
its best-matching row, and the top `k` entries come back with their answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.dialogue.model import Policy
from serving.errors import ServingError, UnknownAgentModelError
from serving.examples import expand_pattern
from serving.intents import Encoder


@dataclass(frozen=True)
class KnowledgeEntry:
    """One question/answer pair: `questions` are the sentences it is found by."""

    id: str
    questions: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class KnowledgeHit:
    """A retrieved entry and its cosine score."""

    id: str
    score: float
    answer: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "answer": self.answer}


def knowledge_entries(policy: Policy) -> list[KnowledgeEntry]:
    """The entries of the knowledge file the policy names (none when it names none).

    The policy loader has validated the file; this reads it again for the answers' text.
    """
    policy_file = Path(policy.file)
    try:
        top = yaml.safe_load(policy_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ServingError(f"cannot read {policy_file} for its knowledge base: {exc}") from None
    name = top.get("knowledge") if isinstance(top, dict) else None
    if not name:
        return []
    path = policy_file.parent / str(name)
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as exc:
        raise ServingError(f"cannot read knowledge file {path}: {exc}; run `switchboard policy check` on "
                           f"{policy_file}") from None
    entries = []
    for item in items:
        questions: list[str] = []
        for question in item.get("questions", []):
            questions.extend(expand_pattern(str(question)))
        entries.append(KnowledgeEntry(str(item["id"]), tuple(dict.fromkeys(questions)), str(item["answer"])))
    return entries


def knowledge_sets(policies: Sequence[Policy]) -> dict[str, list[dict[str, Any]]]:
    """Agent -> entries as plain data (for Ray replicas); agents without a knowledge base are left out."""
    found = {}
    for policy in policies:
        entries = knowledge_entries(policy)
        if entries:
            found[policy.agent] = [{"id": e.id, "questions": list(e.questions), "answer": e.answer} for e in entries]
    return found


@dataclass
class KnowledgeIndex:
    """One agent's knowledge base, embedded: rows are questions and answers, each owned by an entry."""

    entries: tuple[KnowledgeEntry, ...]
    rows: np.ndarray  # (rows, dim) unit vectors
    owners: np.ndarray  # (rows,) entry index

    @classmethod
    def build(cls, entries: Sequence[KnowledgeEntry], encoder: Encoder) -> KnowledgeIndex:
        texts = [text for entry in entries for text in (*entry.questions, entry.answer)]
        owners = np.array([i for i, entry in enumerate(entries) for _ in range(len(entry.questions) + 1)])
        return cls(tuple(entries), encoder.encode(texts), owners)

    def search(self, vectors: np.ndarray, k: int = 3) -> list[list[KnowledgeHit]]:
        """The best `k` entries for each row of `vectors`, best first."""
        if len(vectors) == 0:
            return []
        similarity = vectors @ self.rows.T
        per_entry = np.full((len(vectors), len(self.entries)), -1.0, dtype=np.float32)
        for index in range(len(self.entries)):
            per_entry[:, index] = similarity[:, self.owners == index].max(axis=1)
        order = np.argsort(-per_entry, axis=1)[:, :k]
        return [[KnowledgeHit(self.entries[i].id, round(float(per_entry[row, i]), 4), self.entries[i].answer)
                 for i in order[row]] for row in range(len(vectors))]


@dataclass
class KnowledgeService:
    """Every agent's knowledge index over one encoder: what the knowledge deployment runs."""

    encoder: Encoder
    indexes: dict[str, KnowledgeIndex] = field(default_factory=dict)

    @classmethod
    def build(cls, encoder: Encoder, knowledge: Mapping[str, Sequence[Mapping[str, Any]]]) -> KnowledgeService:
        indexes = {agent: KnowledgeIndex.build([KnowledgeEntry(str(e["id"]), tuple(e["questions"]), str(e["answer"]))
                                                for e in entries], encoder)
                   for agent, entries in knowledge.items() if entries}
        return cls(encoder, indexes)

    def search(self, queries: Sequence[tuple[str, str]], k: int = 3) -> list[list[KnowledgeHit]]:
        """Top-`k` hits for (agent, text) pairs, encoded as one batch."""
        for agent in {agent for agent, _ in queries}:
            if agent not in self.indexes:
                raise UnknownAgentModelError(
                    f"no knowledge base is served for agent {agent!r} (served: "
                    f"{', '.join(sorted(self.indexes)) or 'none'}); give its policy a `knowledge:` file and redeploy")
        vectors = self.encoder.encode([text for _, text in queries])
        return [self.indexes[agent].search(vectors[i:i + 1], k)[0] for i, (agent, _) in enumerate(queries)]
