"""FIX(d)'s seek to the start of uncommitted partitions, when the assignment changes under it: the partitions still
assigned are sought, the others left to their next owner (before, the first one gone raised IllegalStateError and
every partition after it kept a fetch position past records that a paused fetch had dropped)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiokafka.errors import IllegalStateError
from faust.types import TP

from streams.faust_fixes import ConsumerFixes

A, B, C = TP("in", 0), TP("in", 1), TP("in", 2)


class Positions:
    """The consumer surface `_seek_each_assigned` uses; `revoked` partitions fail a seek as aiokafka's do."""

    log = logging.getLogger("test")

    def __init__(self, assigned: set[TP], revoked: frozenset[TP] = frozenset()) -> None:
        self.assigned, self.revoked = assigned, revoked
        self.sought: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return self.assigned

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for tp, offset in partitions.items():
            if tp in self.revoked:
                raise IllegalStateError(f"No current assignment for partition {tp}")
            self.sought[tp] = offset


async def test_partitions_no_longer_assigned_are_not_sought() -> None:
    consumer = Positions({A, C})
    await ConsumerFixes._seek_each_assigned(consumer, {A: 0, B: 0, C: 0})  # type: ignore[arg-type]
    assert consumer.sought == {A: 0, C: 0}


async def test_a_partition_revoked_during_the_seek_does_not_stop_the_others() -> None:
    consumer = Positions({A, B, C}, revoked={A})  # assigned when asked, gone when sought
    await ConsumerFixes._seek_each_assigned(consumer, {A: 0, B: 0, C: 0})  # type: ignore[arg-type]
    assert consumer.sought == {B: 0, C: 0}
