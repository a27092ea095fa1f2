"""The table that holds a stateful processor's per-subject state: a Faust table whose changelog writes are confirmed.

Faust sends a table's changelog record in the background and, when the broker refuses it, only logs "FutureMessage
exception was never retrieved". The input that made the change is acknowledged all the same, so the change lives
in the worker's local store but not on the bus: whoever recovers the table from its changelog (the partition's next
owner, this worker with a new disk) gets the old state and applies later inputs to it. Seen on CI while object
storage was down. Here the shell awaits each state record's acknowledgement before it acknowledges the input, and
writes it again when it failed, as it does with the effects.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.types import FutureMessage


class StateTable(faust.Table[str, Any]):
    """`faust.Table` that keeps, per key, the changelog send of the key's last write, for `confirm`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: dict[Any, FutureMessage] = {}

    def on_key_set(self, key: Any, value: Any) -> None:
        """Faust's `Table.on_key_set`, keeping the changelog send's future."""
        fut = self.send_changelog(self.partition_for_key(key), key, value)
        self._unconfirmed[key] = fut
        partition = fut.message.partition
        assert partition is not None
        self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)

    async def confirm(self, key: Any) -> None:
        """Return once the broker has acknowledged the changelog record of `key`'s last write; raise what the send
        raised when it failed (the caller writes the key again). At once when nothing is outstanding."""
        fut = self._unconfirmed.get(key)
        if fut is None:
            return
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done() and self._unconfirmed.get(key) is fut:
                del self._unconfirmed[key]

    @property
    def unconfirmed(self) -> int:
        """Keys whose last write's changelog record is not acknowledged yet."""
        return len(self._unconfirmed)


def state_table(app: faust.App, name: str, partitions: int) -> StateTable:
    """A `StateTable` registered with `app` as `app.Table` registers its tables (str keys, JSON values)."""
    table = StateTable(app, name=name, default=None, beacon=app.tables.beacon, partitions=partitions, key_type=str)
    app.tables.add(table)
    return table
