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


@dataclass(frozen=True)
class SendRequest:
    """A request to agent `agent` (a signal of kind `request` in its inbox); the answer comes back to this session
    as an `answer` signal carrying `request_id`. The addressed agent serves it in a session of its own, keyed by
    `request_id`."""

    agent: str
    request_id: str
    name: str
    input: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SendAnswer:
    """The answer to request `request_id`, for session `session` of agent `agent` (which asked)."""

    agent: str
    session: str
    request_id: str
    text: str | None = None
    output: Any = None


@dataclass(frozen=True)
class ForwardTurn:
    """The user's turn, passed on (as a turn on `dialogue.turns`) to agent `agent`, which has the conversation now.

    `via` is the agent the user addresses, which keeps routing the session's turns; `turn_id` is the user's own turn,
    which the replies answer."""

    agent: str
    via: str
    text: str
    turn_id: str
    channel: str = "api"
    locale: str | None = None


@dataclass(frozen=True)
class SendTransfer:
    """Ask agent `entry` (the one the user addresses) to route the session to `to` from now on, and to pass it the
    turn being handled, if any (`turn`: text, turn_id, channel, locale)."""

    entry: str
    to: str
    turn: Mapping[str, Any] | None = None


Effect = (SendReply | RecordTransition | SendCommand | StartWorkflow | NotifyHandoff | SendRequest | SendAnswer
          | ForwardTurn | SendTransfer)
