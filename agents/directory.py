"""The agent directory: who each agent is and what it answers, as announced on the compacted directory topic.

Pure: a card is derived from a policy, and an announcement event from a card with an id that depends only on what is
announced, so every worker that announces the same agent sends the same event (readers drop the copies), and a
changed policy replaces the old card (the topic is compacted by agent name). The dialogue core resolves
`delegate capability: X` and checks `to:` against the cards of the agents the deployment runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agents.dialogue.model import Policy
from topics import catalog
from topics.event import Event, derived_id

ANNOUNCEMENT = "switchboard.agents.Announcement"
DIRECTORY_SOURCE = "/switchboard/directory"


@dataclass(frozen=True)
class AgentCard:
    """One agent as others see it: `capabilities` are the requests it answers (its `{request: NAME}` triggers)."""

    name: str
    description: str = ""
    owner: str = ""
    capabilities: tuple[str, ...] = ()
    intents: tuple[str, ...] = ()
    policy_version: str = ""

    @property
    def inbox(self) -> str:
        return catalog.agent_topics(self.name).signals.name


#: What the dialogue core needs to route requests: agent name -> card.
Directory = Mapping[str, AgentCard]


def card_of(policy: Policy) -> AgentCard:
    """The card a policy announces."""
    requests = sorted({trigger.request for dialogue in policy.dialogues for trigger in dialogue.triggers
                       if trigger.request is not None})
    return AgentCard(name=policy.agent, description=policy.description, owner=policy.owner,
                     capabilities=tuple(requests), intents=tuple(intent.name for intent in policy.intents),
                     policy_version=policy.version)


def directory_of(policies: Iterable[Policy]) -> dict[str, AgentCard]:
    return {policy.agent: card_of(policy) for policy in policies}


def announcement(card: AgentCard, worker: str | None = None, time: datetime | None = None) -> Event:
    """The directory event for `card`, keyed by the agent's name."""
    data = {"agent": card.name, "description": card.description, "owner": card.owner,
            "capabilities": list(card.capabilities), "intents": list(card.intents), "inbox": card.inbox,
            "policy_version": card.policy_version, "worker": worker}
    identity = "/".join([card.name, card.policy_version, card.description, card.owner, *card.capabilities])
    event = Event(type=ANNOUNCEMENT, source=DIRECTORY_SOURCE, data=data, subject=card.name,
                  id=derived_id("agents.announce", identity))
    return event if time is None else Event(type=event.type, source=event.source, data=data, subject=card.name,
                                            id=event.id, time=time)


def card_from(data: Mapping[str, Any]) -> AgentCard:
    """A card read back from an announcement's payload."""
    return AgentCard(name=str(data["agent"]), description=str(data.get("description") or ""),
                     owner=str(data.get("owner") or ""), capabilities=tuple(data.get("capabilities") or ()),
                     intents=tuple(data.get("intents") or ()), policy_version=str(data.get("policy_version") or ""))
