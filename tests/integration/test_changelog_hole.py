"""A hole at the end of a table's changelog does not stop a worker from recovering.

Tansu advances a partition's watermark before it writes the batch object; when object storage dies between the
two, the watermark counts records that will never exist (docs/bus-facts.md). On CI such a hole sat at the end of
the echo table's changelog after an S3 outage: the worker's recovery searched for the end until Faust's recovery
step timed out, Faust took the timeout for a stop and never recovered, and the worker consumed nothing again. The
hole is made here as Tansu leaves it: a changelog record is produced and its batch object removed from S3.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aioboto3
import psutil
import pytest

from infra.bus.clients import producer as make_producer
from infra.config import Settings
from infra.console import ChatSession
from infra.embedded import EmbeddedStack
from infra.embedded.checks import s3_client_kwargs
from infra.testing import embedded_settings

pytestmark = pytest.mark.integration
CHANGELOG = "switchboard-echo-state-changelog"


async def _hole_at_the_end(settings: Settings, partition: int) -> int:
    """Produce a record to the echo changelog's `partition` and delete its batch object: a hole at the end."""
    producer = make_producer(settings)
    await producer.start()
    try:
        sent = await producer.send_and_wait(CHANGELOG, key=b"hole-probe", value=b"{}", partition=partition)
    finally:
        await producer.stop()
    prefix = f"clusters/tansu_cluster/topics/{CHANGELOG}/partitions/{partition:010d}/records/"
    key = f"{prefix}{sent.offset:020d}.batch"
    async with aioboto3.Session().client("s3", **s3_client_kwargs(settings)) as s3:
        listed = await s3.list_objects_v2(Bucket=settings.s3.broker_bucket, Prefix=prefix)
        keys = [item["Key"] for item in listed.get("Contents", [])]
        assert key in keys, f"Tansu's layout changed: {key} not among {keys[-3:]}"
        await s3.delete_object(Bucket=settings.s3.broker_bucket, Key=key)
    return sent.offset


async def test_a_worker_recovers_a_table_whose_changelog_ends_in_a_hole(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, workers={"count": 1}, bridge={"enabled": False})
    stack = EmbeddedStack(settings)
    log = settings.data_dir / "logs" / "worker-0.log"
    try:
        await stack.up()
        async with ChatSession(settings, "echo", "hole-1") as chat:
            _, replies = await chat.say("before the hole")
        assert [reply.data["text"] for reply in replies] == ["You said: before the hole (turn 1)"]
        for partition in range(4):  # wherever the session's state lives, every partition's changelog ends in a hole
            await _hole_at_the_end(settings, partition)

        worker = next(record for record in stack.records() if record.name == "worker-0")
        os.killpg(worker.pid, signal.SIGKILL)
        psutil.Process(worker.pid).wait(10)
        await stack.up()  # the worker again; `up` waits until its recovery has completed and it consumes

        async with ChatSession(settings, "echo", "hole-1") as chat:
            _, replies = await chat.say("after the hole")
        assert [reply.data["text"] for reply in replies] == ["You said: after the hole (turn 2)"], \
            "the session's state was recovered"
        text = log.read_text(encoding="utf-8")
        assert "partition ends not confirmed" in text, text[-3000:]
    finally:
        stack.down()
