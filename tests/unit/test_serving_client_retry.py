"""Joining a cluster through `ray://` survives the client proxy failing to start this client's server (Ray's
fork race, ray-project/ray#63202), and nothing else is retried."""

from __future__ import annotations

import logging

import pytest

from serving.cluster import is_client_server_startup_failure, retry_client_init

#: What `ray.init("ray://...")` raised on CI when the proxy's forked server died (shortened).
ZOMBIE = ConnectionAbortedError(
    "Initialization failure from server:\nTraceback (most recent call last):\n"
    '  File ".../ray/util/client/server/proxier.py", line 396, in start_specific_server\n'
    "    cmd = psutil_proc.cmdline()\n"
    "psutil.ZombieProcess: PID still exists but it's a zombie (pid=7415)\n")


class Attempts:
    """An `init` that fails with the given errors in turn, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "connected"


def test_the_proxy_startup_failure_is_recognised_and_nothing_else() -> None:
    assert is_client_server_startup_failure(ZOMBIE)
    assert not is_client_server_startup_failure(ConnectionAbortedError("connection reset"))
    assert not is_client_server_startup_failure(RuntimeError("Initialization failure from server"))


def test_a_failed_client_server_start_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    init = Attempts(ZOMBIE, ZOMBIE)
    with caplog.at_level(logging.WARNING, logger="serving.cluster"):
        assert retry_client_init(init, "ray://127.0.0.1:10001", backoff_s=0.0) == "connected"
    assert init.calls == 3
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "attempt 1 of 4" in warnings[0] and "ZombieProcess" in warnings[0]


def test_the_last_attempts_error_is_raised() -> None:
    init = Attempts(ZOMBIE, ZOMBIE, ZOMBIE)
    with pytest.raises(ConnectionAbortedError, match="Initialization failure"):
        retry_client_init(init, "ray://127.0.0.1:10001", attempts=3, backoff_s=0.0)
    assert init.calls == 3


def test_other_errors_are_not_retried() -> None:
    init = Attempts(ConnectionError("ray client connection timeout"))
    with pytest.raises(ConnectionError, match="timeout"):
        retry_client_init(init, "ray://127.0.0.1:10001", backoff_s=0.0)
    assert init.calls == 1
