"""Faust's table manager and RocksDB store, without the waits they add to every start and rebalance.

- faust-streaming 0.15.3's `TableManager.on_start` sleeps 1 s before it finalizes the tables, so that an app can
  still declare tables after it was started. A Switchboard worker declares every table in `streams.app.create_app`,
  before it starts (a table added later is refused by Faust: "Too late to add tables at this point"), so the pause
  only delays each start by a second before the worker subscribes and joins its group, and with it every restart
  after a kill (docs/crash-safety.md, "Recovery time").
- Its RocksDB `Store.revoke_partitions` runs a full garbage collection (`gc.collect()`, so that the databases it
  drops release their files) for every table at every rebalance, whether it dropped a database or not: 50-100 ms
  each in a worker, eight tables, so 0.4-0.8 s during which the worker's partitions stay paused, on the survivor of
  a kill as on its restarted peer. Its `stop` does the same for every table when the worker stops. `install()`
  makes both collect only when a store dropped a database, and once for all the stores that did so in the same
  turn of the event loop: in the rebalances of a kill (a worker gives partitions back, or gains some) that is one
  collection or none; a rebalance that both takes partitions from a worker and gives it others can still cost one
  per table, as before, since opening a partition's database yields between the tables.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

from faust.stores import rocksdb as faust_rocksdb
from faust.tables import TableManager as FaustTableManager

from streams import faust_fixes


class TableManager(FaustTableManager):
    async def on_start(self) -> None:
        # Faust's on_start, less `await self.sleep(1.0)`.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def install() -> None:
    """Patch Faust's RocksDB store so that a rebalance collects garbage only when a store dropped a database.

    Idempotent; refuses a Faust other than the one it was written against (`faust_fixes.FaustVersionError`).
    """
    faust_fixes.check_version()
    for name, ours in _PATCHES.items():
        setattr(faust_rocksdb.Store, name, ours)


def installed() -> bool:
    return all(faust_rocksdb.Store.__dict__.get(name) is ours for name, ours in _PATCHES.items())


def _revoke_partitions(self: Any, table: Any, tps: Any) -> None:
    # Faust 0.15.3's revoke_partitions, with the collection only when a database was dropped.
    dropped = False
    for tp in tps:
        if tp.topic in table.changelog_topic.topics and self._dbs.pop(tp.partition, None) is not None:
            self.logger.info(f"closing db {tp.topic} partition {tp.partition}")
            dropped = True
    if dropped:
        collect_soon()


async def _stop(self: Any) -> None:
    # Faust 0.15.3's Store.stop, with the collection only when a database was open.
    self.logger.info("Closing rocksdb on stop")
    if self._dbs:
        self._dbs.clear()
        collect_soon()


#: The store's methods this module replaces, and Faust's own, as imported (tests put them back to check that a
#: worker app installs ours).
_PATCHES: dict[str, Any] = {"revoke_partitions": _revoke_partitions, "stop": _stop}
UPSTREAM = {name: faust_rocksdb.Store.__dict__[name] for name in _PATCHES}

_collection_due: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def collect_soon() -> None:
    """One full garbage collection at the next turn of the running event loop, however often it is asked for
    before then (at once when no loop runs). Stores that drop their databases in a row, without yielding, share
    one collection; a partition dropped now is opened again at a later rebalance at the earliest, after it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        gc.collect()
        return
    if loop in _collection_due:
        return
    _collection_due.add(loop)

    def collect() -> None:
        _collection_due.discard(loop)
        gc.collect()

    loop.call_soon(collect)
