"""Fix (h), `streams.changelog_acks`: a commit waits for the state records sent before it, and a refused one is sent
again with its key's current value. Faust's own table and producer buffer (no broker: a record stays in the buffer
until the test resolves it, as the broker's acknowledgement or refusal would)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from aiokafka.errors import UnknownError
from faust.types import TP
from faust.types.tuples import FutureMessage

from streams import changelog_acks, faust_fixes


def _table() -> tuple[faust.App, Any]:
    faust_fixes.apply()
    # The producer is never started: its buffer holds what the tables send.
    app = faust.App("test-changelog-acks", broker="kafka://127.0.0.1:9", store="memory://")
    return app, app.Table("runs-state", default=None, partitions=4, key_type=str)


def _owns(app: faust.App, table: Any, partition: int) -> None:
    app.assignor._active_tps = {TP(table.changelog_topic.get_topic_name(), partition)}  # type: ignore[attr-defined]


def _acked(future: FutureMessage) -> None:
    future.set_result(None)  # type: ignore[arg-type]


async def test_a_commit_waits_for_the_records_sent_before_it() -> None:
    app, table = _table()
    first = table.send_changelog(1, "run-a", {"state": 1})
    waiting = asyncio.create_task(changelog_acks.acknowledged(app, [table], timeout_s=5))
    await asyncio.sleep(0.05)
    later = table.send_changelog(1, "run-b", {"state": 1})  # sent after the commit began: not its concern
    assert not waiting.done(), "the commit went ahead with a state record not yet acknowledged"
    _acked(first)
    assert await waiting is True
    assert changelog_acks.unacked(table) == {later}


async def test_a_commit_is_skipped_when_the_records_are_not_acknowledged_in_time() -> None:
    app, table = _table()
    table.send_changelog(0, "run-a", {"state": 1})
    assert await changelog_acks.acknowledged(app, [table], timeout_s=0.05) is False
    assert len(changelog_acks.unacked(table)) == 1, "the record is still waited for by the next commit"


async def test_a_refused_record_is_sent_again_with_the_current_value() -> None:
    app, table = _table()
    _owns(app, table, 2)
    refused = table.send_changelog(2, "run-a", {"state": 1})
    table.data["run-a"] = {"state": 2}  # written again since
    refused.set_exception(UnknownError("object storage unavailable"))
    waiting = asyncio.create_task(changelog_acks.acknowledged(app, [table], timeout_s=5))
    await asyncio.sleep(0)  # the commit's wait runs up to its first await: the second send is made by then
    (again,) = changelog_acks.unacked(table)
    assert (again.message.partition, again.message.key, again.message.value) == (2, b'"run-a"', b'{"state":2}')
    assert not waiting.done()
    _acked(again)
    assert await waiting is True
    assert not changelog_acks.unacked(table)


async def test_a_refused_record_of_a_partition_that_moved_is_not_sent_again() -> None:
    app, table = _table()
    _owns(app, table, 0)
    refused = table.send_changelog(3, "run-a", {"state": 1})
    refused.set_exception(UnknownError("object storage unavailable"))
    assert await changelog_acks.acknowledged(app, [table], timeout_s=1) is True
    assert not changelog_acks.unacked(table), "the new owner applies the uncommitted inputs again"
