"""What the supervisor decides and remembers about restarts: the crash-loop delay, and each component's history
(run/supervisor.state, read by `switchboard status`). Pure and small, so the policy is testable without processes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

STATE_FILE = "supervisor.state"  # not *.json: the run directory's *.json files are process records


@dataclass(frozen=True)
class RestartPolicy:
    """When to start a dead component again.

    At once after a run of `quick_s` or longer, and after the first short one: a worker killed under load must be
    back within a second. Short runs in a row (or restarts that fail) are a crash loop, a wrong setting or a port
    taken, and starting again at once would only spin: from the second in a row the delay doubles, from
    `first_delay_s` to `max_delay_s` (Kubernetes' CrashLoopBackOff, scaled to a development machine).
    """

    quick_s: float = 10.0
    first_delay_s: float = 1.0
    max_delay_s: float = 60.0

    def delay(self, ran_s: float, quick_deaths_before: int) -> float:
        """Seconds to wait before the next start, given how long the last run lasted and how many quick deaths
        came right before it."""
        if ran_s >= self.quick_s or quick_deaths_before == 0:
            return 0.0
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** min(quick_deaths_before - 1, 30)))

    def quick_deaths_after(self, ran_s: float, quick_deaths_before: int) -> int:
        return quick_deaths_before + 1 if ran_s < self.quick_s else 0


@dataclass
class Restarts:
    """One component's restart history, as the supervisor saw it."""

    restarts: int = 0              # started again, and answered
    quick_deaths: int = 0          # in a row: deaths within RestartPolicy.quick_s of a start, and failed restarts
    last_death: float | None = None  # epoch seconds
    last_exit: str = ""            # "exit status 1", "killed by SIGKILL"; "" when the process was not its child
    next_start: float | None = None  # epoch seconds, while it waits out a crash-loop delay
    last_error: str = ""           # why the last restart failed

    def describe(self, running: bool) -> str:
        """One line for `switchboard status`."""
        parts = []
        if self.restarts:
            parts.append(f"started again {self.restarts} time{'s' if self.restarts != 1 else ''} by the supervisor")
        if self.last_death is not None:
            how = f", {self.last_exit}" if self.last_exit else ""
            parts.append(f"last died {_clock(self.last_death)}{how}")
        if not running:
            if self.next_start is not None:
                parts.append(f"starting it again at {_clock(self.next_start)} ({self.quick_deaths} quick "
                             "death(s) in a row)")
            elif self.last_death is not None:
                parts.append("starting it again now")
        if self.last_error and not running:
            parts.append(f"last restart failed: {self.last_error}")
        return "; ".join(parts)


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def read_restarts(run_dir: Path) -> dict[str, Restarts]:
    """The supervisor's state file; empty when there is none (no supervisor, or nothing has died)."""
    try:
        raw = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    known = {f.name for f in fields(Restarts)}
    out: dict[str, Restarts] = {}
    if isinstance(raw, dict):
        for name, entry in raw.items():
            if isinstance(entry, dict):
                out[str(name)] = Restarts(**{k: v for k, v in entry.items() if k in known})
    return out


def write_restarts(run_dir: Path, history: dict[str, Restarts]) -> None:
    """Written atomically: `status` never reads half a file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({name: asdict(entry) for name, entry in history.items()}, indent=2))
    tmp.replace(run_dir / STATE_FILE)
