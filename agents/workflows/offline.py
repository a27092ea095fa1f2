"""Run a workflow in this process, through the same processors, schemas and executors as on the bus, but with an
in-memory queue instead of Kafka: for `switchboard workflow run --offline` and tests.

Every event is encoded and decoded with the Avro codec on its way, so what works here also fits on the wire. A
retry's wait is skipped (the timer's event is sent at the not-before time at once), so offline runs are quick.
Outputs are kept in an in-process store, with the same claim checks as on the bus (`claim_check_bytes`), and the
run's output comes back resolved.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.workflows.claims import resolve_markers
from agents.workflows.core import due_retries
from agents.workflows.executors import BaseExecutor, discover_executors
from agents.workflows.model import Workflow
from agents.workflows.processors import TaskWorker, WorkflowRunner, at, request_event
from agents.workflows.storage import MemoryStore, OutputStore
from topics import catalog
from topics.binding import decode_event, encode_event
from topics.codec import AvroCodec
from topics.event import Event
from topics.processor import Emit


@dataclass
class OfflineRun:
    """What an offline run left behind: its final state and every event it published, per topic name."""

    state: dict[str, Any]
    published: dict[str, list[Event]] = field(default_factory=dict)
    #: The run's output with claim-checked parts read back from the store.
    output: Any = None

    @property
    def status(self) -> str:
        return str(self.state.get("status", "unknown"))


async def run_offline(workflow: Workflow, payload: Mapping[str, Any], *,
                      executors: Mapping[str, BaseExecutor] | None = None, run_id: str | None = None,
                      max_steps: int = 10_000, claim_check_bytes: int = 65536) -> OfflineRun:
    """Run `workflow` with input `payload` to its end."""
    codec = AvroCodec()
    executors = discover_executors() if executors is None else executors
    outputs = OutputStore(MemoryStore(), claim_check_bytes=claim_check_bytes)
    runner = WorkflowRunner({workflow.name: workflow}, executors=executors)
    worker = TaskWorker(executors, concurrency=1, worker="offline", outputs=outputs)
    run_id = run_id or str(uuid.uuid4())
    state: dict[str, Any] = {}
    result = OfflineRun(state)
    queue: deque[Emit] = deque([Emit(catalog.WORKFLOW_REQUESTS, request_event(run_id, workflow.name, payload))])

    def wire(emit: Emit) -> Event:
        record = encode_event(emit.event, codec)
        event = decode_event(record.value, record.headers, codec, emit.topic.value_schema)
        result.published.setdefault(emit.topic.name, []).append(event)
        return event

    for _ in range(max_steps):
        if not queue:
            due = due_retries(state, 2**62)
            if not due:
                break
            queue.extend(runner.sweep(run_id, state, at(state["tasks"][due[0].task]["not_before_ms"])))
            continue
        emit = queue.popleft()
        event = wire(emit)
        if emit.topic in runner.sources:
            new_state, emits = runner.step(state, event)
            state = dict(new_state)
            result.state = state
            queue.extend(emits)
        elif emit.topic == worker.source:
            queue.extend(await worker.handle(event))
    result.output = await resolve_markers(state.get("output"), outputs.load_output)
    return result
