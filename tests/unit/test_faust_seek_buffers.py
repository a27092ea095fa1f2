"""FIX(i) of streams/faust_fixes.py: around the seek after a rebalance no record is thrown away unprocessed, taken
out of order, or committed past.

Each test is one of the ways the workflow kill test lost requests before the fix (docs/crash-safety.md): a buffer
emptied after the seek, read offsets set after the positions moved, a commit that started past the committed
offset. The consumer is the workers' consumer class (`ConsumerFixes` first in its bases) holding only the state
these methods touch; all of it runs in tests/integration/test_kill_workflow.py and test_faust_kill.py.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams import faust_fixes
from streams.transport import Consumer

A, B = TP("in", 0), TP("in", 1)


def _record(tp: TP, offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def _consumer(**state: Any) -> Any:
    """The workers' consumer class without Faust's service machinery: only the given state."""
    consumer: Any = Consumer.__new__(Consumer)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(IntervalTree)
    consumer._read_offset = defaultdict(lambda: None)
    consumer._refetching = {}
    consumer._unpositioned = set()
    consumer.in_transaction = False
    consumer._is_changelog_tp = lambda tp: False
    consumer.app = SimpleNamespace(topics=[], conf=SimpleNamespace(broker_request_timeout=5.0))
    for name, value in state.items():
        setattr(consumer, name, value)
    return consumer


async def test_resuming_a_running_flow_keeps_what_is_buffered() -> None:
    faust_fixes.apply()
    flow = FlowControlEvent()  # created suspended, as a worker's is
    queue: FlowControlQueue[Any] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()
    queue.put_nowait("fetched after the seek")
    flow.resume()  # recovery resumes again after its seek, with the flow already running
    assert queue.qsize() == 1
    flow.suspend()  # a rebalance: what is buffered now is fetched again after the next seek
    flow.resume()
    assert queue.qsize() == 0


async def test_the_seek_drops_only_the_sought_partitions_buffered_records() -> None:
    flow = FlowControlEvent()
    queue: FlowControlQueue[Any] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    for record in (_record(A, 7), _record(B, 3), _record(A, 8), _record(B, 4)):
        queue.put_nowait(record)
    consumer = _consumer()
    consumer.app.flow_control = flow
    consumer._purge_buffered({A})
    assert [(r.message.tp, r.message.offset) for r in queue._queue] == [(B, 3), (B, 4)]  # type: ignore[attr-defined]


async def test_read_offsets_are_set_before_the_positions_move() -> None:
    consumer = _consumer(_read_offset=defaultdict(lambda: None, {A: 15}))
    seen: dict[TP, int | None] = {}

    class AIOKafkaConsumer:
        def seek(self, tp: Any, offset: int) -> None:
            # From here on the fetcher returns records from `offset`: the read offset must already say so.
            seen[TP(tp.topic, tp.partition)] = consumer._read_offset[TP(tp.topic, tp.partition)]

        async def position(self, tp: Any) -> int:
            return 0

    class Thread:
        def _ensure_consumer(self) -> AIOKafkaConsumer:
            return AIOKafkaConsumer()

        async def call_thread(self, fun: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
            return await fun(*args)

    consumer._thread = Thread()
    await consumer.seek_wait({A: 3})
    assert seen == {A: 2}
    assert consumer._read_offset[A] == 2


def test_no_commit_past_offsets_never_acknowledged() -> None:
    consumer = _consumer()
    consumer._offsets_may_skip = lambda tp: False
    consumer._committed_offset[A] = 4
    consumer._acked[A] = list(range(5, 16))  # 4 was fetched and dropped, never processed (upstream committed 16)
    consumer._acked_index[A] = set(range(5, 16))
    assert consumer._new_offset(A) is None
    consumer._acked[A] = [4, *range(5, 16)]  # fetched again and processed
    consumer._acked_index[A] = set(range(4, 16))
    assert consumer._new_offset(A) == 16


def test_a_hole_left_after_the_refetch_is_committed_from_the_committed_offset() -> None:
    consumer = _consumer()
    consumer._offsets_may_skip = lambda tp: False
    consumer.log = SimpleNamespace(warning=lambda *a: None, info=lambda *a: None)
    consumer._committed_offset[A] = 3
    consumer._refetching[A] = (3, 5)  # fetched again once already, and 3..4 are still missing
    asyncio.run(consumer._add_gap(A, 3, 5))
    consumer._acked[A] = [5]
    consumer._acked_index[A] = {5}
    assert consumer._new_offset(A) == 6
