"""Chaos benchmark: kill a random worker again and again under load, and count what that costs.

A throwaway embedded stack (SeaweedFS, Tansu on its S3, `--workers` Faust workers, free ports) takes a steady load
(`--rate` events/s). Each cycle SIGKILLs one worker at random; the stack's supervisor starts it again (with
`--restart-delay-s`, the benchmark does, after that delay, and the supervisor is off); the cycle then waits until
every event sent more than `--late-ms` ago has its effect again, then measures `--steady-s` more seconds of normal
running. One more cycle SIGKILLs the broker, which comes back on its S3 log. Then the load stops and every
acknowledged event must get its effect.

Per cycle and in total it prints: events in, lost (acknowledged, never answered), duplicate effects (two distinct
effect ids for one cause: applied twice), redelivered duplicates (the same effect id again, dropped by readers),
state errors (the echo agent's per-session turn numbers skip or repeat), time from the kill to caught up (the
arrival of the last effect, before the next cycle began, that came more than `--late-ms` after its cause) and the
effect throughput while catching up and after; in total also how many worker kills caught up within 10 s, the
target.

    python -m bench.chaos                                  # 20 worker kills + 1 broker restart, 200 turns/s
    python -m bench.chaos --cycles 2 --rate 100            # a quick look (a couple of minutes)
    python -m bench.chaos --workers 3 --json chaos.json

`--load dialogue` (turns to the echo agent, replies back) or `--load workflow` (runs of a four-task workflow,
bench/agents/bench_flows, each answered by its final transition; `--rate` is then runs/s, and each run is ten
state changes and four task hops).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bench.loads import DialogueLoad, Load, Observer, Producer, WorkflowLoad, run_stopping_on_sigterm, until
from infra.config import Settings
from infra.embedded import EmbeddedStack
from infra.embedded.components import plan
from infra.testing import embedded_settings

LOADS: dict[str, Callable[[], Load]] = {"dialogue": DialogueLoad, "workflow": WorkflowLoad}
TARGET_CATCH_UP_S = 10.0  # the recovery target: a killed worker's backlog answered within 10 s of the kill


@dataclass
class CycleFigures:
    cycle: int
    killed: str
    killed_at: float            # monotonic
    ended_at: float = 0.0       # monotonic
    restart_s: float = 0.0      # from the kill until the restarted process answered its readiness check
    events_in: int = 0
    lost: int = 0
    duplicate_effects: int = 0
    redelivered: int = 0
    late: int = 0               # effects that came more than --late-ms after their cause
    caught_up_s: float | None = None   # None: not caught up within the cycle timeout
    during_per_s: float | None = None  # effects per second between the kill and caught up
    after_per_s: float | None = None   # effects per second after caught up, until the next cycle

    def line(self) -> str:
        caught = "NOT caught up" if self.caught_up_s is None else f"caught up {self.caught_up_s:5.1f}s"
        during = "-" if self.during_per_s is None else f"{self.during_per_s:.0f}/s"
        after = "-" if self.after_per_s is None else f"{self.after_per_s:.0f}/s"
        return (f"cycle {self.cycle:>2} kill {self.killed:<9} restarted {self.restart_s:4.1f}s  {caught}  "
                f"in {self.events_in:>5}  lost {self.lost}  dup effects {self.duplicate_effects}  "
                f"redelivered {self.redelivered:>4}  late {self.late:>5}  during {during:>6}  after {after:>6}")


@dataclass
class Report:
    load: str
    workers: int
    rate: float
    late_ms: float
    cycles: list[CycleFigures] = field(default_factory=list)
    events_in: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicate_effects: int = 0
    redelivered: int = 0
    failed_send_attempts: int = 0
    state_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        kills = [c for c in self.cycles if c.killed != "tansu"]
        caught = [c.caught_up_s for c in kills if c.caught_up_s is not None]
        lines = [
            f"{self.load} load at {self.rate:.0f}/s, {self.workers} workers, {len(kills)} worker kills"
            f"{' + 1 broker restart' if len(kills) < len(self.cycles) else ''}, {self.seconds:.0f}s in all",
            f"  events in {self.events_in}, acknowledged {self.acknowledged} "
            f"({self.failed_send_attempts} send attempts failed and were retried)",
            f"  lost {self.lost}, duplicate effects {self.duplicate_effects}, redelivered duplicates dropped by id "
            f"{self.redelivered}, state errors {len(self.state_errors)}",
        ]
        if caught:
            lines.append(f"  worker kill -> caught up: median {statistics.median(caught):.1f}s, "
                         f"max {max(caught):.1f}s, mean {statistics.fmean(caught):.1f}s "
                         f"({len(kills) - len(caught)} cycles not caught up); within {TARGET_CATCH_UP_S:.0f}s "
                         f"(the target): {sum(1 for s in caught if s <= TARGET_CATCH_UP_S)} of {len(kills)}")
        lines.extend(f"  state: {error}" for error in self.state_errors[:10])
        return "\n".join(lines)


async def _kill(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)
    await asyncio.to_thread(psutil.Process(pid).wait, 10)


def _figures(cycle: CycleFigures, load: Load, observer: Observer, late_s: float) -> None:
    """Fill in what the cycle's window [killed_at, ended_at) shows."""
    start, end = cycle.killed_at, cycle.ended_at
    sent = [s for s in load.sent.values() if start <= s.sent_at < end]
    cycle.events_in = len(sent)
    cycle.lost = sum(1 for s in sent if s.acked_at is not None and s.id not in observer.first)
    # Only answers that arrived inside the window: an event sent just before the next kill and answered late
    # because of it is that kill's to catch up (it counts there), not this one's.
    late_at = [observer.first[s.id] for s in load.sent.values()
               if s.id in observer.first and s.sent_at < end and start <= observer.first[s.id] < end
               and observer.first[s.id] - s.sent_at > late_s]
    cycle.late = len(late_at)
    caught_at = max(late_at, default=start)
    cycle.caught_up_s = caught_at - start if cycle.caught_up_s is not None else None
    answered = sorted(t for t in observer.first.values() if start <= t < end)
    if caught_at > start:
        cycle.during_per_s = sum(1 for t in answered if t <= caught_at) / (caught_at - start)
    if end - caught_at > 0.5:
        cycle.after_per_s = sum(1 for t in answered if t > caught_at) / (end - caught_at)
    for effects in observer.effects.values():
        ids: set[str] = set()
        for effect in effects:
            if start <= effect.arrived_at < end:
                if effect.id in ids:
                    cycle.redelivered += 1
                elif ids:
                    cycle.duplicate_effects += 1
            ids.add(effect.id)


