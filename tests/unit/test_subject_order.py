"""The per-subject order of publishes for concurrently handled inputs (streams/ordering.py): a subject's inputs
publish in the order they took their places, whatever order their handlers finish in; other subjects never wait."""

from __future__ import annotations

import asyncio

from streams.ordering import Place, SubjectOrder


async def _input(order: SubjectOrder, subject: str, handling_s: float, published: list[str], name: str) -> None:
    """What the shell does for one input: take a place at once, handle (here: take `handling_s`), wait for the
    place, publish, leave."""
    place = order.enter(subject)
    try:
        await asyncio.sleep(handling_s)  # the handler's model call; later inputs may finish it first
        await place.ready()
        published.append(name)
    finally:
        place.leave()


async def test_a_subjects_inputs_publish_in_input_order_though_handled_out_of_order() -> None:
    order = SubjectOrder()
    published: list[str] = []
    await asyncio.gather(_input(order, "s1", 0.05, published, "s1-a"), _input(order, "s1", 0.0, published, "s1-b"),
                         _input(order, "s1", 0.02, published, "s1-c"))
    assert published == ["s1-a", "s1-b", "s1-c"]
    assert len(order) == 0, "a subject is forgotten once its last input left"


async def test_other_subjects_do_not_wait() -> None:
    order = SubjectOrder()
    published: list[str] = []
    await asyncio.gather(_input(order, "slow", 0.05, published, "slow-1"), _input(order, "slow", 0.0, published,
                                                                                    "slow-2"),
                         _input(order, "fast", 0.0, published, "fast-1"))
    assert published == ["fast-1", "slow-1", "slow-2"]


async def test_an_input_that_fails_or_is_cancelled_still_lets_the_next_one_go() -> None:
    order = SubjectOrder()
    first = order.enter("s")
    second = order.enter("s")

    async def fails() -> None:
        try:
            raise RuntimeError("the handler failed")
        finally:
            first.leave()

    task = asyncio.ensure_future(fails())
    await asyncio.wait([task])
    assert isinstance(task.exception(), RuntimeError)
    await asyncio.wait_for(second.ready(), 1.0)
    second.leave()

    waiting = order.enter("s")
    blocked = order.enter("s")
    waiter = asyncio.ensure_future(blocked.ready())
    await asyncio.sleep(0)
    assert not waiter.done(), "waits for the input before it"
    waiter.cancel()  # the waiting input is cancelled (a rebalance stops the agent): its predecessor is unaffected
    blocked.leave()
    waiting.leave()
    waiting.leave()  # idempotent
    assert len(order) == 0


async def test_a_place_without_predecessor_is_ready_at_once() -> None:
    place: Place = SubjectOrder().enter("alone")
    await asyncio.wait_for(place.ready(), 0.1)
    place.leave()


async def test_an_input_that_gives_up_early_does_not_let_a_later_one_overtake_an_earlier_one() -> None:
    """The second input's handler fails before it waits for its place; the third must still publish after the
    first, which is slow."""
    order = SubjectOrder()
    published: list[str] = []

    async def fails_at_once() -> None:
        place = order.enter("s")
        try:
            raise RuntimeError("the handler failed")
        finally:
            place.leave()

    results = await asyncio.gather(_input(order, "s", 0.05, published, "first"), fails_at_once(),
                                   _input(order, "s", 0.0, published, "third"), return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    assert published == ["first", "third"]
    assert len(order) == 0


async def test_places_behind_that_already_left_are_done_when_the_first_leaves() -> None:
    order = SubjectOrder()
    first, second, third = order.enter("s"), order.enter("s"), order.enter("s")
    fourth = order.enter("s")
    third.leave()
    second.leave()
    waiter = asyncio.ensure_future(fourth.ready())
    await asyncio.sleep(0)
    assert not waiter.done(), "the first input has not left yet"
    first.leave()
    await asyncio.wait_for(waiter, 1.0)
    fourth.leave()
    assert len(order) == 0
