"""Run the kill scenario repeatedly, outside pytest, and print lost/duplicates per run.

usage: python tests/integration/faust_kill/loop.py [--runs 10] [--unfixed] [--n 1500] [--rate 200] [--kill-after 2]
       [--no-cython]   (NO_CYTHON=1 in the workers: Faust's pure-Python stream iterator, where fix (a) applies)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[3])]

from faust_kill.scenario import run_scenario  # noqa: E402


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--unfixed", action="store_true", help="stock Faust 0.15.3: streams.faust_fixes not applied")
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--kill-after", type=float, default=2.0)
    parser.add_argument("--no-cython", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="for the workers")
    parser.add_argument("--out", type=Path, default=None, help="where to keep the runs' logs (default: a temp dir)")
    args = parser.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="faust-kill-"))
    env = dict(item.split("=", 1) for item in args.env)
    if args.no_cython:
        env["NO_CYTHON"] = "1"
    runs = []
    for i in range(args.runs):
        outcome = await run_scenario(base / f"run{i:02d}", fixes=not args.unfixed, n=args.n, rate=args.rate,
                                     kill_after_s=args.kill_after, extra_env=env)
        print(f"run {i:2d}: {outcome.summary()}", flush=True)
        runs.append({"run": i, "fixes": outcome.fixes, "no_cython": args.no_cython, "inputs": outcome.verdict.inputs,
                     "outputs": outcome.verdict.outputs, "lost": outcome.verdict.lost,
                     "duplicates": outcome.verdict.duplicates, "lost_offsets": outcome.verdict.lost_offsets,
                     "killed_partitions": outcome.killed_partitions,
                     "survivor_partitions": outcome.survivor_partitions, "seconds": round(outcome.seconds, 1)})
    (base / "runs.json").write_text(json.dumps(runs, indent=1))
    lost_runs = sum(1 for r in runs if r["lost"])
    print(f"{len(runs)} runs, lost in {lost_runs}: lost {[r['lost'] for r in runs]}  "
          f"duplicates {[r['duplicates'] for r in runs]}  (logs: {base})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
