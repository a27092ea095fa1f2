"""What a stream processor is to the shell: a pure handler from one input event to the events it emits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
    readers deduplicate.
    """

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> TopicSpec: ...

    def handle(self, event: Event) -> Sequence[Emit]: ...
