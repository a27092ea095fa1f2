"""The fetch wait a consumer asks for, from where its partitions are (`infra.bus.fetch_wait.FetchWaitPolicy`)."""

from __future__ import annotations

import itertools

from aiokafka.structs import TopicPartition

from infra.bus.fetch_wait import HOLE_RETRY_S, STUCK_AFTER, FetchWaitPolicy, PartitionView

A, B = TopicPartition("t", 0), TopicPartition("t", 1)
_answers = itertools.count(1)


def answered(tp: TopicPartition, position: int, highwater: int | None) -> PartitionView:
    """The view after a fetch for `tp` was answered (each call: a new answer)."""
    return PartitionView(tp, position, highwater, next(_answers))


def policy() -> FetchWaitPolicy:
    return FetchWaitPolicy(base_ms=50, catch_up_ms=200, max_ms=800)


def test_at_the_end_of_every_partition_the_configured_wait_is_used() -> None:
    p = policy()
    assert p.next_wait([answered(A, 10, 10), answered(B, 0, 0)], now=0) == 50
    assert p.next_wait([answered(A, 12, 11)], now=0) == 50, "past Tansu's high watermark (last batch's base + 1)"
    assert p.next_wait([PartitionView(A, 0, None, None)], now=0) == 50, "no high watermark yet: not known behind"


def test_one_partition_behind_makes_the_fetch_ask_for_the_catch_up_wait() -> None:
    p = policy()
    assert p.next_wait([answered(A, 10, 10), answered(B, 3, 500)], now=0) == 200
    assert p.last_wait_ms == 200


def test_a_partition_behind_that_got_nothing_doubles_the_wait_up_to_the_limit() -> None:
    p = policy()
    assert [p.next_wait([answered(A, 3, 500)], now=0) for _ in range(5)] == [200, 400, 800, 800, 800]


def test_a_fetch_that_failed_is_not_starvation() -> None:
    p = policy()
    failed = PartitionView(A, 3, 500, answered_at=7)  # no new answer since: the fetch failed or was thrown away
    assert [p.next_wait([failed], now=0) for _ in range(10)] == [200] * 10, "a broker restart must not raise it"


def test_progress_keeps_the_wait_it_has_learned() -> None:
    p = policy()
    p.next_wait([answered(A, 3, 500)], now=0)
    assert p.next_wait([answered(A, 3, 500)], now=1) == 400  # starved once
    assert p.next_wait([answered(A, 40, 500)], now=2) == 400, "records came: no more doubling"
    assert p.next_wait([answered(A, 500, 500)], now=3) == 50, "caught up: the short wait"
    assert p.next_wait([answered(A, 500, 520)], now=600) == 400, "behind again: the learned wait, not a new search"


def test_a_partition_that_gets_nothing_at_the_longest_wait_is_a_hole_for_a_while() -> None:
    p = policy()
    waits = [p.next_wait([answered(A, 9, 11), answered(B, 0, 0)], now=0) for _ in range(3 + STUCK_AFTER)]
    assert waits[:3] == [200, 400, 800]
    assert waits[-1] == 50, "a hole must not make every later fetch of the other partitions wait long"
    assert p.next_wait([answered(A, 9, 11), answered(B, 0, 0)], now=1) == 50
    assert p.next_wait([answered(A, 9, 12), answered(B, 0, 0)], now=1) == 800, "new records behind it: try again"


def test_a_hole_is_tried_again_after_a_while_even_if_nothing_new_arrives() -> None:
    p = policy()
    for _ in range(3 + STUCK_AFTER):
        p.next_wait([answered(A, 9, 11)], now=0)
    assert p.next_wait([answered(A, 9, 11)], now=HOLE_RETRY_S - 1) == 50
    assert p.next_wait([answered(A, 9, 11)], now=HOLE_RETRY_S) == 800, "perhaps it was only very slow"


def test_partitions_of_another_request_do_not_disturb_one_another() -> None:
    # One policy per consumer, one request per broker: starvation on A is seen although B's request comes between.
    p = policy()
    assert p.next_wait([answered(A, 3, 500)], now=0) == 200
    assert p.next_wait([answered(B, 0, 0)], now=0) == 50
    assert p.next_wait([answered(A, 3, 500)], now=0) == 400


def test_a_catch_up_wait_below_the_configured_wait_is_raised_to_it() -> None:
    p = FetchWaitPolicy(base_ms=500, catch_up_ms=200, max_ms=100)
    assert (p.catch_up_ms, p.max_ms) == (500, 500)
    assert p.next_wait([answered(A, 0, 9)], now=0) == 500
