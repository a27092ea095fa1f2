"""Per-subject order of the publishes of concurrently handled inputs.

A stateless processor with several actors (`concurrency` > 1) handles inputs side by side, so a slow input can
finish after a later one. Readers that keep state per subject (a dialogue agent's session) need that subject's
effects in input order. An input takes its place in its subject's queue as soon as it is decoded, before the
handler runs; its effects are published only after the previous input of the same subject has published (or
failed), and inputs of other subjects never wait for each other.

Places are taken in input order because the shell takes them in the same event-loop step in which the actor takes
the input from the stream's queue (no await in between), and the consumer fills that queue in offset order per
partition; a subject's inputs all come from one partition (the subject is the Kafka key).
"""

from __future__ import annotations

import asyncio


class Place:
    """One input's place in its subject's queue: `ready` waits for the input before it, `leave` lets the next go.

    A place is *done* once its input and every input before it have left, so an input that leaves early (its
    handler failed before it waited) never lets a later input of its subject publish before an earlier one. Leaving
    is synchronous: the places behind that had already left are done in the same step."""

    def __init__(self, order: SubjectOrder, subject: str, before: Place | None) -> None:
        self._order = order
        self._subject = subject
        self._before = before
        self._after: Place | None = None
        self._has_left = False
        self._done = asyncio.Event()

    async def ready(self) -> None:
        """Return once the previous input of the subject has left (at once when there is none)."""
        before = self._before
        if before is not None:
            await before._done.wait()

    def leave(self) -> None:
        """This input has published (or given up). Idempotent. The next input of the subject may publish once
        this one and all before it have left."""
        self._has_left = True
        place: Place | None = self
        while place is not None and place._has_left and not place._done.is_set() and (
                place._before is None or place._before._done.is_set()):
            place._done.set()
            place._before = None  # done: no chain of finished places is kept alive
            place._order._left(place._subject, place)
            place = place._after


class SubjectOrder:
    """The queues of the subjects that have an input in flight; a subject is forgotten when its queue empties."""

    def __init__(self) -> None:
        self._last: dict[str, Place] = {}

    def enter(self, subject: str) -> Place:
        """Queue an input of `subject` behind the ones already in flight. Synchronous, so it cannot be overtaken."""
        before = self._last.get(subject)
        place = Place(self, subject, before)
        if before is not None:
            before._after = place
        self._last[subject] = place
        return place

    def _left(self, subject: str, place: Place) -> None:
        if self._last.get(subject) is place:
            del self._last[subject]

    def __len__(self) -> int:
        """Subjects with an input in flight."""
        return len(self._last)
