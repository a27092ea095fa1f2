"""The Ray Serve deployments: one per model, each batching its requests with `@serve.batch`.

- `intents`: intent recognition for every agent (`IntentService`); a request is a list of (agent, text) pairs,
  the answer one prediction dict per pair (or `{"error": ...}` for a pair it cannot answer).
- `knowledge`: FAQ retrieval over the agents' knowledge bases (`KnowledgeService`); a request is a list of
  (agent, text, k), the answer a list of hits per query.

A request may carry several turns (a worker sends what it has at once), and `@serve.batch` then combines the
requests of every caller that arrive within `batch_wait_timeout_s`, up to `max_batch_size` requests. Replicas get
their configuration and training data as plain values, so they need no policy files and no Switchboard settings.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from ray import serve

from serving.binding import bind_replica_grpc_to_node_ip
from serving.encoder import SentenceEncoder, set_threads
from serving.intents import IntentService
from serving.knowledge import KnowledgeService

bind_replica_grpc_to_node_ip()  # runs in each replica, which imports this module before it starts its server
INTENTS = "intents"
KNOWLEDGE = "knowledge"
F = TypeVar("F")


def _batched(method: F) -> F:
    """`@serve.batch` (its size and wait are set per replica from the configuration)."""
    return cast(F, serve.batch(method))


def _configure_batching(method: Any, config: Mapping[str, Any]) -> None:
    method.set_max_batch_size(int(config["max_batch_size"]))
    method.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))


class _Replica:
    """What both deployments share: the encoder, threads and batch statistics."""

    def _load(self, config: Mapping[str, Any]) -> SentenceEncoder:
        started = time.perf_counter()
        self.threads = set_threads(config.get("threads"))
        encoder = SentenceEncoder.load(config.get("model_path"), config.get("precision", "int8"))
        encoder.warm_up()
        self.load_s = time.perf_counter() - started
        self.batch_sizes: Counter[int] = Counter()
        self.config = dict(config)
        return encoder

    def _stats(self, model: str) -> dict[str, Any]:
        batches = sum(self.batch_sizes.values())
        items = sum(size * count for size, count in self.batch_sizes.items())
        return {"model": model, "threads": self.threads, "load_s": round(self.load_s, 2), "batches": batches,
                "items": items, "mean_batch": round(items / batches, 2) if batches else 0.0,
                "max_batch_size": self.config["max_batch_size"],
                "batch_wait_timeout_s": self.config["batch_wait_timeout_s"]}


class IntentReplica(_Replica):
    """Every agent's intent model behind one batched method, `recognise`."""

    def __init__(self, config: Mapping[str, Any], training: Mapping[str, Mapping[str, Any]]) -> None:
        encoder = self._load(config)
        self.service = IntentService.build(encoder, training, min_similarity=float(config["min_similarity"]))
        _configure_batching(self.recognise, config)

    @_batched
    async def recognise(self, requests: list[Sequence[tuple[str, str]]]) -> list[list[dict[str, Any]]]:
        """Each request: (agent, text) pairs; each answer: a prediction dict per pair, in order."""
        flat = [(str(agent), str(text)) for request in requests for agent, text in request]
        self.batch_sizes[len(flat)] += 1
        known = [index for index, (agent, _) in enumerate(flat) if agent in self.service.models]
        answers: list[dict[str, Any]] = [
            {"error": f"the served intent model was not trained for agent {agent!r}; redeploy with "
                      "`switchboard serve` after adding agents"} for agent, _ in flat]
        for index, prediction in zip(known, self.service.recognise([flat[i] for i in known]), strict=True):
            answers[index] = prediction.as_dict()
        results, start = [], 0
        for request in requests:
            results.append(answers[start:start + len(request)])
            start += len(request)
        return results

    async def info(self) -> dict[str, Any]:
        """The model, the agents and their policy versions, and batch statistics (for `switchboard serve`)."""
        return {**self._stats(self.service.encoder.model_id),
                "agents": {agent: model.version for agent, model in self.service.models.items()}}


class KnowledgeReplica(_Replica):
    """Every agent's knowledge index behind one batched method, `search`."""

    def __init__(self, config: Mapping[str, Any], knowledge: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        encoder = self._load(config)
        self.service = KnowledgeService.build(encoder, knowledge)
        _configure_batching(self.search, config)

    @_batched
    async def search(self, requests: list[Sequence[tuple[str, str, int]]]) -> list[list[Any]]:
        """Each request: (agent, text, k) queries; each answer: a list of hit dicts per query (or an error)."""
        flat = [(str(agent), str(text), int(k)) for request in requests for agent, text, k in request]
        self.batch_sizes[len(flat)] += 1
        known = [index for index, (agent, _, _) in enumerate(flat) if agent in self.service.indexes]
        answers: list[Any] = [{"error": f"no knowledge base is served for agent {agent!r}"} for agent, _, _ in flat]
        if known:
            k = max(flat[i][2] for i in known)
            hits = self.service.search([(flat[i][0], flat[i][1]) for i in known], k)
            for index, found in zip(known, hits, strict=True):
                answers[index] = [hit.as_dict() for hit in found[:flat[index][2]]]
        results, start = [], 0
        for request in requests:
            results.append(answers[start:start + len(request)])
            start += len(request)
        return results

    async def info(self) -> dict[str, Any]:
        return {**self._stats(self.service.encoder.model_id), "agents": sorted(self.service.indexes)}


IntentDeployment: Any = serve.deployment(name=INTENTS)(IntentReplica)
KnowledgeDeployment: Any = serve.deployment(name=KNOWLEDGE)(KnowledgeReplica)


def replica_config(serving: Any) -> dict[str, Any]:
    """The plain configuration replicas get, from `Settings.serving`."""
    return {"model_path": str(serving.model_path) if serving.model_path else None, "precision": serving.precision,
            "threads": serving.threads, "min_similarity": serving.min_similarity,
            "max_batch_size": serving.max_batch_size, "batch_wait_timeout_s": serving.batch_wait_timeout_s}


def deployment_options(serving: Any) -> dict[str, Any]:
    """Ray Serve options of each deployment, from `Settings.serving`."""
    return {"num_replicas": serving.replicas, "max_ongoing_requests": serving.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": serving.replica_cpus}}


def intents_app(serving: Any, training: Mapping[str, Mapping[str, Any]]) -> Any:
    """The bound intents deployment (a Ray Serve application)."""
    return IntentDeployment.options(**deployment_options(serving)).bind(replica_config(serving), dict(training))


def knowledge_app(serving: Any, knowledge: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """The bound knowledge deployment."""
    return KnowledgeDeployment.options(**deployment_options(serving)).bind(replica_config(serving), dict(knowledge))
