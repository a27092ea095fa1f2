"""`python -m serving`: the model server as a component of `switchboard up` (settings from the environment; writes
its PID to $SWITCHBOARD_READY_FILE when the deployments answer; stops on SIGTERM)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from infra.config import load_settings
from serving.server import serve
from topics.errors import SwitchboardError

READY_FILE_ENV = "SWITCHBOARD_READY_FILE"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready = os.environ.get(READY_FILE_ENV)
    try:
        serve(load_settings(), progress=lambda line: print(line, flush=True), block=True,
              ready_file=Path(ready) if ready else None)
    except SwitchboardError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
