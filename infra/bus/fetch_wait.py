"""A consumer that is behind asks the broker for a longer fetch wait, so that a slow broker cannot starve it.

Tansu 0.6.0 on S3 gives a fetch at most its `max_wait` to find records, and finding them starts with an S3 LIST of
every batch object of the partition (one object per produced batch). Once that LIST takes longer than the wait,
the fetch returns nothing, every time: a consumer behind on a partition of 1,500 one-record batches read 0 records
in 20 s with a 10 or 20 ms wait, 65 records/s with 30 ms, 665/s with 50 ms and 1,514/s with 200 ms
(docs/bus-facts.md). A long wait for every fetch is no answer either: Tansu does not answer a waiting fetch when
data arrives, so at the end of a partition each hop would cost up to that wait.

So the wait depends on where the consumer is. A fetch for partitions that are all at their end asks for the
configured wait (`kafka.fetch_max_wait_ms`, short). A fetch that includes a partition behind its high watermark
asks for the catch-up wait (`kafka.fetch_catch_up_wait_ms`): a fetch that finds records returns as soon as it has
read them, so the longer wait costs nothing there. When a fetch is answered and a partition behind got nothing
from it (starved), the catch-up wait doubles, up to `kafka.fetch_catch_up_max_wait_ms`; a fetch that failed (broker
restarting, object storage down) is not counted. The wait is not lowered again: a listing only grows with its
partition, and a fetch with records returns once it has read them, so a wait longer than needed costs nothing
there, while one too short wastes a listing on every fetch (easing it every 10 s made a loaded stack worse). A partition
that still gets nothing at the longest wait is a hole (docs/bus-facts.md: Tansu can advance a high watermark past a
batch it failed to store): it stops counting as behind until its high watermark moves or 30 s pass, so it cannot
make every later fetch wait long.

On a real Kafka broker a fetch with records to read returns at once whatever the wait, so this changes nothing
there. It is installed on aiokafka's fetcher for the whole process (`install`), by every consumer the project
builds (`infra.bus.clients.consumer`) and by the worker transport.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, NamedTuple

from aiokafka.consumer.fetcher import Fetcher
from aiokafka.structs import TopicPartition

from infra.bus import aiokafka_version

STUCK_AFTER = 3  # answered fetches in a row with nothing, at the longest wait, before a partition counts as a hole
HOLE_RETRY_S = 30.0  # a hole is tried at the longest wait again after this, in case it was only very slow


class PartitionView(NamedTuple):
    """What the fetcher knows of one partition when it builds a request."""

    tp: TopicPartition
    position: int
    highwater: int | None  # from the last answered fetch; None before the first
    answered_at: int | None  # when a fetch for it was last answered without error (aiokafka's ms timestamp)


@dataclass
class _Behind:
    position: int
    answered_at: int | None


@dataclass
class FetchWaitPolicy:
    """The wait for one consumer's next fetch, from where its partitions are (pure apart from `now`; no I/O)."""

    base_ms: int
    catch_up_ms: int
    max_ms: int
    wait_ms: int = field(init=False)
    last_wait_ms: int | None = field(default=None, init=False)
    _behind: dict[TopicPartition, _Behind] = field(default_factory=dict, init=False, repr=False)
    _starved_at_max: dict[TopicPartition, int] = field(default_factory=dict, init=False, repr=False)
    _holes: dict[TopicPartition, tuple[int, float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.catch_up_ms = max(self.catch_up_ms, self.base_ms)
        self.max_ms = max(self.max_ms, self.catch_up_ms)
        self.wait_ms = self.catch_up_ms

    def next_wait(self, partitions: Iterable[PartitionView], now: float) -> int:
        """The wait for a fetch of `partitions` (one request; `now` in seconds, monotonic)."""
        behind: dict[TopicPartition, PartitionView] = {}
        for view in partitions:
            tp = view.tp
            if view.highwater is None or view.position >= view.highwater:
                self._forget(tp)
                continue
            hole = self._holes.get(tp)
            if hole is not None:
                if hole[0] == view.highwater and now - hole[1] < HOLE_RETRY_S:
                    continue  # nothing came from it at the longest wait; waiting long for it would delay the rest
                del self._holes[tp]
            behind[tp] = view
        # Starved: behind at the same position as at its previous request, and a fetch was answered in between
        # (a fetch that failed or was thrown away says nothing about the wait).
        starved = [tp for tp, view in behind.items()
                   if (seen := self._behind.get(tp)) is not None and seen.position == view.position
                   and view.answered_at is not None and view.answered_at != seen.answered_at]
        if starved:
            if self.wait_ms >= self.max_ms:
                for tp in starved:
                    self._starved_at_max[tp] = self._starved_at_max.get(tp, 0) + 1
                    if self._starved_at_max[tp] >= STUCK_AFTER:
                        highwater = behind[tp].highwater
                        assert highwater is not None
                        self._holes[tp] = (highwater, now)
                        self._forget(tp)
                        del behind[tp]
            self.wait_ms = min(self.max_ms, self.wait_ms * 2)
        for tp, view in behind.items():
            if tp not in starved:
                self._starved_at_max.pop(tp, None)
            self._behind[tp] = _Behind(view.position, view.answered_at)
        self.last_wait_ms = self.wait_ms if behind else self.base_ms
        return self.last_wait_ms

    def _forget(self, tp: TopicPartition) -> None:
        self._behind.pop(tp, None)
        self._starved_at_max.pop(tp, None)


@dataclass
class _Limits:
    """The catch-up waits `install` set for this process (None: not installed)."""

    catch_up_ms: int | None = None
    max_ms: int = 0


_limits = _Limits()
_original_actions = Fetcher._get_actions_per_node


def _policy(fetcher: Any) -> FetchWaitPolicy | None:
    if _limits.catch_up_ms is None:
        return None
    policy: FetchWaitPolicy | None = getattr(fetcher, "_switchboard_fetch_wait", None)
    if policy is None:
        policy = FetchWaitPolicy(fetcher._fetch_max_wait_ms, _limits.catch_up_ms, _limits.max_ms)
        fetcher._switchboard_fetch_wait = policy
    return policy


def _get_actions_per_node(self: Any, assignment: Any) -> Any:
    actions = _original_actions(self, assignment)
    policy = _policy(self)
    if policy is not None:
        now = monotonic()
        for _node, request in actions[0]:
            views = []
            for topic, partitions in request.topics:
                for partition, position, _max_bytes in partitions:
                    tp = TopicPartition(topic, partition)
                    state = assignment.state_value(tp)
                    views.append(PartitionView(tp, position, state.highwater, state.timestamp))
            request._max_wait_ms = policy.next_wait(views, now)
    return actions


def install(catch_up_ms: int, max_ms: int) -> None:
    """Make every aiokafka consumer in this process ask for a catch-up wait while it is behind (see the module
    docstring). Idempotent; a later call changes the limits for fetchers that have not fetched yet."""
    aiokafka_version.check("infra.bus.fetch_wait", "Fetcher._get_actions_per_node")
    _limits.catch_up_ms, _limits.max_ms = catch_up_ms, max_ms
    Fetcher._get_actions_per_node = _get_actions_per_node


def installed() -> bool:
    """True when `install()` has run in this process."""
    return Fetcher.__dict__.get("_get_actions_per_node") is _get_actions_per_node
