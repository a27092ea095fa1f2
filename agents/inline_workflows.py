"""Workflows written as one Python function each (an agent's `WORKFLOWS`), and a runner for them on the stream.

Workers run these functions on the workflow engine (`agents.registry.agent_engine_workflows`); stories call them
directly (`run_inline`). `InlineWorkflowRunner` answers requests without the engine, for a worker built with
`dialogue_processors(inline=True)`.

A dialogue's `call_workflow` publishes a `switchboard.workflow.Request`; this processor runs the named function and
sends the result to the request's `reply_to` topic (the agent's inbox) as a `workflow_result` signal. A function
raises `WorkflowFailed` for an expected failure (an order that does not exist); its message reaches the policy as
the result's `error`. An unknown workflow is answered with a failed result, so the waiting session moves on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from topics import catalog
from topics.errors import SwitchboardError
from topics.event import Event
from topics.processor import Emit

log = logging.getLogger(__name__)

WorkflowFunction = Callable[[Mapping[str, Any]], Mapping[str, Any]]
SIGNAL = "switchboard.dialogue.Signal"
SOURCE = "/switchboard/workflows/inline"


class WorkflowFailed(SwitchboardError):
    """A workflow could not produce its result; the message is shown to the policy as `workflow.error`."""


def run_inline(functions: Mapping[str, WorkflowFunction], workflow: str,
               payload: Mapping[str, Any]) -> dict[str, Any]:
    """Run one workflow function: `{status, output, error}`; deterministic when the function is."""
    function = functions.get(workflow)
    if function is None:
        return {"status": "failed", "output": None,
                "error": f"no workflow named {workflow!r}; known: {', '.join(sorted(functions)) or 'none'}"}
    try:
        return {"status": "succeeded", "output": dict(function(payload)), "error": None}
    except WorkflowFailed as exc:
        return {"status": "failed", "output": None, "error": str(exc)}


class InlineWorkflowRunner:
    """`workflow.requests` -> a `workflow_result` signal on each request's `reply_to` topic."""

    name = "workflows-inline"
    source = catalog.WORKFLOW_REQUESTS

    def __init__(self, functions: Mapping[str, WorkflowFunction], *, others: Collection[str] = ()) -> None:
        self.functions = dict(functions)
        #: Workflows the workflow engine (agents/workflows) runs: their requests are left to it.
        self.others = frozenset(others)

    def handle(self, event: Event) -> Sequence[Emit]:
        request = event.data
        if request["workflow"] in self.others:
            return ()
        try:
            payload = json.loads(request["input"] or "{}")
        except ValueError as exc:
            result: dict[str, Any] = {"status": "failed", "output": None, "error": f"input is not JSON: {exc}"}
        else:
            result = run_inline(self.functions, request["workflow"], payload if isinstance(payload, dict) else {})
        if not request.get("reply_to"):
            return ()
        spec = catalog.get(request["reply_to"])
        data = {
            "session_id": request.get("reply_key") or request["run_id"],
            "agent": request["requester"],
            "kind": "workflow_result",
            "name": request["workflow"],
            "text": None,
            "data": json.dumps({"run_id": request["run_id"], **result}, sort_keys=True, default=str),
        }
        signal = event.caused(SIGNAL, SOURCE, data, effect="result", subject=data["session_id"])
        return (Emit(spec, signal),)
