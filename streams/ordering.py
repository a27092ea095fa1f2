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
    """One input's place in its subject's queue: `ready` waits for the input before it, `leave` lets the next go."""

    def __init__(self, order: SubjectOrder, subject: str, before: asyncio.Event | None) -> None:
        self._order = order
        self._subject = subject
        self._before = before
        self._done = asyncio.Event()

    async def ready(self) -> None:
        """Return once the previous input of the subject has left (at once when there is none)."""
        if self._before is not None:
            await self._before.wait()

    def leave(self) -> None:
        """This input has published (or given up): the next input of the subject may publish. Idempotent."""
        self._done.set()
        self._order._left(self._subject, self._done)


class SubjectOrder:
    """The queues of the subjects that have an input in flight; a subject is forgotten when its queue empties."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Event] = {}

    def enter(self, subject: str) -> Place:
        """Queue an input of `subject` behind the ones already in flight. Synchronous, so it cannot be overtaken."""
        place = Place(self, subject, self._last.get(subject))
        self._last[subject] = place._done
        return place

    def _left(self, subject: str, done: asyncio.Event) -> None:
        if self._last.get(subject) is done:
            del self._last[subject]

    def __len__(self) -> int:
        """Subjects with an input in flight."""
        return len(self._last)
