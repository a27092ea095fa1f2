"""The fetch wait a consumer asks for, from where its partitions are (`infra.bus.fetch_wait.FetchWaitPolicy`)."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from infra.bus.fetch_wait import STUCK_AFTER, FetchWaitPolicy

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


def policy() -> FetchWaitPolicy:
    return FetchWaitPolicy(base_ms=50, catch_up_ms=200, max_ms=800)


def test_at_the_end_of_every_partition_the_configured_wait_is_used() -> None:
    p = policy()
    assert p.next_wait([(A, 10, 10), (B, 0, 0)]) == 50
    assert p.next_wait([(A, 12, 11)]) == 50, "past Tansu's high watermark (base of the last batch + 1) is the end"
    assert p.next_wait([(A, 0, None)]) == 50, "no high watermark yet: nothing known to be behind"


def test_one_partition_behind_makes_the_fetch_ask_for_the_catch_up_wait() -> None:
    p = policy()
    assert p.next_wait([(A, 10, 10), (B, 3, 500)]) == 200


def test_a_partition_behind_that_got_nothing_doubles_the_wait_up_to_the_limit() -> None:
    p = policy()
    assert [p.next_wait([(A, 3, 500)]) for _ in range(5)] == [200, 400, 800, 800, 800]


def test_progress_keeps_the_wait_it_has_learned() -> None:
    p = policy()
    p.next_wait([(A, 3, 500)])
    assert p.next_wait([(A, 3, 500)]) == 400  # starved once
    assert p.next_wait([(A, 40, 500)]) == 400, "records came: no more doubling"
    assert p.next_wait([(A, 80, 500)]) == 400
    assert p.next_wait([(A, 500, 500)]) == 50, "caught up: the short wait again"
    assert p.next_wait([(A, 500, 520)]) == 400, "behind again: the learned catch-up wait, not a fresh search"


def test_a_partition_that_gets_nothing_at_the_longest_wait_is_a_hole_until_its_high_watermark_moves() -> None:
    p = policy()
    waits = [p.next_wait([(A, 9, 11), (B, 0, 0)]) for _ in range(3 + STUCK_AFTER)]
    assert waits[:3] == [200, 400, 800]
    assert waits[-1] == 50, "a hole must not make every later fetch of the other partitions wait long"
    assert p.next_wait([(A, 9, 11), (B, 0, 0)]) == 50
    assert p.next_wait([(A, 9, 12), (B, 0, 0)]) == 800, "new records behind the hole: try again"


def test_a_catch_up_wait_below_the_configured_wait_is_raised_to_it() -> None:
    p = FetchWaitPolicy(base_ms=500, catch_up_ms=200, max_ms=100)
    assert (p.catch_up_ms, p.max_ms) == (500, 500)
    assert p.next_wait([(A, 0, 9)]) == 500
