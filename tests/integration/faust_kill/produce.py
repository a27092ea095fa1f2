"""Send N keyed messages to kr-in at RATE per second, one at a time (acks=all); return where each one went.

usage: BS=host:port python produce.py N RATE
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from aiokafka import AIOKafkaProducer

INPUT = "kr-in"


async def produce(bootstrap: str, n: int, rate: float, topic: str = INPUT) -> set[tuple[int, int]]:
    """Send m0..m{n-1} (keys k0..k15) paced at `rate`/s; the (partition, offset) of each acknowledged send."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent: set[tuple[int, int]] = set()
    start = time.monotonic()
    try:
        for i in range(n):
            meta = await producer.send_and_wait(topic, key=f"k{i % 16}".encode(), value=f"m{i}".encode())
            sent.add((meta.partition, meta.offset))
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await producer.stop()
    return sent


if __name__ == "__main__":
    acked = asyncio.run(produce(os.environ["BS"], int(sys.argv[1]), float(sys.argv[2])))
    print(f"sent {len(acked)}")
