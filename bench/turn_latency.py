"""Rule-only turn latency: dialogue turns to the echo agent at a fixed rate through the embedded stack, no kills.

A turn's latency runs from just before this process sends it until this process has consumed its reply (both
`time.monotonic()` here). Each latency is split in three with the records' own timestamps (wall clock, same
machine): *in* = turn sent -> the worker's reply produced (the turn's produce ack, the worker's fetch wait and its
step), *out* = reply produced -> reply consumed here (the reply's produce ack and this reader's fetch wait); the
worker's share of *in* is what the stream shell does per turn.

    python -m bench.turn_latency                      # 500 turns/s for 20 s, 2 workers
    python -m bench.turn_latency --rate 100 --seconds 30 --workers 1
    python -m bench.turn_latency --storage memory     # the same workers on a bare Tansu with a memory:// log
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.dialogue_turns import dialogue_stack
from bench.loads import DialogueLoad, Observer, Producer, percentile, run_stopping_on_sigterm, until

WARMUP_S = 3.0


@dataclass
class LatencyReport:
    storage: str
    rate: float
    seconds: float
    workers: int
    sent: int
    answered: int
    achieved_per_s: float       # replies per second over the measured window
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    in_p50_ms: float            # turn sent -> reply produced (worker side)
    in_p99_ms: float
    out_p50_ms: float           # reply produced -> reply consumed here
    out_p99_ms: float

    def summary(self) -> str:
        bus = "Tansu on SeaweedFS S3" if self.storage == "s3" else "bare Tansu, memory:// log"
        return (f"{self.rate:.0f} turns/s offered for {self.seconds:.0f}s, {self.workers} workers, {bus}: "
                f"{self.answered}/{self.sent} answered, {self.achieved_per_s:.0f} replies/s\n"
                f"  latency p50 {self.p50_ms:.0f} ms  p90 {self.p90_ms:.0f} ms  p99 {self.p99_ms:.0f} ms  "
                f"max {self.max_ms:.0f} ms\n"
                f"  turn sent -> reply produced: p50 {self.in_p50_ms:.0f} ms  p99 {self.in_p99_ms:.0f} ms;  "
                f"reply produced -> consumed: p50 {self.out_p50_ms:.0f} ms  p99 {self.out_p99_ms:.0f} ms")


async def run(args: argparse.Namespace) -> LatencyReport:
    async with dialogue_stack(args.storage, args.workers, "switchboard-latency-") as settings:
        load = DialogueLoad(prefix="latency")
        observer = Observer(settings, load)
        producer = Producer(settings, load, args.rate)
        stop = asyncio.Event()
        watching = asyncio.create_task(observer.run())
        producing = asyncio.create_task(producer.run(stop))
        await asyncio.sleep(WARMUP_S)  # first fetches, first joins of the reader: not measured
        window_start = time.monotonic()
        await asyncio.sleep(args.seconds)
        window_end = time.monotonic()
        stop.set()
        await producing
        measured = [s for s in load.sent.values() if window_start <= s.sent_at < window_end]
        await until(lambda: all(s.id in observer.first for s in measured), args.drain_timeout_s)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    latencies, inbound, outbound = [], [], []
    for sent in measured:
        if sent.id not in observer.first:
            continue
        latencies.append(1000 * (observer.first[sent.id] - sent.sent_at))
        effect = observer.effects[sent.id][0]
        inbound.append(float(effect.produced_ms - sent.produced_ms))
        outbound.append(latencies[-1] - inbound[-1])
    answered_times = [observer.first[s.id] for s in measured if s.id in observer.first]
    span = (max(answered_times) - window_start) if answered_times else float("nan")
    return LatencyReport(
        storage=args.storage, rate=args.rate, seconds=args.seconds, workers=args.workers, sent=len(measured),
        answered=len(latencies),
        achieved_per_s=len(latencies) / span if answered_times else 0.0,
        p50_ms=percentile(latencies, 50), p90_ms=percentile(latencies, 90), p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=float("nan")),
        in_p50_ms=percentile(inbound, 50), in_p99_ms=percentile(inbound, 99),
        out_p50_ms=percentile(outbound, 50), out_p99_ms=percentile(outbound, 99),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="turns offered per second (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="Faust workers (default 2)")
    parser.add_argument("--drain-timeout-s", type=float, default=120.0,
                        help="how long to wait for the replies of the measured turns")
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3",
                        help="the bus: s3 = the embedded stack (Tansu on SeaweedFS, the default), memory = a bare "
                             "Tansu with a memory:// log (the broker without storage costs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_stopping_on_sigterm(run(args))
    print(report.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return 0 if report.answered == report.sent else 1


if __name__ == "__main__":
    sys.exit(main())
