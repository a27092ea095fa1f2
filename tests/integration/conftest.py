"""One real embedded stack (SeaweedFS, Tansu on S3, amqtt, one worker running the built-in agents and those in
tests/agents) for the whole integration session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from infra.config import Settings
from infra.embedded import EmbeddedStack
from infra.testing import embedded_settings

TEST_AGENTS = Path(__file__).resolve().parents[1] / "agents"


def _our_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except psutil.Error:
            continue
        if str(data_dir) in text or env.get("SWITCHBOARD_DATA_DIR") == str(data_dir):
            found.append(proc)
    return found


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
async def stack(stack_dir: Path) -> AsyncIterator[Settings]:
    for key in [k for k in os.environ if k.startswith("SWITCHBOARD_")]:
        del os.environ[key]
    # The test agents (tests/agents) run beside the built-in ones; sessions are swept for timeouts twice a second.
    settings = embedded_settings(stack_dir, workers={"agent_dirs": [TEST_AGENTS], "timeout_sweep_s": 0.5})
    embedded = EmbeddedStack(settings)
    try:
        await embedded.up()
        yield settings
    finally:
        embedded.down()
        leftovers = _our_processes(stack_dir)
        assert not leftovers, f"processes left running after down: {[p.pid for p in leftovers]}"


@pytest.fixture
def cli_env(stack: Settings) -> Iterator[dict[str, str]]:
    """Environment for running the real `switchboard` command against the session stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(stack.environment())
    yield env
