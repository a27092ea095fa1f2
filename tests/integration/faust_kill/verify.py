"""Compare kr-in with kr-out: which input offsets never produced an output (lost), how many outputs repeat.

Records are counted, never inferred from end offsets (Tansu 0.6.0 reports wrong ends; docs: bus-facts).
usage: BS=host:port python verify.py N
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

INPUT, OUTPUT = "kr-in", "kr-out"
PARTITIONS = 4


@dataclass
class Verdict:
    inputs: int
    outputs: int
    lost: int
    duplicates: int
    lost_offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> input offsets never handled

    def summary(self) -> str:
        where = {p: f"{len(o)} ({o[0]}..{o[-1]})" for p, o in sorted(self.lost_offsets.items())}
        return (f"inputs {self.inputs}  outputs {self.outputs}  lost {self.lost} {where or ''}  "
                f"duplicates {self.duplicates}").replace("  {}", "")


async def _read(consumer: AIOKafkaConsumer, topic: str, done: Callable[[], bool],
                sink: Callable[[int, int, bytes], None], deadline: float, quiet_s: float) -> None:
    """Read `topic` from the beginning into `sink` until `done()` and then `quiet_s` without records, or deadline."""
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=200)
        for tp, records in batch.items():
            for record in records:
                sink(tp.partition, record.offset, record.value or b"")
        if batch:
            quiet_since = None
        elif done():
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return


async def verify(bootstrap: str, expected_inputs: int | Iterable[tuple[int, int]], *, timeout_s: float = 60.0,
                 quiet_s: float = 1.0) -> Verdict:
    """Read kr-in until `expected_inputs` (a count, or the exact (partition, offset) set) are there, then kr-out
    until each input has an output (or `timeout_s`), plus `quiet_s` of nothing new to count late duplicates."""
    deadline = time.monotonic() + timeout_s
    wanted = expected_inputs if isinstance(expected_inputs, int) else len(set(expected_inputs))
    inputs: set[tuple[int, int]] = set()
    handled: collections.Counter[tuple[int, int]] = collections.Counter()
    outputs = 0

    def add_input(partition: int, offset: int, _value: bytes) -> None:
        inputs.add((partition, offset))

    def add_output(_partition: int, _offset: int, value: bytes) -> None:
        nonlocal outputs
        outputs += 1
        where = value.decode().rsplit("|", 1)[1]
        partition, offset = where.split(":")
        handled[(int(partition), int(offset))] += 1

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await _read(consumer, INPUT, lambda: len(inputs) >= wanted, add_input, deadline, quiet_s=0.5)
        await _read(consumer, OUTPUT, lambda: all(handled[i] for i in inputs), add_output, deadline, quiet_s)
    finally:
        await consumer.stop()
    lost: dict[int, list[int]] = collections.defaultdict(list)
    for partition, offset in sorted(inputs):
        if not handled[(partition, offset)]:
            lost[partition].append(offset)
    duplicates = sum(n - 1 for n in handled.values() if n > 1)
    return Verdict(len(inputs), outputs, sum(map(len, lost.values())), duplicates, dict(lost))


if __name__ == "__main__":
    print(asyncio.run(verify(os.environ["BS"], int(sys.argv[1]))).summary())
