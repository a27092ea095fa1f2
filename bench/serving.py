"""Served intent model: turns/s and latency for unbatched FP32, batched FP32, batched INT8 and a warm cache, and
intent accuracy of FP32 vs INT8 on the labelled utterances (serving/data/labelled_utterances.yaml).

A local Ray (127.0.0.1, in this process) runs one variant of the intents deployment at a time. `--concurrency`
callers each recognise one turn at a time, one after another, until `--requests` turns are answered; latency runs
from the call to its answer. Rows:

- *unbatched FP32*: `max_batch_size` 1, one turn per request: no batching anywhere.
- *batched FP32 / INT8*: one turn per request straight to the deployment handle; only `@serve.batch` batches.
- *..., worker client*: through `IntentClient`, as a worker calls it: the turns of concurrent callers travel as one
  request (up to `max_batch_size`), and `@serve.batch` merges requests.
- *warm cache*: `ServedRecogniser` calls against the INT8 deployment once every labelled text was recognised
  (every call is a cache hit).
- *warm shared cache*: through a throwaway embedded stack (Tansu on SeaweedFS S3): one recogniser recognises every
  labelled text and publishes the answers on `serving.answers`; then a fresh recogniser (its own client, an LRU of
  size 0, its own mirror of the topic, loaded first) answers the load, every call a shared hit. Its per-level
  counts are printed under the table (`--no-shared-cache` skips this row and the stack).

Accuracy counts the deployment's answers to each labelled text; the keyword recogniser's accuracy on the same set
is printed for comparison.

    python -m bench.serving                              # 600 turns per variant, 32 callers
    python -m bench.serving --requests 2000 --concurrency 64 --threads 1 --json figures.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.loads import percentile, run_stopping_on_sigterm


@dataclass
class LoadFigures:
    variant: str
    requests: int
    concurrency: int
    per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None  # turns per model call inside the replica
    accuracy: float | None

    def row(self) -> str:
        batch = f"{self.mean_batch:.1f}" if self.mean_batch is not None else "-"
        accuracy = f"{self.accuracy:.1%}" if self.accuracy is not None else "-"
        return (f"| {self.variant} | {self.per_s:,.0f} | {self.p50_ms:.1f} | {self.p99_ms:.1f} | {batch} | "
                f"{accuracy} |")


async def _drive(call: Any, texts: Sequence[tuple[str, str]], requests: int, concurrency: int
                 ) -> tuple[float, list[float], dict[int, Any]]:
    """`concurrency` callers, each awaiting `call(pair)` in turn, until `requests` calls are done."""
    latencies: list[float] = []
    answers: dict[int, Any] = {}
    next_index = 0

    async def caller() -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            answer = await call(texts[index % len(texts)])
            latencies.append(time.perf_counter() - started)
            if index < len(texts):
                answers[index] = answer
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, answers


def _figures(variant: str, seconds: float, latencies: list[float], concurrency: int, mean_batch: float | None,
             accuracy: float | None) -> LoadFigures:
    ms = [value * 1000 for value in latencies]
    return LoadFigures(variant, len(latencies), concurrency, len(latencies) / seconds, percentile(ms, 50),
                       percentile(ms, 99), mean_batch, accuracy)


def _accuracy(answers: dict[int, Any], truth: Sequence[str]) -> float:
    return float(sum(answers[i]["intent"] == truth[i] for i in answers) / len(answers))


async def _measure_variant(variant: str, handle: Any, pairs: Sequence[tuple[str, str]], truth: Sequence[str],
                           args: argparse.Namespace, settings: Any = None) -> LoadFigures:
    """One deployment variant under load. Without `settings`: one turn per request, straight to the handle (only
    `@serve.batch` batches). With `settings`: through the worker's `IntentClient`, which sends the turns of
    concurrent callers as one request (up to `serving.max_batch_size`)."""
    from serving.client import IntentClient

    if settings is None:
        async def call(pair: tuple[str, str]) -> Any:
            return (await handle.recognise.remote([pair]))[0]
    else:
        client = IntentClient(settings, handle_factory=lambda: handle)

        async def call(pair: tuple[str, str]) -> Any:
            return (await client.recognise(*pair)).as_dict()

    await _drive(call, pairs, min(64, args.requests), args.concurrency)  # warm-up
    before = await handle.info.remote()
    seconds, latencies, answers = await _drive(call, pairs, args.requests, args.concurrency)
    after = await handle.info.remote()
    batches = after["batches"] - before["batches"]
    mean_batch = (after["items"] - before["items"]) / batches if batches else None
    return _figures(variant, seconds, latencies, args.concurrency, mean_batch, _accuracy(answers, truth))


async def _measure_cache(settings: Any, handle: Any, policies: Sequence[Any], pairs: Sequence[tuple[str, str]],
                         args: argparse.Namespace) -> tuple[LoadFigures, int]:
    """`ServedRecogniser` calls once every text is cached (the deployment behind it is only called to fill it)."""
    from serving.answers import IntentPrediction
    from serving.cache import LRUCache
    from serving.client import IntentClient
    from serving.recogniser import ServedRecogniser

    cache: LRUCache[IntentPrediction] = LRUCache(len(pairs))
    client = IntentClient(settings, handle_factory=lambda: handle)
    recognisers = {policy.agent: ServedRecogniser(policy, client, cache) for policy in policies}

    async def recognise(pair: tuple[str, str]) -> Any:
        return await recognisers[pair[0]].recognise(pair[1])

    await _drive(recognise, pairs, len(pairs), args.concurrency)  # fills the cache
    hits_before = cache.hits
    seconds, latencies, _ = await _drive(recognise, pairs, args.requests, args.concurrency)
    return (_figures("warm cache (INT8 behind it)", seconds, latencies, args.concurrency, None, None),
            cache.hits - hits_before)


async def _measure_shared_cache(settings: Any, handle: Any, policies: Sequence[Any],
                                pairs: Sequence[tuple[str, str]], args: argparse.Namespace) -> tuple[LoadFigures, Any]:
    """A fresh recogniser answered by the shared level alone (LRU off), its mirror loaded from a real broker."""
    from infra.testing import embedded_settings, running_stack
    from serving.cache import LRUCache
    from serving.client import IntentClient
    from serving.recogniser import ServedRecogniser
    from serving.shared_cache import SharedAnswerCache, level_stats

    with tempfile.TemporaryDirectory(prefix="switchboard-bench-shared-") as tmp:
        stack = embedded_settings(Path(tmp), workers={"count": 0})
        async with running_stack(settings=stack):
            bus = stack.model_copy(update={"serving": settings.serving})
            filler, mirror = SharedAnswerCache(bus, worker="bench-filler"), SharedAnswerCache(bus, worker="bench")
            try:
                await filler.start()
                client = IntentClient(bus, handle_factory=lambda: handle)
                filling = {p.agent: ServedRecogniser(p, client, LRUCache(len(pairs)), filler) for p in policies}

                async def fill(pair: tuple[str, str]) -> Any:
                    return await filling[pair[0]].recognise(pair[1])

                await _drive(fill, pairs, len(pairs), args.concurrency)
                await filler.flush()
                started = time.perf_counter()
                await mirror.start()
                await asyncio.wait_for(mirror.loaded.wait(), 120)
                print(f"shared cache: {filler.publishes} answers published ({filler.publish_failures} failed); a "
                      f"fresh mirror loaded {len(mirror.entries)} in {time.perf_counter() - started:.2f}s",
                      flush=True)
                fresh_client = IntentClient(bus, handle_factory=lambda: handle)
                await fresh_client.identify()
                fresh = {p.agent: ServedRecogniser(p, fresh_client, LRUCache(0), mirror) for p in policies}

                async def recognise(pair: tuple[str, str]) -> Any:
                    return await fresh[pair[0]].recognise(pair[1])

                seconds, latencies, _ = await _drive(recognise, pairs, args.requests, args.concurrency)
                stats = level_stats(next(iter(fresh.values())).cache, mirror)
                model_calls = fresh_client.turns
            finally:
                await filler.close()
                await mirror.close()
    figures = _figures("warm shared cache (LRU off, Tansu on S3)", seconds, latencies, args.concurrency, None,
                       None)
    return figures, {**asdict(stats), "model_turns": model_calls, "summary": str(stats)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from agents.dialogue.recognise import KeywordRecogniser
    from agents.registry import discover_agents
    from infra.config import load_settings
    from serving import cluster
    from serving.deployments import IntentDeployment, deployment_options, replica_config
    from serving.examples import training_sets
    from serving.quantization import labelled_utterances

    policies = [agent.policy for agent in discover_agents()]
    training = training_sets(policies)
    labelled = labelled_utterances()
    pairs = [(agent, text) for agent, _, text in labelled]
    truth = [intent for _, intent, _ in labelled]
    keyword = {policy.agent: KeywordRecogniser(policy) for policy in policies}
    keyword_accuracy = sum(keyword[a].recognise_now(t).intent == i for a, i, t in labelled) / len(labelled)
    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="switchboard-bench-serving-")),
                             serving={"enabled": True, "threads": args.threads, "max_batch_size": args.batch,
                                      "batch_wait_timeout_s": args.wait, "request_timeout_s": 30.0})
    results: list[LoadFigures] = []
    shared_stats: dict[str, Any] | None = None
    print(f"starting a local Ray; {len(labelled)} labelled utterances, {args.requests} requests per variant, "
          f"{args.concurrency} callers", flush=True)
    cluster.start_local_ray(settings)
    from ray import serve  # after Ray's token settings are in place

    try:
        serve.start(proxy_location="Disabled")
        for variant, precision, batch in (("unbatched FP32", "fp32", 1), ("batched FP32", "fp32", args.batch),
                                          ("batched INT8", "int8", args.batch)):
            serving = settings.serving.model_copy(update={"precision": precision, "max_batch_size": batch})
            name = f"bench-{precision}-{batch}"
            handle = serve.run(IntentDeployment.options(**deployment_options(serving)).bind(
                replica_config(serving), training), name=name, route_prefix=None)
            await handle.info.remote()
            results.append(await _measure_variant(variant, handle, pairs, truth, args))
            print(results[-1].row(), flush=True)
            if batch > 1:
                worker = settings.model_copy(update={"serving": serving})
                results.append(await _measure_variant(f"{variant}, worker client", handle, pairs, truth, args,
                                                      worker))
                print(results[-1].row(), flush=True)
            if precision == "int8":
                figures, hits = await _measure_cache(settings, handle, policies, pairs, args)
                results.append(figures)
                print(figures.row() + f"  cache hits {hits}/{args.requests}", flush=True)
                if args.shared_cache:
                    shared_figures, shared_stats = await _measure_shared_cache(settings, handle, policies, pairs,
                                                                               args)
                    results.append(shared_figures)
                    print(shared_figures.row() + f"  {shared_stats['summary']}; model turns "
                          f"{shared_stats['model_turns']}", flush=True)
            serve.delete(name)
    finally:
        serve.shutdown()
        cluster.shutdown(settings)
    by_name = {figures.variant: figures for figures in results}
    return {"figures": [asdict(f) for f in results], "keyword_accuracy": keyword_accuracy,
            "speedup_batched_int8_vs_unbatched_fp32": by_name["batched INT8"].per_s / by_name["unbatched FP32"].per_s,
            "speedup_worker_client_int8_vs_unbatched_fp32":
                by_name["batched INT8, worker client"].per_s / by_name["unbatched FP32"].per_s,
            "accuracy_fp32": by_name["batched FP32"].accuracy, "accuracy_int8": by_name["batched INT8"].accuracy,
            "shared_cache": shared_stats, "labelled": len(labelled), "threads": args.threads,
            "max_batch_size": args.batch, "batch_wait_timeout_s": args.wait}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="requests per variant (after a warm-up)")
    parser.add_argument("--concurrency", type=int, default=32, help="callers with a request in flight")
    parser.add_argument("--batch", type=int, default=32, help="max_batch_size of the batched variants")
    parser.add_argument("--wait", type=float, default=0.005, help="batch_wait_timeout_s of the batched variants")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per replica (default: all cores)")
    parser.add_argument("--no-shared-cache", dest="shared_cache", action="store_false",
                        help="skip the warm shared cache row (it starts a throwaway embedded stack)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    print("| variant | turns/s | p50 ms | p99 ms | turns per model call | intent accuracy |")
    print("|---|---|---|---|---|---|")
    report = run_stopping_on_sigterm(run(args))
    print(f"batched INT8 vs unbatched FP32: {report['speedup_batched_int8_vs_unbatched_fp32']:.1f}x turns/s with one "
          f"turn per request, {report['speedup_worker_client_int8_vs_unbatched_fp32']:.1f}x through the worker client")
    print(f"intent accuracy: FP32 {report['accuracy_fp32']:.1%}, INT8 {report['accuracy_int8']:.1%} "
          f"({(report['accuracy_int8'] - report['accuracy_fp32']) * 100:+.1f} points); keyword recogniser "
          f"{report['keyword_accuracy']:.1%} ({report['labelled']} labelled utterances)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
