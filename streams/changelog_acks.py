"""Fix (h) for faust-streaming 0.15.3: an input's offset is committed only once its state record is in the changelog.

A Table write goes to the changelog through Faust's producer buffer (`send_soon`), in the background. Before a
commit Faust "flushes" that buffer, but `ProducerBuffer.flush_atmost()` gives up as soon as one message takes more
than 0.1 s to be handed to the Kafka client (on a busy machine, or while the client waits for room in a batch), and
the client's own flush knows nothing of what is still in Faust's buffer. The commit then moves past inputs whose
state records were never sent; a worker killed at that moment restarts from a changelog without them, and the
inputs are not delivered again (the likely cause of a workflow run lost on CI: its start applied and committed, its
state recovered as unknown, its first task's result ignored). A record the broker refused (object storage down
behind Tansu) was lost the same way: Faust only logs the failure.

The fix tracks every changelog record a table sends until the broker acknowledges it. A commit first waits for the
records sent before it; a refused record is sent again, with the key's current value (never an older one: the
changelog keeps the last value per key), if this worker still owns that changelog partition. Records that are not
all acknowledged within the wait leave the commit undone: the offsets are committed by a later commit, and a crash
before that only means redelivery, which the shell's offsets and event ids make harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from time import monotonic
from typing import Any, Final

from faust.tables.base import Collection
from faust.types import TP
from faust.types.tuples import FutureMessage

log = logging.getLogger(__name__)

#: How long a commit waits for the state records sent before it. Commits run every second (and on a rebalance or
#: a stop); a wait longer than this means the broker is failing, and the commit is skipped rather than blocked.
COMMIT_WAIT_S: Final = 10.0
_ATTRIBUTE: Final = "_switchboard_unacked_changelog"
_upstream_send_changelog = Collection.send_changelog


def unacked(table: Any) -> set[FutureMessage]:
    """The changelog records `table` sent that are not acknowledged yet (refused ones stay until sent again)."""
    pending: set[FutureMessage] | None = table.__dict__.get(_ATTRIBUTE)
    if pending is None:
        pending = table.__dict__[_ATTRIBUTE] = set()
    return pending


def send_changelog(self: Collection, partition: int | None, key: Any, value: Any,
                   key_serializer: Any = None, value_serializer: Any = None) -> FutureMessage:
    """`Collection.send_changelog`, with the record tracked until the broker acknowledges it (FIX(h))."""
    future = _upstream_send_changelog(self, partition, key, value, key_serializer, value_serializer)
    pending = unacked(self)
    pending.add(future)
    future.add_done_callback(_forget_if_acknowledged(pending))
    return future


def _forget_if_acknowledged(pending: set[FutureMessage]) -> Any:
    def done(future: Any) -> None:
        if not _failed(future):
            pending.discard(future)
    return done


def install() -> None:
    """Track changelog records of every table (idempotent; called by `streams.faust_fixes.apply`)."""
    if Collection.__dict__.get("send_changelog") is not send_changelog:
        Collection.send_changelog = send_changelog  # type: ignore[method-assign]


def _failed(future: FutureMessage) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _send_again(app: Any, table: Any, future: FutureMessage) -> FutureMessage | None:
    """Send the key of a refused record again with its current value; None if this worker no longer owns the
    changelog partition (its new owner recovers without the record and applies the uncommitted inputs again)."""
    unacked(table).discard(future)
    message = future.message
    changelog = TP(table.changelog_topic.get_topic_name(), int(message.partition or 0))  # set: eager partitioning
    if not app.assignor.is_active(changelog):
        log.warning("a state record for %s was refused by the broker; the partition has moved to another worker, "
                    "which applies its inputs again", changelog)
        return None
    log.warning("a state record for %s was refused by the broker (%r); sending the key's current value again",
                changelog, future.exception() if not future.cancelled() else "cancelled")
    # The record holds the key serialized; the table's data is keyed by the key itself.
    key = app.serializers.loads_key(table.key_type, message.key, serializer=table.key_serializer)
    result: FutureMessage
    if key in table.data:
        result = table.send_changelog(message.partition, key, table.data[key])
    else:  # deleted since: a tombstone, as Faust writes one
        result = table.send_changelog(message.partition, key, None, value_serializer="raw")
    return result


async def acknowledged(app: Any, tables: Iterable[Any], timeout_s: float = COMMIT_WAIT_S) -> bool:
    """Wait until every changelog record the tables had sent when this was called is acknowledged, sending refused
    ones again; False if that did not happen within `timeout_s` (the caller must not commit)."""
    waiting: dict[FutureMessage, Any] = {future: table for table in tables for future in list(unacked(table))}
    deadline = monotonic() + timeout_s
    while waiting:
        sent_again = False
        for future, table in list(waiting.items()):
            if not future.done():
                continue
            del waiting[future]
            if _failed(future):
                again = _send_again(app, table, future)
                if again is not None:
                    waiting[again] = table
                    sent_again = True
        if not waiting:
            break
        remaining = deadline - monotonic()
        if remaining <= 0:
            log.warning("%d state record(s) not acknowledged by the broker within %gs; the offsets of their inputs "
                        "stay uncommitted (committed by a later commit)", len(waiting), timeout_s)
            return False
        if sent_again:
            await asyncio.sleep(min(0.1, remaining))  # a broker refusing at once is not asked again in a busy loop
        await asyncio.wait(list(waiting), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    return True
