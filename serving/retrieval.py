"""The worker's side of the knowledge deployment: FAQ entries for a turn, batched, cached, timed out and falling
back to none, like intents (serving/client.py). A turn never waits longer than `serving.request_timeout_s` for them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agents.dialogue.model import Policy
from agents.dialogue.retrieval import KnowledgeMatch, Retrieval, Retriever
from infra.config import Settings
from serving.cache import LRUCache
from serving.client import BatchingClient, HandleFactory
from serving.errors import ServingError, UnknownAgentModelError

log = logging.getLogger(__name__)


class KnowledgeClient(BatchingClient[tuple[str, str, int], tuple[KnowledgeMatch, ...]]):
    """Calls the knowledge deployment's `search` for (agent, text, k) queries."""

    method = "search"
    what = "the served FAQ retrieval"
    fallback = "retrieving no FAQ entries"

    def __init__(self, settings: Settings, handle_factory: HandleFactory | None = None) -> None:
        super().__init__(settings, handle_factory, which="knowledge")

    def _answer(self, answer: Any) -> tuple[KnowledgeMatch, ...]:
        if isinstance(answer, dict):  # {"error": ...}: no knowledge base served for the agent
            raise UnknownAgentModelError(f"{answer.get('error')}; redeploy with `switchboard serve`")
        return tuple(KnowledgeMatch(str(hit["id"]), float(hit["score"]), str(hit["answer"])) for hit in answer)

    async def search(self, agent: str, text: str, k: int) -> tuple[KnowledgeMatch, ...]:
        return await self.call((agent, text, k))


class ServedRetriever:
    """One agent's FAQ retrieval through the knowledge deployment; no hits (and why, in `model`) when it cannot
    answer."""

    def __init__(self, policy: Policy, client: KnowledgeClient, k: int,
                 cache: LRUCache[tuple[KnowledgeMatch, ...]] | None = None) -> None:
        self.policy = policy
        self.client = client
        self.k = k
        self.cache: LRUCache[tuple[KnowledgeMatch, ...]] = cache if cache is not None else LRUCache(0)
        self.fallbacks = 0

    @property
    def model(self) -> str:
        return f"served:knowledge:{self.policy.agent}@{self.policy.version or 'unversioned'}"

    async def retrieve(self, text: str) -> Retrieval:
        key = (self.policy.agent, " ".join(text.split()).casefold())
        hits = self.cache.get(key)
        if hits is None:
            try:
                hits = await self.client.search(self.policy.agent, text, self.k)
            except ServingError as exc:
                self.fallbacks += 1
                return Retrieval(f"none (fallback: {exc})")
            self.cache.put(key, hits)
        return Retrieval(self.model, hits)


def served_retrievers(policies: Sequence[Policy], settings: Settings,
                      client: KnowledgeClient | None = None) -> dict[str, Retriever]:
    """A retriever for each policy with a knowledge base, sharing one client (one batch stream) and one cache."""
    from serving.knowledge import knowledge_entries

    shared = client or KnowledgeClient(settings)
    cache: LRUCache[tuple[KnowledgeMatch, ...]] = LRUCache(settings.serving.cache_size)
    return {policy.agent: ServedRetriever(policy, shared, settings.serving.knowledge_top_k, cache)
            for policy in policies if knowledge_entries(policy)}
