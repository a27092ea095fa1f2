"""One real embedded stack (SeaweedFS, Tansu on S3, amqtt, one worker running the built-in agents and those in
tests/agents) for the whole integration session."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Generator, Iterator
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


# --- what the stack logged, for a failed test ------------------------------------------------------------------
# CI shows only the tail of the run and deletes the data directories; a failure of a test that ran its own stack
# prints the distinct warnings and errors of that stack's logs after the summary, so the cause can be seen there.
_LOGGED = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]\s*(.*)")
_NUMBERS = re.compile(r"\d+")
_DIGESTS = pytest.StashKey[list[str]]()


def log_digest(root: Path, limit: int = 12) -> str:
    """The distinct WARNING/ERROR lines (numbers folded) of each `logs/*.log` under `root`, most frequent first."""
    parts = []
    for log in sorted(root.rglob("logs/*.log")):
        seen: Counter[str] = Counter()
        first: dict[str, str] = {}
        for line in log.read_text(errors="replace").splitlines():
            match = _LOGGED.search(line)
            message = match.group(2).strip() if match else ""
            if len(message) < 4 or message.startswith(("Traceback", "File ", "^", "~")):
                continue
            text = f"{match.group(1)} {message[:200]}"  # type: ignore[union-attr]
            shape = _NUMBERS.sub("N", text)
            seen[shape] += 1
            first.setdefault(shape, f"{line[1:24]} {text}")
        if seen:
            lines = [f"  {n:>4} x {first[shape]}" for shape, n in seen.most_common(limit)]
            parts.append(f"{log.relative_to(root)}:\n" + "\n".join(lines))
    return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    funcargs = getattr(item, "funcargs", {})
    # A test's own stack lives under its tmp_path; the session stack's data directory is its settings' data_dir.
    roots = [root for root in (funcargs.get("tmp_path"), getattr(funcargs.get("stack"), "data_dir", None))
             if isinstance(root, Path)]
    if report.failed and report.when == "call":
        digest = "\n".join(filter(None, (log_digest(root) for root in roots)))
        if digest:
            item.config.stash.setdefault(_DIGESTS, []).append(f"{item.nodeid}\n{digest}")


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    digests = config.stash.get(_DIGESTS, [])
    if digests:
        write = terminalreporter.write_line  # type: ignore[attr-defined]
        write("=" * 30 + " stack warnings and errors of failed tests " + "=" * 30)
        for digest in digests:
            write(digest)
