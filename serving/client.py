"""The worker's side of the intents deployment: batches concurrent calls, times them out, and stops calling for a
while after a failure, so a turn never waits on a model that is down.

Calls made in the same event-loop tick (the stream shell handles a fetched batch of turns concurrently) travel as one
request of several turns; Ray Serve's `@serve.batch` then merges the requests of all workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from infra.config import Settings
from serving.answers import IntentPrediction
from serving.cluster import intents_app_name
from serving.contract import check_answers, prediction
from serving.errors import ServingError, ServingTimeoutError, ServingUnavailableError, UnknownAgentModelError

log = logging.getLogger(__name__)
HandleFactory = Callable[[], Any]  # returns an object with `.recognise.remote(pairs)` -> awaitable


def _ray_handle(settings: Settings) -> HandleFactory:
    def factory() -> Any:
        from serving import cluster

        cluster.connect(cluster.resolve_address(settings))
        return cluster.handle(settings, cluster.INTENTS_SUFFIX)

    return factory


class IntentClient:
    """Calls the served intent model for (agent, text) pairs; raises `ServingError` when it cannot answer in time."""

    def __init__(self, settings: Settings, handle_factory: HandleFactory | None = None) -> None:
        self.settings = settings
        self.timeout_s = settings.serving.request_timeout_s
        self.retry_after_s = settings.serving.retry_after_s
        self.max_batch = settings.serving.max_batch_size
        # the application called, for messages: the user's own (serving.intents_app) or Switchboard's
        self.app = intents_app_name(settings)
        self._factory = handle_factory or _ray_handle(settings)
        self._handle: Any = None
        self._connecting: asyncio.Task[Any] | None = None
        self._pending: list[tuple[str, str, asyncio.Future[IntentPrediction]]] = []
        self._flush_scheduled = False
        self._down_until = 0.0
        self._down_reason = ""
        self.requests = 0  # requests sent to the deployment (each with one or more turns)
        self.turns = 0
        self.model: str | None = None  # the deployed model (name@precision), from its latest answer or `identify`

    async def recognise(self, agent: str, text: str) -> IntentPrediction:
        if time.monotonic() < self._down_until:
            raise ServingUnavailableError(f"{self._down_reason} (next try in "
                                          f"{self._down_until - time.monotonic():.0f}s)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IntentPrediction] = loop.create_future()
        self._pending.append((agent, text, future))
        if len(self._pending) >= self.max_batch:
            self._flush_now()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush_now)  # after every call already runnable in this tick has enqueued
        return await future

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            task.add_done_callback(lambda done: done.exception() if not done.cancelled() else None)

    def _fail(self, reason: str) -> None:
        self._down_until = time.monotonic() + self.retry_after_s
        self._down_reason = reason
        log.warning("served intent model: %s; using the keyword recogniser for %.0fs", reason, self.retry_after_s)

    async def _connected(self) -> Any:
        """The deployment handle; connecting (in a thread) may take longer than one request may wait."""
        if self._handle is not None:
            return self._handle
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(_in_daemon_thread(self._factory))
        try:
            self._handle = await asyncio.wait_for(asyncio.shield(self._connecting), self.timeout_s)
        except TimeoutError:
            raise ServingTimeoutError(f"still connecting to the model server after {self.timeout_s:g}s") from None
        except ServingError:
            self._connecting = None
            raise
        except Exception as exc:
            self._connecting = None
            raise ServingUnavailableError(f"cannot reach the model server: {type(exc).__name__}: {exc}") from None
        return self._handle

    async def _send(self, batch: list[tuple[str, str, asyncio.Future[IntentPrediction]]]) -> None:
        try:
            answers = await self._call([(agent, text) for agent, text, _ in batch])
        except ServingError as exc:
            if not isinstance(exc, ServingTimeoutError) or "connecting" not in str(exc):
                self._fail(str(exc))
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue
            if "error" in answer:
                future.set_exception(UnknownAgentModelError(str(answer["error"])))
                continue
            try:
                result = prediction(answer, self.app, self.app)
            except ServingError as exc:
                self._fail(str(exc))
                future.set_exception(exc)
                continue
            self.model = result.model
            future.set_result(result)

    async def identify(self) -> str | None:
        """Ask the deployment which model it serves (its `info`), so that cached answers of that model can be used
        before this worker's first call; None (and logged) when it cannot say."""
        try:
            handle = await self._connected()
            info = await asyncio.wait_for(_awaitable(handle.info.remote()), self.timeout_s)
            self.model = str(info["model"])
        except Exception as exc:  # best effort: the first answer tells the model anyway
            log.info("served intent model: cannot tell which model is deployed yet (%s: %s)", type(exc).__name__, exc)
            return None
        return self.model

    async def _call(self, pairs: list[tuple[str, str]]) -> list[Mapping[str, Any]]:
        handle = await self._connected()
        self.requests += 1
        self.turns += len(pairs)
        try:
            response = handle.recognise.remote(pairs)
        except Exception as exc:
            raise ServingUnavailableError(f"the intents application {self.app} refused a request: "
                                          f"{type(exc).__name__}: {exc}") from None
        try:
            answers: Any = await asyncio.wait_for(_awaitable(response), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                response.cancel()
            self._handle = None  # look the deployment up again next time: `switchboard serve` may have restarted
            self._connecting = None
            raise ServingTimeoutError(f"the served intent model did not answer within {self.timeout_s:g}s "
                                      f"(serving.request_timeout_s; application {self.app})") from None
        except ServingError:
            raise
        except Exception as exc:  # Ray's errors: the actor died, the app was deleted, the cluster went away
            self._handle = None
            self._connecting = None
            raise ServingUnavailableError(f"the served intent model failed: {type(exc).__name__}: "
                                          f"{_first_line(exc)} (application {self.app})") from None
        return check_answers(answers, len(pairs), self.app)


def _first_line(exc: BaseException) -> str:
    """The first informative line of a Ray error (a RayTaskError starts with the task, then the traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), "")
    return f"{lines[0]} {last}".strip() if lines and last and last != lines[0] else (lines[0] if lines else "")


async def _awaitable(response: Any) -> Any:
    """Await a Ray DeploymentResponse (or any awaitable a test handle returns)."""
    if isinstance(response, Awaitable):
        return await response
    return response


async def _in_daemon_thread(function: Callable[[], Any]) -> Any:
    """`function()` in a daemon thread: connecting to an unreachable Ray can take minutes, and a worker that stops
    meanwhile must not wait for it (the default executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def target() -> None:
        try:
            outcome = (True, function())
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name="switchboard-ray-connect", daemon=True).start()
    return await future
