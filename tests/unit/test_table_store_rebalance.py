"""`streams.tables.install()`: a rebalance (or a stop) collects garbage only when a RocksDB table store dropped a
database, and once for all the stores that did so together (Faust 0.15.3 ran a full collection per table at every
rebalance and stop, 0.4-0.8 s of a worker's rebalance with its eight tables)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from streams import tables


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    """Counts full collections (generation 2) while automatic collection is off, so that only explicit ones count."""
    seen: list[int] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(1)

    was_enabled = gc.isenabled()
    gc.disable()
    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)
        if was_enabled:
            gc.enable()


def _stores(tmp_path: Path, *names: str) -> list[Any]:
    tables.install()
    app = faust.App("test-table-stores", broker="memory://", store="rocksdb://", datadir=str(tmp_path))
    return [app.Table(name, partitions=4).data for name in names]


def _changelog(store: Any, partition: int) -> TP:
    return TP(store.table.changelog_topic.get_topic_name(), partition)


async def _next_turns() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def _in_a_loop_of_its_own(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `scenario` on a new event loop: nothing left on the tests' shared loop can collect meanwhile."""
    asyncio.run(scenario())


def test_install_is_idempotent() -> None:
    tables.install()
    tables.install()
    assert tables.installed()


def test_a_rebalance_that_drops_no_database_collects_nothing(tmp_path: Path, full_collections: list[int]) -> None:
    first, second = _stores(tmp_path, "first", "second")
    first._db_for_partition(0)

    async def scenario() -> None:
        # The survivor of a kill: it gives up nothing, or partitions whose databases it never opened.
        for store in (first, second):
            store.revoke_partitions(store.table, {_changelog(store, 2), _changelog(store, 3)})
        await _next_turns()

    _in_a_loop_of_its_own(scenario)
    assert full_collections == []
    assert 0 in first._dbs, "a database of a partition still assigned stays open"


def test_stores_that_drop_databases_together_share_one_collection(tmp_path: Path,
                                                                 full_collections: list[int]) -> None:
    stores = _stores(tmp_path, "first", "second", "third")
    for store in stores:
        store._db_for_partition(0)
        store._db_for_partition(1)

    async def scenario() -> None:
        for store in stores:  # as TableManager.on_rebalance does, table after table, without yielding
            store.revoke_partitions(store.table, {_changelog(store, 0)})
        assert full_collections == [], "the collection waits for the next turn of the event loop"
        await _next_turns()

    _in_a_loop_of_its_own(scenario)
    assert full_collections == [1]
    for store in stores:
        assert set(store._dbs) == {1}
        store._db_for_partition(0)  # assigned again at a later rebalance: it opens (its lock was released)
        assert set(store._dbs) == {0, 1}


def test_without_a_running_event_loop_the_collection_is_immediate(tmp_path: Path,
                                                                  full_collections: list[int]) -> None:
    (store,) = _stores(tmp_path, "only")
    store._db_for_partition(0)
    store.revoke_partitions(store.table, {_changelog(store, 0)})
    assert full_collections == [1]
    assert store._dbs == {}


def test_stopping_the_stores_collects_once(tmp_path: Path, full_collections: list[int]) -> None:
    stores = _stores(tmp_path, "first", "second", "third")
    stores[0]._db_for_partition(0)
    stores[1]._db_for_partition(2)

    async def scenario() -> None:
        for store in stores:  # the third never opened a database
            await store.stop()
        await _next_turns()

    _in_a_loop_of_its_own(scenario)
    assert full_collections == [1]
    assert all(store._dbs == {} for store in stores)
    stores[0]._db_for_partition(0)  # it opens again (its lock was released)
