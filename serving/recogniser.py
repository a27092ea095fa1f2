"""`ServedRecogniser`: the dialogue stage's recogniser backed by the served intent model.

Intent and confidence come from the model, through two cache levels: an in-process LRU, then the shared level
(`serving.shared_cache`: every worker's answers, mirrored from a compacted topic); entities still come from the
policy's patterns. When the model cannot answer (Ray down, not deployed, a timeout), the turn gets the keyword
recogniser's answer and its `model` says so: `keyword:helpdesk@3f2a... (fallback: <why>)`.
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
from serving.shared_cache import AnswerKey, LevelStats, SharedAnswerCache, level_stats

log = logging.getLogger(__name__)
STATS_EVERY = 1000  # log the cache's hit rates every this many lookups


def cache_key(agent: str, text: str) -> tuple[str, str]:
    """Texts that differ only in case and spacing share an entry (MiniLM's tokenizer lowercases anyway)."""
    return agent, " ".join(text.split()).casefold()


def answer_key(model: str | None, policy: Policy, text: str) -> AnswerKey:
    """The key of both cache levels: the model that answers (name@precision; "" while unknown, which nothing is
    stored under), the agent, its policy version and the normalised text."""
    agent, normalised = cache_key(policy.agent, text)
    return AnswerKey(model or "", agent, policy.version or "unversioned", normalised)


class ServedRecogniser:
    """One agent's recogniser: the served model first, the keyword recogniser when it cannot answer."""

    def __init__(self, policy: Policy, client: IntentClient, cache: LRUCache[IntentPrediction] | None = None,
                 shared: SharedAnswerCache | None = None) -> None:
        self.policy = policy
        self.client = client
        self.cache: LRUCache[IntentPrediction] = cache if cache is not None else LRUCache(0)
        self.shared = shared
        self.keyword = KeywordRecogniser(policy)
        self.fallbacks = 0

    @property
    def stats(self) -> LevelStats:
        """Hits per level of the caches this recogniser uses (shared with the worker's other recognisers)."""
        return level_stats(self.cache, self.shared)

    @property
    def model(self) -> str:
        return f"served:{self.policy.agent}@{self.policy.version or 'unversioned'}"

    async def recognise(self, text: str, locale: str | None = None) -> Understanding:
        by_keyword = self.keyword.recognise_now(text)
        key = answer_key(self.client.model, self.policy, text)
        prediction = self.cache.get(key)
        if prediction is None and self.shared is not None:
            prediction = self.shared.get(key)
            if prediction is not None:
                self.cache.put(key, prediction)
        lookups = self.cache.hits + self.cache.misses
        if lookups % STATS_EVERY == 0:
            log.info("served recogniser: %s", self.stats)
        if prediction is None:
            try:
                prediction = await self.client.recognise(self.policy.agent, text)
            except ServingError as exc:
                self.fallbacks += 1
                return Understanding(by_keyword.intent, by_keyword.confidence, by_keyword.entities,
                                     f"{by_keyword.model} (fallback: {exc})")
            key = answer_key(prediction.model, self.policy, text)  # the model that answered, known now
            self.cache.put(key, prediction)
            if self.shared is not None:
                self.shared.publish(key, prediction)
        return Understanding(prediction.intent, prediction.confidence, by_keyword.entities,
                             f"served:{prediction.model}:{self.policy.agent}@{self.policy.version or 'unversioned'}")


def served_recognisers(policies: Sequence[Policy], settings: Settings, client: IntentClient | None = None,
                       shared: SharedAnswerCache | None = None) -> dict[str, Recogniser]:
    """A served recogniser per policy, sharing one client (one batch stream), one LRU cache and the shared level
    (`shared`, or a new one when `serving.shared_cache` is on; the caller starts and closes it)."""
    shared_client = client or IntentClient(settings)
    cache: LRUCache[IntentPrediction] = LRUCache(settings.serving.cache_size)
    if shared is None and settings.serving.shared_cache:
        shared = SharedAnswerCache(settings, worker=settings.kafka.client_id)
    return {policy.agent: ServedRecogniser(policy, shared_client, cache, shared) for policy in policies}
