"""Fixes for faust-streaming 0.15.3: input messages are lost when a worker dies while a Table is in use.

Written against Faust's internals, so `apply()` refuses any other version. Each fix is small and written so it can
be proposed upstream; `tests/integration/test_faust_kill.py` is the regression test (two workers, one killed with
SIGKILL under load, every input must produce an output).

How the messages are lost (traced with logs of every fetched batch, delivered offset, read offset and seek):

1. During a rebalance every partition is paused; records fetched for a paused partition are dropped by
   `Consumer.getmany()` although the fetch position has moved past them, and so are the messages the streams skip
   while flow control is inactive. Faust relies on `perform_seek()` (seek to the committed offset) to read them
   again. With a Table it runs twice: inside recovery and again in `Recovery.on_recovery_completed()`; in
   between, recovery resumes the flow, so stream messages are already being delivered when the second seek comes.
2. The second `perform_seek()` resets the read offset while `_drain_messages()` awaits the delivery of a message;
   when that await returns, `_drain_messages()` stores the message's offset as the read offset and overwrites the
   reset. The records fetched again from the committed offset are then dropped as "already read"
   (`DROPPED MESSAGE ROFF`): on the dead worker's partitions and on the survivor's own.
3. When the read offset does move back, the rest of the batch fetched before the seek shows a jump in offsets, and
   `Consumer._add_gap()` marks the missing range as committable (that logic exists for compacted topics and
   transaction markers), so the commit moves past messages that were never processed.
4. The pure-Python stream iterator acknowledges a message it skips while flow control is inactive, so its offset
   counts as processed. (The Cython iterator, used by default where the extension is built, does not.)
5. `perform_seek()` does not move a partition with no committed offset (aiokafka seeks only to committed offsets
   > 0), so what step 1 dropped there is never read again: a worker killed before its first commit loses all it
   had read, and so may the survivor on a partition it has not committed yet.

The fixes, one per place:

a. `Stream._py_aiter()`: a message skipped because flow control is inactive (or it belongs to an older consumer
   generation) is not acknowledged.                     -> `apply()` (no process-wide hook but a monkeypatch)
a'. `Stream._c_aiter()`, `Stream._py_aiter()` and `Consumer._drain_messages()` hold no reference to the last
   message while they wait for the next one. With two agents on one topic, a rebalance can clear one agent's copy
   of a message the other already handled; it is never acknowledged (rightly), and only garbage collection takes it
   out of the consumer's weak unacked set. Upstream keeps it referenced while partitions are paused, so
   `Consumer.wait_empty()` held the rebalance until the group threw the member out.  -> `apply()`, `ConsumerFixes`
b. `Consumer._drain_messages()`: the read offset advances only if no seek reset it while the delivery was awaited
   (the read offset is compared before and after the await).                          -> `ConsumerFixes`
c. `Consumer._add_gap()`: a jump in offsets on a plain topic (not compacted, no transactions) is not committable;
   the consumer seeks back to the first missing offset and fetches it again.              -> `ConsumerFixes`
d. `Consumer.perform_seek()`: a stream partition with no committed offset is sought to its beginning (under
   auto_offset_reset "earliest"), its committed position, instead of being left where it is. -> `ConsumerFixes`
e. `Stream._c_aiter()`, `Stream._py_aiter()`: a message is acknowledged when the agent asks for the next one, not
   when the iterator is closed while the agent still handles it. An agent that raises, or is cancelled (the worker
   stops) half-way, used to acknowledge its input from the iterator's `finally`: the next commit, which Faust also
   makes on the way down, moved past an input whose effects were never all sent. Now the input stays uncommitted
   and comes again after the restart or rebalance.                                          -> `apply()`

g. `Recovery._wait()`: a recovery step that takes longer than `broker_request_timeout` starts the recovery again.
   Upstream reads the timeout as "the service was stopped" and ends its recovery loop: the worker stays in the group
   with its partitions paused and never consumes again (seen on CI: object storage died, the changelog's end search
   outlasted the timeout, and 172 acknowledged turns were never answered).                    -> `apply()`

h. `Consumer._commit()`: a commit waits until the table changelog records sent before it are acknowledged (and
   sends a refused one again); Faust's pre-commit flush gives up after 0.1 s and the commit moved past inputs whose
   state was never written.                               -> `streams.changelog_acks`, `ConsumerFixes`, `apply()`

i. The seek after a rebalance, and the stream buffers. Faust resumes the flow before it seeks the stream partitions
   to their committed offsets (recovery needs the flow for the changelogs), so records arrive around the seek:
   - `Consumer.perform_seek()` asked for the committed offsets one partition at a time (aiokafka's
     `seek_to_committed()`, 1.4 s for a worker's 40 partitions on Tansu) and moved each position as its offset came,
     but set the read offsets only at the end. Records fetched from the new positions were delivered meanwhile, and
     the late read offsets made them look unread (refetched), or made the refetch look already read (dropped as
     "DROPPED MESSAGE ROFF", never processed);
   - records fetched from a partition's position before its first seek after the assignment were delivered as if
     in order (no read offset yet, so no gap check), and the seek then fetched the skipped ones again behind them:
     an input applied after a later one of its subject is skipped as already applied;
   - `FlowControlEvent.resume()` empties every stream buffer, and recovery calls it again after the seek, when
     the flow is already running: records delivered since the seek, not yet taken by an agent, were thrown away
     and never fetched again (the tests saw workflow runs never started, their requests' offsets never committed
     while their partition sat idle);
   - `Consumer._new_offset()` committed the first run of consecutive acknowledged offsets wherever it started, so
     the commit moved past unprocessed offsets in front of it (its check lets one offset through, and none when
     nothing was committed yet).
   Fixed: the committed offsets come in one request; the read offsets are set, and the records of the sought
   partitions still waiting in stream buffers are dropped, before the positions move; a record of a partition that
   has not been sought since its assignment is not delivered (the seek fetches it again); `resume()` empties the
   buffers only when the flow was suspended; a commit starts at the committed offset or waits.
                                                                                    -> `ConsumerFixes`, `apply()`

(b), (c) and (i) need the read offset to mean one thing: after a seek to N it is now N - 1, the last offset read, as
after a delivery (Faust stored N there), set before the position moves.

`ConsumerFixes` is a mixin for a Faust consumer class (Switchboard's `switchboard://` transport uses it, see
`streams.transport`); `apply()` patches the stream iterator and checks the Faust version, and is idempotent.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import faust
from aiokafka.errors import IllegalStateError
from faust import streams as faust_streams
from faust.exceptions import Skip
from faust.streams import Stream, _current_event
from faust.tables.recovery import RebalanceAgain, Recovery, ServiceStopped
from faust.transport import consumer as faust_consumer
from faust.transport.drivers.aiokafka import ensure_aiokafka_TP
from faust.types import TP, ChannelT, EventT, Message
from mode import Service, ServiceT, shortlabel
from mode.utils.futures import maybe_async
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams import changelog_acks

FAUST_VERSION = "0.15.3"


class FaustVersionError(RuntimeError):
    """The installed faust-streaming is not the version these fixes were written against."""


def check_version(version: str | None = None) -> None:
    """Raise `FaustVersionError` unless faust-streaming is the version the fixes patch."""
    found = faust.__version__ if version is None else version
    if found != FAUST_VERSION:
        raise FaustVersionError(
            f"streams.faust_fixes patches faust-streaming {FAUST_VERSION} internals, but {found} is installed: "
            f"pin faust-streaming=={FAUST_VERSION}, or port the fixes to {found} (and run "
            "tests/integration/test_faust_kill.py) before changing FAUST_VERSION"
        )


def apply() -> None:
    """Check the Faust version and install fix (a) on `faust.Stream`; the consumer fixes live in `ConsumerFixes`.

    Idempotent. A monkeypatch because the only other hook, the `Stream` setting, is per app, and this must hold for
    every stream of every app in the process.
    """
    check_version()
    if Stream.__dict__.get("_py_aiter") is not _py_aiter:
        Stream._py_aiter = _py_aiter  # type: ignore[method-assign]
    if Stream.__dict__.get("_c_aiter") is not _c_aiter:
        Stream._c_aiter = _c_aiter  # type: ignore[method-assign]
    if Recovery.__dict__.get("_wait") is not _recovery_wait:
        Recovery._wait = _recovery_wait  # type: ignore[method-assign]
    if FlowControlEvent.__dict__.get("resume") is not _flow_resume:
        FlowControlEvent.resume = _flow_resume  # type: ignore[method-assign]
    changelog_acks.install()


def applied() -> bool:
    """True when `apply()` has run in this process."""
    return Stream.__dict__.get("_py_aiter") is _py_aiter


# --- (i) ----------------------------------------------------------------------------------------------------------
def _flow_resume(self: FlowControlEvent) -> None:
    """`FlowControlEvent.resume`, emptying the managed buffers only when the flow was suspended (FIX(i)).

    Emptying them drops what was buffered under the suspended flow, which the seek after the rebalance fetches
    again. Recovery calls this again after that seek, with the flow running: what it emptied then had been fetched
    after the seek, and was never fetched again.
    """
    was_suspended = self._suspend.is_set()
    self._suspend.clear()
    self._resume.set()
    if was_suspended:
        self.clear()


# --- (g) ----------------------------------------------------------------------------------------------------------
async def _recovery_wait(self: Recovery, coro: Any, timeout: Any = None) -> None:  # noqa: ASYNC109 (its signature)
    """`Recovery._wait`: run one recovery step, stopping early for a stop or a new rebalance; a step that runs past
    `timeout` restarts the recovery (FIX(g)) where upstream ended the recovery loop as if the service had stopped."""
    signal = self.signal_recovery_start
    # An asyncio.Event; wait_first takes anything with an awaitable `wait()` (as upstream's own call does).
    wait_result = await self.wait_first(coro, cast(Any, signal), timeout=timeout)
    if wait_result.stopped:
        if self.should_stop or self._crashed.is_set():
            raise ServiceStopped()  # service was stopped.
        # FIX(g): neither the step, nor a rebalance, nor a stop: the timeout. Recover again from the start.
        self.log.warning("A recovery step did not finish within %ss; starting the recovery again", timeout)
        signal.set()
        raise RebalanceAgain()
    if cast(Any, signal) in wait_result.done:
        raise RebalanceAgain()  # another rebalance started


# --- (a) ----------------------------------------------------------------------------------------------------------
# A copy of faust 0.15.3 `Stream._c_aiter` (the iterator used where Faust's Cython extension is built, as in the
# wheels) with one change, marked FIX(a'); the rest is unchanged but for types.
async def _c_aiter(self: Stream[Any]) -> AsyncIterator[Any]:
    """`Stream._c_aiter` that holds no reference to the last event while it waits for the next one."""
    skipped_value = self._skipped_value
    self._finalized = True
    started_by_aiter = await self.maybe_start()
    it = faust_streams._CStreamIterator(self)  # type: ignore[attr-defined]
    try:
        while not self.should_stop:
            do_ack = self.enable_acks
            value, sensor_state = await it.next()
            finished = False
            try:
                if value is not skipped_value:
                    self.events_total += 1
                    yield value
                finished = True
            finally:
                event, self.current_event = self.current_event, None
                # FIX(e): acknowledged only if the agent asked for the next event, i.e. finished with this one; not
                # when the iterator is closed because the agent raised or was cancelled while handling it.
                it.after(event, (do_ack and finished) or value is skipped_value, sensor_state)
                # FIX(a'): upstream keeps `event` (and through it the message) bound while it awaits the next one.
                # The consumer's unacked set is weak: a message that a rebalance cleared from another stream's
                # queue after this stream handled it is never acked, and as long as it is referenced,
                # Consumer.wait_empty() holds the rebalance until the member is thrown out of the group.
                event = value = sensor_state = None
    except StopAsyncIteration:
        return
    finally:
        self._channel_stop_iteration(self.channel)
        if started_by_aiter:
            await self.stop()
            self.service_reset()


# A copy of faust 0.15.3 `Stream._py_aiter` with one change, marked FIX(a); the rest is unchanged but for types.


async def _py_aiter(self: Stream[Any]) -> AsyncIterator[Any]:  # noqa: PLR0915 (a copy)
    """`Stream._py_aiter` that does not acknowledge a message it skips.

    What was wrong: a message that arrives while flow control is inactive (a rebalance is in progress) or that was
    fetched under an older consumer generation is skipped, i.e. never handed to the agent, but the `finally` clause
    still acknowledged it ("We want to ack the filtered out message"). That comment is right for messages filtered
    out by a processor (`Skip`): the stream has handled them. A message skipped for flow control has not been
    handled, and acknowledging it lets the consumer commit past it, so it is never processed.

    Why the change is right: the skipped message is not the stream's to acknowledge; the consumer seeks back to the
    committed offset after the rebalance and fetches it again. The Cython iterator (`faust._cython.streams`,
    `StreamIterator._prepare_event`) already behaves this way: it returns no event for such a message, so nothing
    is acknowledged. This brings the pure-Python iterator (used without the extension, e.g. `NO_CYTHON=1` or PyPy)
    in line.
    """
    self._finalized = True
    started_by_aiter = await self.maybe_start()
    on_merge = self.on_merge
    on_stream_event_out = self._on_stream_event_out
    on_message_out = self._on_message_out

    # get from channel
    channel = self.channel
    chan_queue: ThrowableQueue[Any]
    chan_queue_empty: Callable[[], bool]
    chan_errors: Any
    chan_quick_get: Callable[[], Any]
    if isinstance(channel, ChannelT):
        chan_is_channel = True
        chan = cast(ChannelT[Any], self.channel)
        chan_queue = chan.queue
        chan_queue_empty = chan_queue.empty
        chan_errors = chan_queue._errors
        chan_quick_get = chan_queue.get_nowait
    else:
        chan_is_channel = False
        chan_queue = cast(ThrowableQueue[Any], None)
        chan_queue_empty = cast(Callable[[], bool], None)
        chan_errors = None
        chan_quick_get = cast(Callable[[], Any], None)
    chan_slow_get = channel.__anext__
    # Topic description -> processors
    processors = self._processors
    # Sensor: on_stream_event_in
    on_stream_event_in = self._on_stream_event_in

    # localize global variables
    create_ref = weakref.ref
    _maybe_async = maybe_async
    event_cls = EventT
    _current_event_contextvar = _current_event

    consumer = self.app.consumer
    unacked: set[Message] = consumer.unacked
    add_unacked: Callable[[Message], None] = unacked.add
    acking_topics: set[str] = self.app.topics.acking_topics
    on_message_in = self._on_message_in
    sleep = asyncio.sleep
    trace = self.app.trace
    _shortlabel = shortlabel
    sensor_state: dict[Any, Any] | None = None
    skipped_value = self._skipped_value

    try:
        while not self.should_stop:
            # FIX(a'): no reference to the previous message while waiting for the next one. The consumer's unacked
            # set is weak: a message that a rebalance cleared from another stream's queue (so it is never acked)
            # must be collectable, or Consumer.wait_empty() waits for it until the member is thrown out.
            event = message = channel_value = None
            do_ack = self.enable_acks  # set to False to not ack event.
            # wait for next message
            value: Any = None
            # we iterate until on_merge gives value.
            while value is None and event is None:
                await sleep(0)
                # get message from channel
                # This inlines ThrowableQueue.get for performance:
                # We selectively call `await Q.put`/`Q.put_nowait`,
                # and prefer the latter if the queue is non-empty.
                if chan_is_channel:
                    if chan_errors:
                        raise chan_errors.popleft()
                    if chan_queue_empty():
                        channel_value = await chan_slow_get()
                    else:
                        channel_value = chan_quick_get()
                else:
                    # chan is an AsyncIterable
                    channel_value = await chan_slow_get()

                if isinstance(channel_value, event_cls):
                    event = channel_value
                    message = event.message
                    topic = message.topic
                    tp = message.tp
                    offset = message.offset

                    if (
                        not self.app.flow_control.is_active()
                        or message.generation_id != self.app.consumer_generation_id
                    ):
                        value = skipped_value
                        self.log.dev(
                            "Skipping message %r with generation_id %r because "
                            "app generation_id is %r flow_control.is_active %r",
                            message,
                            message.generation_id,
                            self.app.consumer_generation_id,
                            self.app.flow_control.is_active(),
                        )
                        # FIX(a): not handled, so not acknowledged: it is fetched again after the rebalance.
                        # FIX(a'): when another stream of this app (two agents on one topic) had started it, it is
                        # in the unacked set with a reference this stream will never release; the rebalance would
                        # wait for it forever (Consumer.wait_empty). It stops being waited for, without an ack,
                        # so the commit does not pass it either.
                        if message.tracked:
                            unacked.discard(message)
                        event = None
                        break
                    if topic in acking_topics and not message.tracked:
                        message.tracked = True
                        # This inlines Consumer.track_message(message)
                        add_unacked(message)
                        on_message_in(message.tp, message.offset, message)
                        # XXX ugh this should be in the consumer somehow

                    # call Sensors
                    sensor_state = on_stream_event_in(tp, offset, self, event)

                    # set task-local current_event
                    _current_event_contextvar.set(create_ref(event))
                    # set Stream._current_event
                    self.current_event = event

                    # Stream yields Event.value
                    value = event.value
                else:
                    value = channel_value
                    self.current_event = None
                    sensor_state = None

                # reduce using processors
                try:
                    for processor in processors:
                        with trace(f"processor-{_shortlabel(processor)}"):
                            value = await _maybe_async(processor(value))
                    value = await on_merge(value)
                except Skip:
                    # We want to ack the filtered message
                    # otherwise the lag would increase
                    value = skipped_value

            finished = False
            try:
                if value is not skipped_value:
                    self.events_total += 1
                    yield value
                finished = True
            finally:
                self.current_event = None
                # We want to ack the filtered out message
                # otherwise the lag would increase
                # FIX(e): but not a message the agent did not finish (it raised or was cancelled handling it).
                if event is not None and ((do_ack and finished) or value is skipped_value):
                    # This inlines self.ack
                    last_stream_to_ack = event.ack()
                    message = event.message
                    tp = event.message.tp
                    offset = event.message.offset
                    on_stream_event_out(tp, offset, self, event, sensor_state)
                    if last_stream_to_ack:
                        on_message_out(tp, offset, message)

    except StopAsyncIteration:
        # We are not allowed to propagate StopAsyncIteration in __aiter__
        # (if we do, it'll be converted to RuntimeError by CPython).
        # It can be raised when streaming over a list:
        #    async for value in app.stream([1, 2, 3, 4]):
        #       ...
        # To support that, we just return here and that will stop
        # the iteration.
        return
    finally:
        self._channel_stop_iteration(channel)
        if started_by_aiter:
            # if `async for` called Stream.start()
            # we need to stop it before ending iteration.
            await self.stop()
            # reset to allow calling .start again on next `async for`
            self.service_reset()


# --- (b) and (c) --------------------------------------------------------------------------------------------------


class ConsumerFixes(faust_consumer.Consumer):
    """Consumer mixin with fixes (b), (c), (d), (h) and (i); put it before Faust's aiokafka consumer class in the
    bases (it seeks through that driver's consumer thread).

    Also, for both: after a seek to offset N the read offset is N - 1, the offset before the new position. Faust
    stored N, so the read offset meant "last offset read" after a delivery but "next offset to read" after a seek:
    the first missing offset of a jump could not be told, and a jump right after a seek was seen one offset late
    (N + 1 arriving first was not a jump). Now it always means the last offset read.
    """

    #: Per partition: the offset jump (first missing, first offset after the hole) that `_add_gap` last fetched again.
    _refetching: dict[TP, tuple[int, int]]
    #: FIX(i): assigned partitions not sought since their assignment; their records are not delivered.
    _unpositioned: set[TP]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._refetching = {}
        self._unpositioned = set()
        super().__init__(*args, **kwargs)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """FIX(i): until `perform_seek()` has set their positions, the new partitions' records are not delivered."""
        self._unpositioned.clear()  # the same set: `_drain_messages` holds it
        self._unpositioned.update(tp for tp in assigned if self.app.topics.acks_enabled_for(tp.topic))
        await super().on_partitions_assigned(assigned, generation_id)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """FIX(h): commit only once the state records of the inputs being committed are acknowledged
        (`streams.changelog_acks`); if they are not within its wait, this commit is skipped."""
        if not await changelog_acks.acknowledged(self.app, self.app.tables.values()):
            return False
        # The driver's consumer class, after this mixin in the bases, implements it.
        return bool(await super()._commit(offsets))  # type: ignore[safe-super]

    def _sought(self, tp: TP, offset: int) -> None:
        """A seek is about to set the fetch position of `tp` to `offset`: the last offset read is the one before.

        FIX(i): set before the position moves. Set after, it undid the deliveries made from the new position in
        between. Set before, a record still arriving from the old position is either before it (dropped as read)
        or after it (a jump, fetched again by (c)).
        """
        self._read_offset[tp] = offset - 1

    async def seek(self, partition: TP, offset: int) -> None:
        """Seek partition to specific offset."""
        self._sought(faust_consumer.ensure_TP(partition), offset)
        await self._seek(partition, offset)  # upstream's `seek` then stores the read offset again, after the move

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """Seek partitions to specific offsets and wait until the positions are set."""
        for tp, offset in partitions.items():
            self._sought(faust_consumer.ensure_TP(tp), offset)
        # Not the driver's `seek_wait`: its consumer-thread half stores the read offsets (as N) after the move.
        thread = cast(Any, self)._thread
        await thread.call_thread(self._seek_positions, thread, dict(partitions))

    async def _seek_positions(self, thread: Any, partitions: Mapping[TP, int]) -> None:
        """In the consumer thread: move the positions and wait until they are set."""
        consumer = thread._ensure_consumer()
        for tp, offset in partitions.items():
            consumer.seek(ensure_aiokafka_TP(tp), offset)
        await asyncio.wait_for(
            asyncio.gather(*(consumer.position(ensure_aiokafka_TP(tp)) for tp in partitions)),
            timeout=self.app.conf.broker_request_timeout)

    async def _committed_offsets(self, partitions: set[TP]) -> dict[TP, int | None]:
        """The group's committed offsets of `partitions`, in one request (None: nothing committed)."""
        thread = cast(Any, self)._thread

        async def fetch() -> dict[TP, int | None]:
            consumer = thread._ensure_consumer()
            found = await consumer._coordinator.fetch_committed_offsets([ensure_aiokafka_TP(tp) for tp in partitions])
            offsets = {faust_consumer.ensure_TP(tp): meta.offset for tp, meta in found.items()}
            return {tp: offsets.get(tp) for tp in partitions}

        return cast(dict[TP, "int | None"], await thread.call_thread(fetch))

    def _purge_buffered(self, partitions: set[TP]) -> None:
        """FIX(i): drop the records of `partitions` that wait in stream buffers, not yet taken by an agent: the seek
        about to be made fetches them again, and behind them they would be taken out of order."""
        for managed in list(self.app.flow_control._queues):
            queue: Any = managed  # an asyncio.Queue: its buffer and waiting putters are private
            items = queue._queue
            keep = [item for item in items
                    if getattr(getattr(item, "message", None), "tp", None) not in partitions]
            removed = len(items) - len(keep)
            if removed:
                items.clear()
                items.extend(keep)
                for _ in range(removed):
                    queue._wakeup_next(queue._putters)

    async def perform_seek(self) -> None:
        """Seek all partitions to their current committed position.

        FIX(d), what was wrong: records fetched for a partition that is paused when they arrive (as every partition
        is during a rebalance) are dropped by `getmany()`, and the fetch position has moved past them; Faust relies
        on this seek to read them again. But aiokafka's `seek_to_committed()` seeks only partitions with a
        committed offset > 0, so on a partition nobody has committed yet (a new topic, a quiet partition, a worker
        killed before its first commit) those records were never read again: lost, with everything the dead worker
        had read but not committed.

        Why the change is right: with no committed offset the committed position is where the consumer starts
        without one, the beginning of the partition under `consumer_auto_offset_reset="earliest"`; this seeks
        there (at worst it reads again what was processed and not committed). Only for stream topics (acking
        ones): changelogs are not committed and their positions belong to the table recovery. Under "latest"
        there is no such position, and the behaviour is unchanged.

        FIX(i): the committed offsets come in one request, and the read offsets, committed offsets and stream
        buffers are set for every partition before any position moves (see the module docstring).
        """
        assigned = {faust_consumer.ensure_TP(tp) for tp in self.assignment()}
        if not assigned:
            return
        committed_offsets = await self._committed_offsets(assigned)
        positions: dict[TP, int] = {}
        for tp, offset in committed_offsets.items():
            self._refetching.pop(tp, None)
            if offset is not None and offset > 0:
                positions[tp] = offset
            elif self.app.topics.acks_enabled_for(tp.topic) and (
                offset == 0 or self.app.conf.consumer_auto_offset_reset == "earliest"
            ):
                positions[tp] = 0  # FIX(d); seeking to 0 starts at the beginning where the log has been truncated too
            else:
                self._read_offset[tp] = None
        # FIX(i): before the positions move.
        self._purge_buffered(set(positions))
        self._committed_offset.update(positions)
        self._unpositioned.difference_update(committed_offsets)
        await self._seek_each_assigned(positions)

    async def _seek_each_assigned(self, positions: Mapping[TP, int]) -> None:
        """`seek_wait(positions)` for the partitions still assigned; one that is not (the assignment changed while
        the committed offsets were fetched: seen as "No current assignment for partition" from the seek a paused
        fetch makes) is its next owner's, and the others are still sought. All at once first (one wait for the
        positions), one by one only when that fails."""
        assigned = self.assignment()
        positions = {tp: offset for tp, offset in positions.items() if tp in assigned}
        try:
            await self.seek_wait(positions)
        except IllegalStateError:
            for tp, offset in positions.items():
                try:
                    await self.seek_wait({tp: offset})
                except IllegalStateError:
                    self.log.info("Not seeking %r: no longer assigned", tp)

    def _offsets_may_skip(self, tp: TP) -> bool:
        """True where Kafka leaves holes in a partition's offsets: compacted topics and transaction markers.

        Changelog topics are compacted; other topics count as compacted when declared so (`compacting=True` or a
        `cleanup.policy` with `compact`). With `processing_guarantee="exactly_once"` commit markers take offsets.
        A hole Faust does not know of is still found: `_add_gap` fetches it once again and then accepts it.
        """
        if self.in_transaction or self._is_changelog_tp(tp):
            return True
        for channel in self.app.topics:
            if tp.topic in getattr(channel, "topics", ()):
                config: Mapping[str, Any] = getattr(channel, "config", None) or {}
                if getattr(channel, "compacting", None) or "compact" in str(config.get("cleanup.policy", "")):
                    return True
        return False

    def _new_offset(self, tp: TP) -> int | None:
        """FIX(i): the offset to commit, only if the acknowledged offsets start at the committed one.

        Upstream commits the first run of consecutive acknowledged offsets wherever it starts: a run starting after
        the committed offset moved the commit past offsets that were never processed.
        """
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if acked and committed is not None and not self._offsets_may_skip(tp):
            first = min(acked)
            gaps = self._gap[tp]
            if gaps:
                first = min(first, *(interval.begin for interval in gaps))
            if first > committed:
                return None
        offset: int | None = super()._new_offset(tp)
        return offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """On a jump in offsets in a plain topic, fetch the missing offsets again instead of committing past them.

        What was wrong: every jump in the offsets delivered on an acking topic was recorded as a gap, and gaps count
        as acknowledged when the consumer computes the offset to commit. That is right where offsets really are
        missing (compacted topics, transaction markers), but a jump also happens when the fetch position moves under
        the consumer: after a seek back (a rebalance), the rest of a batch fetched before it still arrives. The
        skipped offsets exist and were never processed; committing past them loses them.

        Why the change is right: in a topic with no compaction and no transactions every offset holds a record, so
        a jump means the records in between were not delivered. Seeking back to the first missing offset fetches
        them again; `_drain_messages` drops the message after the hole and the rest of its batch for the partition
        (fetched before this seek, they are fetched again after the missing ones). A hole still there after the
        refetch is real (a topic compacted, or written transactionally, without Faust knowing): it is recorded as a
        gap as before, after one extra fetch, so the consumer cannot loop.
        """
        if self._offsets_may_skip(tp):
            await super()._add_gap(tp, offset_from, offset_to)
            return
        if self._refetching.get(tp) == (offset_from, offset_to):
            # A hole that is still there: the offsets before `offset_to`, not `offset_to` itself (it has arrived and is
            # being delivered), and from the committed offset on (upstream's `committed + 1` left that one out).
            self._refetching.pop(tp, None)
            committed = self._committed_offset[tp]
            start = offset_from if committed is None else max(offset_from, committed)
            if start < offset_to:
                self.log.warning("Offsets %r..%r of %r are missing on the broker; committing past them",
                                 start, offset_to - 1, tp)
                self._gap[tp].addi(start, offset_to)
            return
        self._refetching[tp] = (offset_from, offset_to)
        self.log.info("Offsets %r..%r of %r were skipped: fetching them again", offset_from, offset_to - 1, tp)
        try:
            await self.seek_wait({tp: offset_from})
        except (TimeoutError, IllegalStateError) as exc:
            # No longer assigned (a rebalance): its next owner starts from the committed offset, before the hole.
            # Timed out waiting for the position: the seek itself was made.
            self.log.warning("Seeking %r back to %r: %r", tp, offset_from, exc)

    # A copy of faust 0.15.3 `Consumer._drain_messages` with the changes marked FIX(b)/FIX(c).
    async def _drain_messages(self, fetcher: ServiceT) -> None:  # noqa: PLR0915 (a copy)
        """`Consumer._drain_messages` that keeps a read offset reset by a seek during a delivery.

        What was wrong: the loop reads a partition's read offset, awaits the delivery of the message (the stream's
        buffer may be full; flow control may hold it), and then stores the message's offset as the read offset. A
        seek during that await (`perform_seek()` after a rebalance, which a Table's recovery runs while the flow is
        already resumed) had reset the read offset so the records from the committed offset are delivered again;
        storing the offset afterwards undid the reset, and the refetched records were dropped as already read.

        Why the change is right: the offset is stored only if the read offset is still the one the loop read before
        the await, i.e. no seek reset it meanwhile. If one did, the seek's read offset stands: the records fetched
        from the new position are delivered, and any record left from before the seek shows up as a jump from it,
        which (c) fetches again. (A seek that leaves the read offset unchanged gives at most one duplicate: the
        refetched offset equal to the read offset is still delivered.)
        """
        # This is the background thread started by Fetcher, used to
        # constantly read messages using Consumer.getmany.
        # It takes Fetcher as argument, because we must be able to
        # stop it using `await Fetcher.stop()`.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        refetching = self._refetching  # FIX(c)
        unpositioned = self._unpositioned  # FIX(i)
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                # FIX(a'): drop the last delivered message before fetching again. Upstream keeps it bound until the
                # next batch arrives, and none arrives while a rebalance pauses the partitions: if a rebalance
                # cleared it from one stream's queue after another stream took it, it stays in the consumer's weak
                # unacked set and Consumer.wait_empty() holds the rebalance until the member is thrown out.
                message: Any = None
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    # FIX(c): partitions that _add_gap sought back in this batch: their records left in it are
                    # fetched again, after the missing ones.
                    refetch: set[TP] = set()
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        if tp in refetch or tp in unpositioned:  # FIX(c), FIX(i): fetched again after a seek
                            continue
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            # FIX(c): `is not None`: a read offset of 0 (or -1, before offset 0) counts too.
                            if gap > 1 and r_offset is not None:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                                    if refetching.get(tp) == (r_offset + 1, offset):  # FIX(c): sought back
                                        refetch.add(tp)
                                        continue
                            if commit_every is not None:  # noqa: SIM102 (as upstream)
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            await self.wait_first(
                                callback(message), self.suspend_flow.wait()
                            )
                            # FIX(b): unless a seek reset the read offset meanwhile.
                            if get_read_offset(tp) == r_offset:
                                set_read_offset(tp, offset)
                                refetching.pop(tp, None)  # FIX(c): delivered in order
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


__all__ = ["FAUST_VERSION", "ConsumerFixes", "FaustVersionError", "applied", "apply", "check_version"]

