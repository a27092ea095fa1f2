"""Test helpers for Switchboard users and for our own suite: an isolated embedded stack on free ports, and ways to
await events on the bus instead of sleeping.

    async with running_stack(tmp_path) as settings:
        async with ChatSession(settings, "echo", "s1") as chat:
            turn, replies = await chat.say("hello")
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

from infra.bus.reading import read_topic
from infra.config import Settings, load_settings
from infra.embedded import EmbeddedStack
from topics.binding import decode_event
from topics.codec import AvroCodec
from topics.errors import DecodeError
from topics.event import Event
from topics.spec import TopicSpec


def _free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ephemeral_low() -> int:
    """Where the kernel's ephemeral ports start (Linux; 32768 elsewhere, the usual value)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(count: int, *, grpc_offset: int = 10000, low: int = 12000, high: int | None = None) -> list[int]:
    """`count` consecutive free ports whose +`grpc_offset` neighbours (weed's gRPC ports) are free too.

    All below the kernel's ephemeral range (`high` by default): the kernel hands those out to every outgoing
    connection and every `bind(0)`, weed mini's own random port included, so a port found free there could be
    taken before the stack binds it (seen on CI: Tansu's port, between the check and the start)."""
    top = (_ephemeral_low() - grpc_offset) if high is None else high
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(low, top - count)
        ports = list(range(base, base + count))
        if all(_free(p) and _free(p + grpc_offset) for p in ports):
            return ports
    raise RuntimeError("no block of free ports found on 127.0.0.1")


def embedded_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an isolated embedded stack under `data_dir`, on free ports.

    Without the supervisor (`embedded.supervise`), unless `embedded={"supervise": True}` asks for it: a test that
    kills a component decides when it comes back."""
    kafka, s3, master, volume, filer, admin, mqtt = free_port_block(7)
    embedded = {"kafka_port": kafka, "s3_port": s3, "weed_master_port": master, "weed_volume_port": volume,
                "weed_filer_port": filer, "weed_admin_port": admin, "mqtt_port": mqtt, "supervise": False,
                **overrides.pop("embedded", {})}
    return load_settings(data_dir=data_dir, embedded=embedded, **overrides)


@asynccontextmanager
async def running_stack(data_dir: Path | None = None, settings: Settings | None = None) -> AsyncIterator[Settings]:
    """Start an embedded stack, yield its settings, and stop it (every process) afterwards."""
    if settings is None:
        if data_dir is None:
            raise ValueError("give data_dir or settings")
        settings = embedded_settings(data_dir)
    stack = EmbeddedStack(settings)
    try:
        await stack.up()
        yield settings
    finally:
        stack.down()


async def wait_for_event(settings: Settings, topic: TopicSpec, predicate: Callable[[Event], bool],
                         timeout_s: float = 30.0) -> Event:
    """The first event on `topic` (from the beginning) that satisfies `predicate`, awaited as it arrives."""
    found = await collect_events(settings, topic, predicate, count=1, timeout_s=timeout_s)
    return found[0]


async def collect_events(settings: Settings, topic: TopicSpec, predicate: Callable[[Event], bool], *,
                         count: int, timeout_s: float = 30.0) -> list[Event]:
    """Read `topic` from the beginning until `count` matching events arrived; TimeoutError otherwise."""
    import asyncio

    codec = AvroCodec()
    found: list[Event] = []

    async def scan() -> None:
        async for record in read_topic(settings, topic.name, follow=True):
            try:
                event = decode_event(record.value, record.headers, codec)
            except DecodeError:
                continue
            if predicate(event):
                found.append(event)
                if len(found) >= count:
                    return

    try:
        await asyncio.wait_for(scan(), timeout_s)
    except TimeoutError:
        raise TimeoutError(f"{len(found)} of {count} expected events on {topic.name} within {timeout_s}s") from None
    return found


async def await_all(settings: Settings, topic: TopicSpec, wanted: set[str], key: Callable[[Event], str | None],
                    timeout_s: float = 60.0) -> dict[str, list[Event]]:
    """Read `topic` until an event with `key(event)` in `wanted` has arrived for every wanted key.

    Returns every matching event per key (redelivered duplicates included), for as many keys as arrived in time;
    compare the result with `wanted` to see what is missing.
    """
    import asyncio

    codec = AvroCodec()
    found: dict[str, list[Event]] = {}

    async def scan() -> None:
        async for record in read_topic(settings, topic.name, follow=True):
            try:
                event = decode_event(record.value, record.headers, codec)
            except DecodeError:
                continue
            k = key(event)
            if k in wanted:
                found.setdefault(k, []).append(event)
                if len(found) == len(wanted):
                    return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(scan(), timeout_s)
    return found
