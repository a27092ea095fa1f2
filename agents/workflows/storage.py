"""Where task outputs are kept: object storage (S3 through aioboto3; SeaweedFS in the embedded stack).

The task worker writes every successful output to `workflows/<workflow>/<run id>/<task>/<attempt>.json` in the
configured bucket *before* it publishes the result, and looks there before it runs a command. So a command
delivered again after a crash (the worker killed between publishing and committing) finds its output and is
answered from storage: a task that succeeded is never run again. The same object is the claim check: an output
over `workflows.claim_check_bytes` travels as its URI, never on the bus.

Storage that does not answer is waited out, not reported as the task's failure: the worker retries with backoff,
holding the command (and so, with every slot busy, taking no new ones), because a result must never be lost and an
executor must not run again because its output could not be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from agents.workflows.errors import PermanentError, TransientError
from infra.config import Settings

__all__ = ["MemoryStore", "ObjectStore", "OutputStore", "S3Store", "output_key", "parse_s3_uri"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_DELAY_S: Final = 10.0


def output_key(workflow: str, run_id: str, task: str, attempt: int) -> str:
    """The deterministic key of one attempt's output: run id + task + attempt identify it."""
    return f"workflows/{workflow}/{run_id}/{task}/{attempt}.json"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise PermanentError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


class ObjectStore(Protocol):
    """Bytes by key, and by URI for what another writer stored."""

    def uri(self, key: str) -> str: ...

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, body: bytes, content_type: str = "application/json") -> str: ...

    async def read(self, uri: str) -> bytes: ...

    async def close(self) -> None: ...


class MemoryStore:
    """An object store in this process (`memory://` URIs): offline runs (`switchboard workflow run --offline`)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def uri(self, key: str) -> str:
        return f"memory://{key}"

    async def get(self, key: str) -> bytes | None:
        return self.objects.get(key)

    async def put(self, key: str, body: bytes, content_type: str = "application/json") -> str:
        self.objects[key] = body
        return self.uri(key)

    async def read(self, uri: str) -> bytes:
        key = uri.removeprefix("memory://")
        if not uri.startswith("memory://") or key not in self.objects:
            raise PermanentError(f"no stored object {uri!r} in this process (an offline run reads only its own)")
        return self.objects[key]

    async def close(self) -> None:
        """Nothing to release: the objects live as long as the store."""


@dataclass(frozen=True)
class S3Target:
    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Target:
        return cls(settings.s3_endpoint, settings.s3.bucket, settings.s3.access_key_id,
                   settings.s3.secret_access_key.get_secret_value(), settings.s3.region)


class S3Store:
    """An S3 bucket through aioboto3, one client kept open per store.

    `wait_s` bounds how long an unavailable store is waited out before `TransientError` (None: for ever, what
    the task worker uses; an executor uses 0 and lets the task's retry policy decide).
    """

    def __init__(self, target: S3Target, *, wait_s: float | None = None) -> None:
        self.target = target
        self.wait_s = wait_s
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, wait_s: float | None = None) -> S3Store:
        return cls(S3Target.from_settings(settings), wait_s=wait_s)

    def uri(self, key: str) -> str:
        return f"s3://{self.target.bucket}/{key}"

    async def get(self, key: str) -> bytes | None:
        return await self._retrying(f"reading {self.uri(key)}", lambda s3: _get(s3, self.target.bucket, key))

    async def put(self, key: str, body: bytes, content_type: str = "application/json") -> str:
        async def put(s3: Any) -> None:
            await s3.put_object(Bucket=self.target.bucket, Key=key, Body=body, ContentType=content_type)

        await self._retrying(f"writing {self.uri(key)}", put)
        return self.uri(key)

    async def read(self, uri: str) -> bytes:
        bucket, key = parse_s3_uri(uri)
        body = await self._retrying(f"reading {uri}", lambda s3: _get(s3, bucket, key))
        if body is None:
            raise PermanentError(f"the stored object {uri} does not exist (deleted, or another bucket's); run the "
                                 "workflow again")
        return body

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._client = self._stack = None

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                import aioboto3
                from botocore.config import Config

                stack = contextlib.AsyncExitStack()
                config = Config(connect_timeout=2, read_timeout=15, retries={"max_attempts": 2})
                self._client = await stack.enter_async_context(aioboto3.Session().client(
                    "s3", endpoint_url=self.target.endpoint_url, aws_access_key_id=self.target.access_key_id,
                    aws_secret_access_key=self.target.secret_access_key, region_name=self.target.region,
                    config=config))
                self._stack = stack
            return self._client

    async def _retrying(self, what: str, call: Callable[[Any], Awaitable[T]]) -> T:
        """`call(client)`, retried with backoff while the store cannot be reached or answers with an error."""
        import aiohttp
        from botocore.exceptions import BotoCoreError, ClientError

        started = time.monotonic()
        delay = 0.2
        while True:
            try:
                return await call(await self._s3())
            except (BotoCoreError, ClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                waited = time.monotonic() - started
                message = (f"object storage {self.target.endpoint_url} failed {what}: {type(exc).__name__}: {exc} "
                           f"(check that it runs and that bucket {self.target.bucket} exists with these "
                           "credentials)")
                if self.wait_s is not None and waited + delay > self.wait_s:
                    raise TransientError(message) from exc
                log.warning("%s; trying again in %.1fs (the task command waits, nothing is lost)", message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY_S)


async def _get(s3: Any, bucket: str, key: str) -> bytes | None:
    from botocore.exceptions import ClientError

    try:
        response = await s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    async with response["Body"] as body:
        data: bytes = await body.read()
    return data


class OutputStore:
    """Task outputs in an `ObjectStore`: one JSON record per successful attempt, at `output_key`."""

    def __init__(self, objects: ObjectStore, *, claim_check_bytes: int = 65536) -> None:
        self.objects = objects
        self.claim_check_bytes = claim_check_bytes

    async def find(self, workflow: str, run_id: str, task: str, attempt: int) -> tuple[str, dict[str, Any]] | None:
        """The stored success of this attempt, or of an earlier one of the same task (its URI and record): a task
        that succeeded once is not run again, even when a lost result made the run try it again."""
        for tried in (attempt, *range(1, attempt)):
            key = output_key(workflow, run_id, task, tried)
            body = await self.objects.get(key)
            if body is not None:
                return self.objects.uri(key), _record(body, self.objects.uri(key))
        return None

    async def save(self, workflow: str, run_id: str, task: str, attempt: int, record: Mapping[str, Any]) -> str:
        body = json.dumps(dict(record), sort_keys=True).encode()
        return await self.objects.put(output_key(workflow, run_id, task, attempt), body)

    async def load_output(self, uri: str) -> Any:
        """The output stored at `uri` (what a claim-check marker names)."""
        return _record(await self.objects.read(uri), uri)["output"]


def _record(body: bytes, uri: str) -> dict[str, Any]:
    try:
        record = json.loads(body)
    except ValueError as exc:
        raise PermanentError(f"the stored output {uri} is not JSON ({exc}); delete it and run the task again") \
            from exc
    if not isinstance(record, dict) or "output" not in record:
        raise PermanentError(f"{uri} is not a stored task output (no 'output' field)")
    return record
