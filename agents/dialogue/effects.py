"""What one step of a session asks the world to do. Plain data; the processor turns each into an event on a topic.

The core returns them in order, and the processor derives every event id from the input event's id and the effect's
position, so a redelivered input produces the same ids and readers drop the copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class SendReply:
    """A message to the user; `author` is set when a person wrote it (after a handoff)."""

    text: str
    author: str | None = None


@dataclass(frozen=True)
class RecordTransition:
    """One state change, for the audit trail (`agent.<name>.transitions`)."""

    from_state: str
    to_state: str
    reason: str


@dataclass(frozen=True)
class SendCommand:
    """A command for a device or another agent on a declared command topic."""

    topic: str
    target: str
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StartWorkflow:
    """Start workflow `workflow`; its result comes back to the session as a `workflow_result` signal."""

    run_id: str
    workflow: str
    input: Mapping[str, Any] = field(default_factory=dict)


HandoffKind = Literal["requested", "user_message", "taken", "replied", "released"]


@dataclass(frozen=True)
class NotifyHandoff:
    """An entry for the human queue (`dialogue.handoffs`)."""

    kind: HandoffKind
    reason: str | None = None
    text: str | None = None
    person: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # (role, text), on `requested`


Effect = SendReply | RecordTransition | SendCommand | StartWorkflow | NotifyHandoff
