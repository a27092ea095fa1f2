"""Workflow benchmark: steps/s and end-to-end run latency of a 10-task DAG with many concurrent runs, beside the raw
bus on the same stack.

A throwaway embedded stack (SeaweedFS, Tansu on its S3, `--workers` Faust workers) runs `bench_ten`
(bench/agents/bench_flows: start -> (b, c) -> d -> (e, f, g) -> h -> i -> j, each task a small Python call, so the
engine and the bus are what is measured). `--concurrency` clients each start a run, wait for its final transition
on `workflow.transitions`, check its output and start the next, for `--seconds` after `--warmup-s`. Printed:
runs/s, task steps/s (10 per run), state changes/s (22 per run: the run's start and end and each task's running and
succeeded), run latency (request sent -> final transition read) p50/p90/p99/max, and the raw bus's round trip and
produce-to-consume throughput on the same stack (`bench.bus_throughput`'s aiokafka tuned figures). A run's
critical path is 7 task hops (start, b|c, d, e|f|g, h, i, j), each a command and a result through the bus: about
14 bus hops plus the request, so its latency is compared with 15 raw round trips.

    python -m bench.workflow_steps                          # 20 concurrent runs, 60 s measured (~3 min)
    python -m bench.workflow_steps --concurrency 50 --workers 2 --seconds 120 --json wf.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.workflows.processors import request_event
from bench.dialogue_turns import BusLimit, measure_bus
from bench.loads import BENCH_AGENTS, Spread, load_producer, run_stopping_on_sigterm
from infra.bus.reading import read_topic
from infra.config import Settings
from infra.testing import embedded_settings, running_stack
from topics import AvroCodec, DecodeError, catalog, decode_event, encode_event

WORKFLOW = "bench_ten"
TASKS = 10
STATE_CHANGES = 2 + 2 * TASKS
CRITICAL_HOPS = 15  # the request, then a command and a result for each of the 7 tasks on the longest path


def expected_result(a: int) -> int:
    start = a + 1
    d = start * 2 + start + 3
    return (3 * d + 6) * 2 - 1


@dataclass
class Figures:
    workers: int
    concurrency: int
    seconds: float
    runs: int
    failed: int
    wrong: int
    runs_per_s: float
    steps_per_s: float
    state_changes_per_s: float
    latency_ms: Spread
    bus: BusLimit

    def report(self) -> str:
        hops_ms = self.bus.round_trip_p50_ms * CRITICAL_HOPS
        return "\n".join([
            f"{WORKFLOW}: {self.concurrency} concurrent runs, {self.workers} workers, {self.seconds:.0f} s measured",
            f"  runs {self.runs} ({self.failed} failed, {self.wrong} with a wrong output)",
            f"  {self.runs_per_s:.2f} runs/s = {self.steps_per_s:.1f} task steps/s = "
            f"{self.state_changes_per_s:.1f} state changes/s",
            f"  run latency ms: p50 {self.latency_ms.p50:.0f}  p90 {self.latency_ms.p90:.0f}  "
            f"p99 {self.latency_ms.p99:.0f}  max {self.latency_ms.max:.0f}",
            f"  raw bus ({self.bus.source}): round trip p50 {self.bus.round_trip_p50_ms:.1f} ms, "
            f"p99 {self.bus.round_trip_p99_ms:.1f} ms; {self.bus.messages_per_s:.0f} msg/s produce-to-consume",
            f"  a run's critical path is {CRITICAL_HOPS} bus hops: {hops_ms:.0f} ms at the raw round trip "
            f"(run p50 is {self.latency_ms.p50 / hops_ms:.1f}x that)" if hops_ms > 0 else "",
        ])


class Finals:
    """Follows `workflow.transitions` and wakes the client waiting for a run's final transition."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[tuple[float, str, str]]] = {}

    async def follow(self, settings: Settings) -> None:
        codec = AvroCodec()
        async for record in read_topic(settings, catalog.WORKFLOW_TRANSITIONS.name, follow=True):
            try:
                event = decode_event(record.value, record.headers, codec)
            except DecodeError:
                continue
            data = event.data
            if data.get("task") is not None or data.get("to_state") not in ("succeeded", "failed", "cancelled"):
                continue
            future = self.waiting.get(str(data["run_id"]))
            if future is not None and not future.done():
                future.set_result((time.monotonic(), str(data["to_state"]), str(data.get("detail") or "{}")))


async def measure(args: argparse.Namespace, progress: Callable[[str], None] = print) -> Figures:
    with tempfile.TemporaryDirectory(prefix="switchboard-wfbench-") as tmp:
        settings = embedded_settings(Path(tmp), workers={"count": args.workers, "agent_dirs": [BENCH_AGENTS]})
        async with running_stack(settings=settings):
            progress(f"stack up with {args.workers} workers; measuring the raw bus first")
            bus = await measure_bus(settings, args.bus_messages, args.bus_samples)
            finals = Finals()
            following = asyncio.create_task(finals.follow(settings))
            producer = load_producer(settings)
            await producer.start()
            codec = AvroCodec()
            latencies: list[float] = []
            outcome = {"runs": 0, "failed": 0, "wrong": 0}
            start_at = time.monotonic() + args.warmup_s
            stop_at = start_at + args.seconds
            counter = iter(range(10**9))

            async def client() -> None:
                while time.monotonic() < stop_at:
                    a = next(counter)
                    run_id = str(uuid.uuid4())
                    event = request_event(run_id, WORKFLOW, {"a": a}, requester="bench", source="/bench/workflow")
                    record = encode_event(event, codec)
                    done = finals.waiting[run_id] = asyncio.get_running_loop().create_future()
                    sent = time.monotonic()
                    await producer.send_and_wait(catalog.WORKFLOW_REQUESTS.name, record.value, key=record.key,
                                                 headers=record.headers)
                    arrived, state, detail = await asyncio.wait_for(done, args.run_timeout_s)
                    del finals.waiting[run_id]
                    if sent < start_at or arrived > stop_at:
                        continue  # warm-up, or finished after the window: not counted
                    outcome["runs"] += 1
                    latencies.append((arrived - sent) * 1000)
                    if state != "succeeded":
                        outcome["failed"] += 1
                    elif json.loads(detail).get("output") != {"result": expected_result(a)}:
                        outcome["wrong"] += 1

            progress(f"{args.concurrency} clients, {args.warmup_s:g} s warm-up, then {args.seconds:g} s measured")
            try:
                await asyncio.gather(*(client() for _ in range(args.concurrency)))
            finally:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
                await producer.stop()
    runs = outcome["runs"]
    return Figures(args.workers, args.concurrency, args.seconds, runs, outcome["failed"], outcome["wrong"],
                   runs / args.seconds, runs * TASKS / args.seconds, runs * STATE_CHANGES / args.seconds,
                   Spread.of(latencies), bus)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.workflow_steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=20, help="runs in flight at once (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="Faust workers (default 2)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    parser.add_argument("--warmup-s", type=float, default=15.0, help="not measured, first (default 15)")
    parser.add_argument("--run-timeout-s", type=float, default=300.0, help="give up on a run after this")
    parser.add_argument("--bus-messages", type=int, default=5000, help="raw bus throughput messages (default 5000)")
    parser.add_argument("--bus-samples", type=int, default=100, help="raw bus round trips (default 100)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.workers < 1:
        parser.error("--concurrency and --workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = run_stopping_on_sigterm(measure(args, progress=lambda text: print(text, file=sys.stderr, flush=True)))
    print(figures.report())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(figures), indent=2))
    return 0 if figures.failed == 0 and figures.wrong == 0 and figures.runs > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