async def _restarted(stack: EmbeddedStack, name: str, dead_pid: int, timeout_s: float) -> None:
    """Until the supervisor's restart of `name` runs and answers its readiness check."""
    component = next(c for c in plan(stack.settings) if c.name == name)

    async def answering() -> bool:
        record = next((r for r in stack.records() if r.name == name), None)
        if record is None or record.pid == dead_pid or not record.alive:
            return False
        try:
            await component.ready()
            return True
        except Exception:  # still starting: each check raises its client's own error meanwhile
            return False

    deadline = time.monotonic() + timeout_s
    while not await answering():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the supervisor did not start {name} again within {timeout_s:.0f}s")
        await asyncio.sleep(0.05)


async def _cycle(number: int, name: str, stack: EmbeddedStack, observer: Observer, args: argparse.Namespace,
                 progress: Callable[[str], None]) -> CycleFigures:
    record = next(r for r in stack.records() if r.name == name)
    cycle = CycleFigures(number, name, time.monotonic())  # timed from the signal, not from the process's reaping
    await _kill(record.pid)
    if stack.settings.embedded.supervise:
        await _restarted(stack, name, record.pid, args.cycle_timeout_s)
    else:
        if args.restart_delay_s:
            await asyncio.sleep(args.restart_delay_s)
        await stack.up()
    cycle.restart_s = time.monotonic() - cycle.killed_at
    late_s = args.late_ms / 1000
    caught = await until(lambda: observer.unanswered(time.monotonic() - late_s) == 0, args.cycle_timeout_s)
    cycle.caught_up_s = 0.0 if caught else None
    await asyncio.sleep(args.steady_s)  # running normally again: the "after" throughput
    cycle.ended_at = time.monotonic()
    progress(f"cycle {number}: killed {name}, {'caught up' if caught else 'NOT caught up'}")
    return cycle


