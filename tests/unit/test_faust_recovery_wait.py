"""Fix (g) in streams/faust_fixes.py: a recovery step that outlasts its timeout starts the recovery again, where
Faust 0.15.3 took the timeout for a stop and never recovered (the worker then consumed nothing, forever)."""

from __future__ import annotations

import asyncio

import faust
import pytest
from faust.tables.recovery import RebalanceAgain, ServiceStopped

from streams import faust_fixes


def _recovery() -> faust.tables.recovery.Recovery:
    faust_fixes.apply()
    app = faust.App("test-recovery-wait", broker="memory://", store="memory://")
    return app.tables.recovery


async def test_a_step_that_times_out_starts_the_recovery_again() -> None:
    recovery = _recovery()
    recovery.signal_recovery_start.clear()
    with pytest.raises(RebalanceAgain):
        await recovery._wait(asyncio.sleep(5), timeout=0.05)
    assert recovery.signal_recovery_start.is_set(), "the recovery loop runs again at once"


async def test_a_step_that_finishes_returns_and_a_stop_still_stops() -> None:
    recovery = _recovery()
    recovery.signal_recovery_start.clear()
    await recovery._wait(asyncio.sleep(0), timeout=1.0)
    assert not recovery.signal_recovery_start.is_set()

    recovery._stopped.set()  # the worker is stopping
    with pytest.raises(ServiceStopped):
        await recovery._wait(asyncio.sleep(5), timeout=1.0)
    assert not recovery.signal_recovery_start.is_set()


async def test_a_new_rebalance_during_a_step_is_still_a_rebalance() -> None:
    recovery = _recovery()
    recovery.signal_recovery_start.clear()
    asyncio.get_running_loop().call_later(0.05, recovery.signal_recovery_start.set)
    with pytest.raises(RebalanceAgain):
        await recovery._wait(asyncio.sleep(5), timeout=2.0)
