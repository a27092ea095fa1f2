"""Steps for the demo workflows that leave a trace: each execution appends a line to a log file, so a test can
count how often a task really ran (the workers import this module through PYTHONPATH, set by the test)."""

from __future__ import annotations

import operator
import os
from typing import Any


def tally(log: str, key: str, op: str, a: Any, b: Any) -> Any:
    """`a <op> b` (op: add or mul), after appending `key pid` to `log` (one short append: atomic across workers)."""
    if op not in ("add", "mul"):
        raise ValueError(f"op must be add or mul, not {op!r}")
    with open(log, "a", encoding="utf-8") as file:
        file.write(f"{key} {os.getpid()}\n")
    return getattr(operator, op)(a, b)
