"""The kill test's Faust app: forwards every input to `kr-out`, counting per key in a Table.

Each output carries the worker id and the input's partition:offset, so `verify.py` can tell lost from duplicated.
Run by `scenario.py` as `python -m faust -A app worker` with this directory on PYTHONPATH. Environment:
  BS           bootstrap server host:port
  WID          worker id, written into each output
  FAUST_FIXES  "1" (default): Switchboard's `switchboard://` transport with `streams.faust_fixes` applied;
               "0": stock Faust 0.15.3 (the same transport settings, none of the fixes), to show what they fix
  READY_DIR    where the worker writes `<WID>.json` (its input partitions) after each completed rebalance
  KR_FETCH_MAX_WAIT_MS, KR_COMMIT_INTERVAL_S   the consumer's fetch wait (default 10) and commit interval (1.0)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import faust
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import faust_fixes, transport

WORKER = os.environ.get("WID", "?")
FIXES = os.environ.get("FAUST_FIXES", "1") == "1"
INPUT, OUTPUT = "kr-in", "kr-out"
# Switchboard's embedded default is 10 (Tansu does not wake a waiting fetch); see KR_FETCH_MAX_WAIT_MS below.
FETCH_MAX_WAIT_MS = int(os.environ.get("KR_FETCH_MAX_WAIT_MS", "10"))
COMMIT_INTERVAL_S = float(os.environ.get("KR_COMMIT_INTERVAL_S", "1.0"))


class UnfixedConsumer(faust_aiokafka.Consumer):
    """Stock Faust's consumer with Switchboard's fetch wait, so only the fixes differ between the two runs."""

    def _new_consumer_thread(self) -> transport.ConsumerThread:
        return transport.ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class UnfixedTransport(faust_aiokafka.Transport):
    Consumer = UnfixedConsumer


if FIXES:
    faust_fixes.apply()
    scheme = "switchboard"
else:
    drivers.TRANSPORTS.aliases["unfixed"] = f"{__name__}:UnfixedTransport"
    scheme = "unfixed"

app = faust.App(
    "kill-repro",
    broker=f"{scheme}://{os.environ.get('BS', '127.0.0.1:19092')}",
    store="memory://",
    web_enabled=False,
    autodiscover=False,
    topic_partitions=4,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    # As streams.app.create_app, with the embedded broker's timeouts (session shorter, to detect the kill sooner).
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=3.0,
    broker_commit_every=100,
    broker_commit_interval=COMMIT_INTERVAL_S,
)
app.fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # type: ignore[attr-defined]  # read by streams.transport
src = app.topic(INPUT, key_serializer="raw", value_serializer="raw", partitions=4)
dst = app.topic(OUTPUT, key_serializer="raw", value_serializer="raw", partitions=4)
counts = app.Table("kr-counts", default=int, partitions=4)


@app.agent(src)
async def forward(stream: Any) -> None:
    async for event in stream.events():
        counts[event.key.decode()] += 1
        where = f"{event.message.partition}:{event.message.offset}"
        await dst.send(key=event.key, value=event.value + f"|{WORKER}|{where}".encode())


async def _report_assignment(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
    ready_dir = os.environ.get("READY_DIR")
    if ready_dir:
        mine = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == INPUT)
        path = Path(ready_dir) / f"{WORKER}.json"
        path.with_suffix(".tmp").write_text(json.dumps({"partitions": mine, "fixes": faust_fixes.applied()}))
        path.with_suffix(".tmp").replace(path)


# mode's receiver type is narrower than the calls it makes (as streams.worker).
cast(Any, app.on_rebalance_complete).connect(_report_assignment)