async def run(args: argparse.Namespace, progress: Callable[[str], None] = print) -> Report:
    load = LOADS[args.load]()
    rng = random.Random(args.seed)
    report = Report(args.load, args.workers, args.rate, args.late_ms)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="switchboard-chaos-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        settings: Settings = embedded_settings(data_dir, workers={"count": args.workers, **load.workers},
                                               embedded={"supervise": not args.restart_delay_s})
        stack = EmbeddedStack(settings)
        try:
            progress(f"starting the embedded stack with {args.workers} workers (data in {data_dir})")
            await stack.up()
            observer = Observer(settings, load)
            producer = Producer(settings, load, args.rate)
            stop = asyncio.Event()
            watching = asyncio.create_task(observer.run())
            producing = asyncio.create_task(producer.run(stop))
            try:
                # Warm-up: the load flows and is answered on time before the first kill.
                late_s = args.late_ms / 1000
                await until(lambda: len(observer.first) > 0, 60)
                await asyncio.sleep(args.steady_s)
                if not await until(lambda: observer.unanswered(time.monotonic() - late_s) == 0, 60):
                    progress("warning: the load is not answered on time even before the first kill")
                workers = [f"worker-{i}" for i in range(args.workers)]
                names = [rng.choice(workers) for _ in range(args.cycles)]
                if args.broker_restart:
                    names.append("tansu")
                for number, name in enumerate(names, 1):
                    report.cycles.append(await _cycle(number, name, stack, observer, args, progress))
            finally:
                stop.set()
                await producing
            # Every acknowledged event must be answered; wait for the stragglers, then for redeliveries to land.
            acked = [s.id for s in load.sent.values() if s.acked_at is not None]
            await until(lambda: all(i in observer.first for i in acked), args.cycle_timeout_s)
            await asyncio.sleep(2.0)
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        finally:
            stack.down()
    late_s = args.late_ms / 1000
    for cycle in report.cycles:
        _figures(cycle, load, observer, late_s)
    report.events_in = len(load.sent)
    report.acknowledged = sum(1 for s in load.sent.values() if s.acked_at is not None)
    report.lost = sum(1 for s in load.sent.values() if s.acked_at is not None and s.id not in observer.first)
    report.duplicate_effects, report.redelivered = observer.duplicates()
    report.failed_send_attempts = load.failed_attempts
    report.state_errors = load.state_errors(observer.effects)
    report.seconds = time.monotonic() - started
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=sorted(LOADS), default="dialogue", help="what flows (default dialogue)")
    parser.add_argument("--cycles", type=int, default=20, help="worker kills (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="Faust workers sharing the load (default 2)")
    parser.add_argument("--rate", type=float, default=200.0, help="events offered per second (default 200)")
    parser.add_argument("--no-broker-restart", dest="broker_restart", action="store_false",
                        help="skip the broker SIGKILL + restart cycle at the end")
    parser.add_argument("--late-ms", type=float, default=1000.0,
                        help="an effect later than this after its cause counts as late (default 1000)")
    parser.add_argument("--steady-s", type=float, default=5.0,
                        help="normal running measured after each catch-up (default 5)")
    parser.add_argument("--restart-delay-s", type=float, default=0.0,
                        help="restart a killed process from the benchmark, after this long, with the stack's "
                             "supervisor off (default 0: the supervisor restarts it at once)")
    parser.add_argument("--cycle-timeout-s", type=float, default=120.0, help="give up catching up after this")
    parser.add_argument("--seed", type=int, default=None, help="seed for the choice of victims")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the stack's data and logs here (default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one is killed while another carries on)")
    if args.data_dir is not None and args.data_dir.is_dir() and any(args.data_dir.iterdir()):
        # Seen: a reused directory gave "state errors" (the sessions' turn numbers went on from an earlier run) and
        # slower catch-up (on Tansu a fetch lists every batch of the partitions the earlier run grew).
        parser.error(f"--data-dir {args.data_dir} is not empty: the figures count every event and each session's "
                     "turns from an empty bus, and a bus left by an earlier run makes them wrong; remove it or "
                     "name a new directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_stopping_on_sigterm(run(args, progress=lambda text: print(text, file=sys.stderr, flush=True)))
    for cycle in report.cycles:
        print(cycle.line())
    print(report.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    ok = report.lost == 0 and report.duplicate_effects == 0 and not report.state_errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
