"""`call_workflow: device_reading` over the bus: the request is re-keyed by device id for the device twin.

A dialogue's workflow requests are keyed by run id, but a device's readings live in the twin keyed by device id; so
this stateless stage forwards each `device_reading` request to `iot.queries`, keyed by the device it names, where
the twin reads it in order with that device's telemetry. A request it cannot forward is answered here, failed, so the
waiting session moves on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from topics import catalog
from topics.errors import TopicError
from topics.event import Event
from topics.processor import Emit

#: The workflows answered by the IoT processors instead of a workflow runner.
DEVICE_READING = "device_reading"
IOT_WORKFLOWS = (DEVICE_READING,)
SIGNAL = "switchboard.dialogue.Signal"
REQUEST = "switchboard.workflow.Request"
SOURCE = "/switchboard/iot/queries"
_DEVICE_ID = re.compile(r"[^/+#\s\x00]{1,128}")


def request_input(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request's input object ({} when it is not a JSON object)."""
    try:
        payload = json.loads(request.get("input") or "{}")
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def workflow_result(cause: Event, request: Mapping[str, Any], source: str, *, output: Mapping[str, Any] | None = None,
                    error: str | None = None) -> Sequence[Emit]:
    """The `workflow_result` signal answering `request` on its `reply_to` (the agent's inbox), as the workflow
    runners send it; nothing when the request names no reply topic or one that takes no signals."""
    reply_to = request.get("reply_to")
    if not reply_to:
        return ()
    try:
        spec = catalog.get(str(reply_to))
    except TopicError:
        return ()
    if spec.value_schema != SIGNAL:
        return ()
    session = str(request.get("reply_key") or request["run_id"])
    result = {"run_id": request["run_id"], "status": "failed" if error else "succeeded",
              "output": dict(output) if output is not None else None, "error": error}
    data = {"session_id": session, "agent": request["requester"], "kind": "workflow_result",
            "name": request["workflow"], "text": None, "data": json.dumps(result, sort_keys=True, default=str)}
    return (Emit(spec, cause.caused(SIGNAL, source, data, effect="result", subject=session, time=cause.time)),)


class DeviceQueryRouter:
    """`workflow.requests` (`device_reading` only) -> `iot.queries`, keyed by the input's `device_id`."""

    name = "iot-queries"
    source = catalog.WORKFLOW_REQUESTS

    def handle(self, event: Event) -> Sequence[Emit]:
        request = event.data
        if request["workflow"] not in IOT_WORKFLOWS:
            return ()
        payload = request_input(request)
        device, metric = payload.get("device_id"), payload.get("metric")
        if not isinstance(device, str) or not _DEVICE_ID.fullmatch(device):
            return workflow_result(event, request, SOURCE, error=f"device_reading needs input device_id, a device "
                                                                 f"id; got {device!r} (is the room declared in the "
                                                                 "policy's iot.rooms?)")
        if not isinstance(metric, str) or not metric:
            return workflow_result(event, request, SOURCE,
                                   error=f"device_reading needs input metric, e.g. temperature; got {metric!r}")
        query = event.caused(REQUEST, SOURCE, dict(request), effect="query", subject=device, time=event.time)
        return (Emit(catalog.IOT_QUERIES, query),)
