"""Faust's table manager without its one-second pause at start.

faust-streaming 0.15.3's `TableManager.on_start` sleeps 1 s before it finalizes the tables, so that an app can
still declare tables after it was started. A Switchboard worker declares every table in `streams.app.create_app`,
before it starts (a table added later is refused by Faust: "Too late to add tables at this point"), so the pause
only delays each start by a second before the worker subscribes and joins its group, and with it every restart
after a kill (docs/crash-safety.md, "Recovery time").
"""

from __future__ import annotations

from faust.tables import TableManager as FaustTableManager


class TableManager(FaustTableManager):
    async def on_start(self) -> None:
        # Faust's on_start, less `await self.sleep(1.0)`.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
