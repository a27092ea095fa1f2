"""A worker closes what its processors hold when it stops (object storage clients), so nothing is left open."""

from __future__ import annotations

from pathlib import Path

from agents.workflows.processors import TaskWorker
from agents.workflows.storage import OutputStore, S3Store
from infra.config import Settings, load_settings
from streams.app import create_app
from topics.processor import Closing


async def test_the_task_workers_object_storage_client_is_closed_at_shutdown(tmp_path: Path) -> None:
    settings: Settings = load_settings(data_dir=tmp_path)
    store = S3Store.from_settings(settings)
    worker = TaskWorker({}, outputs=OutputStore(store))
    assert isinstance(worker, Closing)
    opened = await store._s3()  # the client a task attempt opens; creating it contacts nobody
    assert opened is not None

    app = create_app(settings, [worker])
    await app.on_before_shutdown.send()

    assert store._client is None and store._stack is None
