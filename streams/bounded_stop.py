"""A Faust worker whose stop has a deadline.

A worker stops cleanly by committing its offsets and leaving the consumer group. With the broker gone, Faust waits
for that for a minute per service (mode's `shutdown_timeout`; 62 s measured from SIGTERM to exit with Tansu
killed), so `switchboard down`, systemd or Kubernetes end up killing it anyway. Exiting without the clean stop loses
nothing: the inputs after the last commit are delivered again to the group, and their effects carry derived ids
that readers drop as duplicates (the same path as a SIGKILL, which the kill tests cover). So the stop is bounded:
past `workers.stop_timeout_s` the process logs why and exits with status 1.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import faust

from infra.config import WorkerSettings

log = logging.getLogger(__name__)
#: Status of a worker that exited at its stop deadline instead of stopping cleanly.
EXIT_STOP_DEADLINE = 1


class StopDeadline:
    """Exits the process `timeout_s` after `arm()`, unless it exits first. Runs in a daemon thread, so a stop
    blocked in the event loop cannot hold it up."""

    def __init__(self, timeout_s: float, why: str) -> None:
        self.timeout_s = timeout_s
        self.why = why
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def arm(self) -> None:
        """Start the countdown (once: a second stop request does not extend it)."""
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self.timeout_s, self._expire)
            self._timer.name = "switchboard-stop-deadline"
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        log.error("the worker did not stop within %gs (workers.stop_timeout_s): %s. Exiting without a clean stop; "
                  "inputs since the last commit are delivered again to the group, and their effects are "
                  "deduplicated", self.timeout_s, self.why)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # a handler that cannot flush must not keep the process alive
                continue
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                continue
        os._exit(EXIT_STOP_DEADLINE)


class Worker(faust.Worker):
    """Faust's worker; its `stop` (a signal, `switchboard down`, a crash) arms a `StopDeadline` of
    `workers.stop_timeout_s` from the app's settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = getattr(self.app, "switchboard_settings", None)
        timeout_s = (settings.workers if settings is not None else WorkerSettings()).stop_timeout_s
        self.stop_deadline = StopDeadline(timeout_s, "a part of the stop did not finish; most often the broker, "
                                          "which must answer the offset commit and the group leave, is gone")

    async def stop(self) -> None:
        self.stop_deadline.arm()
        await super().stop()
