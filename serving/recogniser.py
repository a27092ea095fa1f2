"""`ServedRecogniser`: the dialogue stage's recogniser backed by the served intent model.

Intent and confidence come from the model (through an in-process LRU cache); entities still come from the policy's
patterns. When the model cannot answer (Ray down, not deployed, a timeout), the turn gets the keyword recogniser's
answer and its `model` says so: `keyword:helpdesk@3f2a... (fallback: <why>)`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agents.dialogue.model import Policy
from agents.dialogue.recognise import KeywordRecogniser, Recogniser, Understanding
from infra.config import Settings
from serving.answers import IntentPrediction
from serving.cache import LRUCache
from serving.client import IntentClient
from serving.errors import ServingError

log = logging.getLogger(__name__)
STATS_EVERY = 1000  # log the cache's hit rate every this many lookups


def cache_key(agent: str, text: str) -> tuple[str, str]:
    """Texts that differ only in case and spacing share an entry (MiniLM's tokenizer lowercases anyway)."""
    return agent, " ".join(text.split()).casefold()


class ServedRecogniser:
    """One agent's recogniser: the served model first, the keyword recogniser when it cannot answer."""

    def __init__(self, policy: Policy, client: IntentClient, cache: LRUCache[IntentPrediction] | None = None) -> None:
        self.policy = policy
        self.client = client
        self.cache: LRUCache[IntentPrediction] = cache if cache is not None else LRUCache(0)
        self.keyword = KeywordRecogniser(policy)
        self.fallbacks = 0

    @property
    def model(self) -> str:
        return f"served:{self.policy.agent}@{self.policy.version or 'unversioned'}"

    async def recognise(self, text: str, locale: str | None = None) -> Understanding:
        by_keyword = self.keyword.recognise_now(text)
        key = cache_key(self.policy.agent, text)
        prediction = self.cache.get(key)
        lookups = self.cache.hits + self.cache.misses
        if lookups % STATS_EVERY == 0:
            log.info("served recogniser: %s", self.cache.stats)
        if prediction is None:
            try:
                prediction = await self.client.recognise(self.policy.agent, text)
            except ServingError as exc:
                self.fallbacks += 1
                return Understanding(by_keyword.intent, by_keyword.confidence, by_keyword.entities,
                                     f"{by_keyword.model} (fallback: {exc})")
            self.cache.put(key, prediction)
        return Understanding(prediction.intent, prediction.confidence, by_keyword.entities,
                             f"served:{prediction.model}:{self.policy.agent}@{self.policy.version or 'unversioned'}")


def served_recognisers(policies: Sequence[Policy], settings: Settings,
                       client: IntentClient | None = None) -> dict[str, Recogniser]:
    """A served recogniser per policy, sharing one client (one batch stream) and one cache."""
    shared_client = client or IntentClient(settings)
    cache: LRUCache[IntentPrediction] = LRUCache(settings.serving.cache_size)
    return {policy.agent: ServedRecogniser(policy, shared_client, cache) for policy in policies}

