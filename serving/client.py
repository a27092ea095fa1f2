"""The worker's side of the served deployments: batches concurrent calls, times them out, and stops calling for a
while after a failure, so a turn never waits on a model that is down.

Calls made in the same event-loop tick (the recogniser stage handles `serving.stream_concurrency` turns at once)
travel as one request of several turns; Ray Serve's `@serve.batch` then merges the requests of all workers.
`IntentClient` calls the intents deployment; `serving.retrieval.KnowledgeClient` the knowledge deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from infra.config import Settings
from serving.answers import IntentPrediction
from serving.cluster import intents_app_name
from serving.contract import check_answers, prediction
from serving.errors import ServingError, ServingTimeoutError, ServingUnavailableError, UnknownAgentModelError

log = logging.getLogger(__name__)
HandleFactory = Callable[[], Any]  # returns an object with `.<method>.remote(items)` -> awaitable
Q = TypeVar("Q")  # one item of a request, e.g. (agent, text)
A = TypeVar("A")  # the answer to one item



def _ray_handle(settings: Settings, which: str = "intents") -> HandleFactory:
    def factory() -> Any:
        from serving import cluster

        cluster.connect(cluster.resolve_address(settings))  # fails at once when no model server runs
        return cluster.handle(settings, which)

    return factory


class BatchingClient(Generic[Q, A]):
    """Calls one method of a served deployment for single items, sending the items of one event-loop tick as one
    request; raises `ServingError` when it cannot answer in time. Subclasses name the method and parse answers."""

    method = "recognise"  # the deployment's batched method
    what = "the served intent model"  # in messages and logs
    where = ""  # appended to error messages: which application
    fallback = "using the keyword recogniser"

    def __init__(self, settings: Settings, handle_factory: HandleFactory | None = None, *,
                 which: str = "intents") -> None:
        self.settings = settings
        self.timeout_s = settings.serving.request_timeout_s
        self.retry_after_s = settings.serving.retry_after_s
        self.max_batch = settings.serving.max_batch_size
        self._factory = handle_factory or _ray_handle(settings, which)
        self._handle: Any = None
        self._connecting: asyncio.Task[Any] | None = None
        self._pending: list[tuple[Q, asyncio.Future[A]]] = []
        self._flush_scheduled = False
        self._down_until = 0.0
        self._down_reason = ""
        self.requests = 0  # requests sent to the deployment (each with one or more turns)
        self.turns = 0

    def _answer(self, answer: Any) -> A:
        """One item's answer as the deployment sent it; raise `ServingError` for an error answer."""
        raise NotImplementedError

    async def call(self, item: Q) -> A:
        if time.monotonic() < self._down_until:
            raise ServingUnavailableError(f"{self._down_reason} (next try in "
                                          f"{self._down_until - time.monotonic():.0f}s)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[A] = loop.create_future()
        self._pending.append((item, future))
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
        log.warning("%s: %s; %s for %.0fs", self.what, reason, self.fallback, self.retry_after_s)

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

    async def _send(self, batch: list[tuple[Q, asyncio.Future[A]]]) -> None:
        try:
            answers = await self._call([item for item, _ in batch])
        except ServingError as exc:
            if not isinstance(exc, ServingTimeoutError) or "connecting" not in str(exc):
                self._fail(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue
            try:
                future.set_result(self._answer(answer))
            except ServingError as exc:
                future.set_exception(exc)

    async def _call(self, items: list[Q]) -> list[Any]:
        handle = await self._connected()
        self.requests += 1
        self.turns += len(items)
        try:
            response = getattr(handle, self.method).remote(items)
        except Exception as exc:
            raise ServingUnavailableError(f"{self.what} refused a request: {type(exc).__name__}: "
                                          f"{exc}{self.where}") from None
        try:
            answers: list[Any] = await asyncio.wait_for(_awaitable(response), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(Exception):
                response.cancel()
            self._handle = None  # look the deployment up again next time: `switchboard serve` may have restarted
            self._connecting = None
            raise ServingTimeoutError(f"{self.what} did not answer within {self.timeout_s:g}s "
                                      f"(serving.request_timeout_s){self.where}") from None
        except ServingError:
            raise
        except Exception as exc:  # Ray's errors: the actor died, the app was deleted, the cluster went away
            self._handle = None
            self._connecting = None
            raise ServingUnavailableError(f"{self.what} failed: {type(exc).__name__}: {_first_line(exc)}"
                                          f"{self.where}") from None
        return self._checked(answers, len(items))

    def _checked(self, answers: Any, count: int) -> list[Any]:
        """The answers of one request, one per item; raise `ServingError` for any other shape."""
        if not isinstance(answers, list) or len(answers) != count:
            got = len(answers) if isinstance(answers, list) else type(answers).__name__
            raise ServingUnavailableError(f"{self.what} answered {got} for {count} turns{self.where}")
        return answers


class IntentClient(BatchingClient[tuple[str, str], IntentPrediction]):
    """Calls the served intent model for (agent, text) pairs; raises `ServingError` when it cannot answer in time.

    The application is Switchboard's or the user's own (`serving.intents_app`); either must keep the contract of
    `serving.contract`, checked here, so that a wrong shape falls back with the reason instead of failing turns."""

    def __init__(self, settings: Settings, handle_factory: HandleFactory | None = None) -> None:
        super().__init__(settings, handle_factory, which="intents")
        self.app = intents_app_name(settings)  # for messages: the user's own application or Switchboard's
        self.where = f" (application {self.app})"
        self.model: str | None = None  # the deployed model (name@precision), from its latest answer or `identify`

    def _checked(self, answers: Any, count: int) -> list[Mapping[str, Any]]:
        return check_answers(answers, count, self.app)

    def _answer(self, answer: Any) -> IntentPrediction:
        if "error" in answer:
            raise UnknownAgentModelError(str(answer["error"]))
        try:
            result = prediction(answer, self.app, self.app)
        except ServingError as exc:  # the application breaks the contract: leave it alone for a while
            self._fail(str(exc))
            raise
        self.model = result.model
        return result

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

    async def recognise(self, agent: str, text: str) -> IntentPrediction:
        return await self.call((agent, text))


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
