"""What a stream processor is to the shell: a pure handler from one input event to the events it emits."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from topics.event import Event
from topics.spec import TopicSpec


@dataclass(frozen=True)
class Emit:
    """An event to publish on a topic as an effect of handling an input."""

    topic: TopicSpec
    event: Event


class Processor(Protocol):
    """A pure, deterministic step: the shell decodes, calls `handle`, publishes, and only then acknowledges.

    Effects must carry ids derived from the input (`Event.caused`), so redelivery yields identical events that
    readers deduplicate. `handle` may be async where it must call out (a served model); it must still give the
    same effects for the same input. Optional attributes: `concurrency` (inputs handled at once, default 1) and
    `ordered_by_subject` (with concurrency, publish each subject's effects in input order; streams/ordering.py).
    """

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> TopicSpec: ...

    def handle(self, event: Event) -> Sequence[Emit] | Awaitable[Sequence[Emit]]: ...


State = Mapping[str, Any]


@runtime_checkable
class StatefulProcessor(Protocol):
    """A pure state-machine step per subject (session, workflow run): `(state, event) -> (new_state, effects)`.

    The shell keeps each subject's state with the offset of the last input applied to it, in one table record, so
    state and position never disagree: a redelivered input is recognised and skipped, and a restart resumes exactly.
    State must be JSON-serialisable. A processor may also have `sources`, several co-partitioned topics keyed by the
    same subject (a dialogue agent reads its users' turns and its inbox); `source` is then the first of them.
    """

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> TopicSpec: ...

    def initial(self, subject: str) -> State: ...

    def step(self, state: State, event: Event) -> tuple[State, Sequence[Emit]]: ...


@runtime_checkable
class Sweeping(Protocol):
    """A stateful processor whose subjects can fall due without an input: an idle session's deadline.

    The shell calls `sweep` every so often for each subject held by this worker; what it returns is published like
    any effect. The events should go to one of the processor's own sources (its inbox), so the state change itself
    is an ordinary, replayable step; ids should be deterministic per deadline, and the step should ignore an event
    that is no longer due, because a sweep may run again before the first one was applied.
    """

    def sweep(self, subject: str, state: State, now: datetime) -> Sequence[Emit]: ...


@runtime_checkable
class Closing(Protocol):
    """A processor that holds a connection of its own (object storage, a model client): the worker calls `close`
    once as it stops, after its consumer has stopped and before its producer flushes, so nothing is left open."""

    async def close(self) -> None: ...
