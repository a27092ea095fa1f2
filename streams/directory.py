"""Workers announce the agents they run on the agent directory (a compacted topic), once they have started.

Every worker of a deployment runs the same agents, so they all announce the same cards; an announcement's id depends
only on what it says, so readers drop the copies, and compaction keeps the latest card per agent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import faust

from agents.dialogue.processor import DialogueAgent
from agents.directory import announcement, card_of
from streams.shell import StreamShell
from topics import catalog
from topics.binding import encode_event
from topics.processor import Processor, StatefulProcessor

log = logging.getLogger(__name__)


def announce_agents(app: faust.App, shell: StreamShell, processors: Sequence[Processor | StatefulProcessor],
                    worker: str) -> None:
    """Publish a card for every dialogue agent among `processors` when `app` starts (a Faust task)."""
    cards = [card_of(processor.policy) for processor in processors if isinstance(processor, DialogueAgent)]
    if not cards:
        return

    async def announce() -> None:
        records = [(catalog.AGENT_DIRECTORY, encode_event(announcement(card, worker), shell.codec))
                   for card in cards]
        await shell.publish(records)
        log.info("announced %d agent(s) on %s: %s", len(cards), catalog.AGENT_DIRECTORY.name,
                 ", ".join(card.name for card in cards))

    announce.__qualname__ = announce.__name__ = "announce_agents"
    app.task(announce)
