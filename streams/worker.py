"""`python -m streams.worker`: run one Switchboard worker (settings from the environment).

When `SWITCHBOARD_READY_FILE` is set, the worker writes that file once its first rebalance completes, i.e. when it
consumes; the embedded stack waits for it instead of sleeping.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, cast

from infra.config import load_settings
from streams.app import create_app

READY_FILE_ENV = "SWITCHBOARD_READY_FILE"
WORKER_ID_ENV = "SWITCHBOARD_WORKER_ID"


def main() -> None:
    settings = load_settings()
    worker_id = os.environ.get(WORKER_ID_ENV, "0")
    app = create_app(settings, worker_id=worker_id)
    ready_file = os.environ.get(READY_FILE_ENV)
    if ready_file:
        path = Path(ready_file)
        path.unlink(missing_ok=True)

        def _ready(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
            path.write_text(str(os.getpid()))

        # mode's receiver type is narrower than the calls it makes (sender, *args, signal=..., **kwargs).
        cast(Any, app.on_rebalance_complete).connect(_ready)

    sys.argv = [sys.argv[0], "worker", "--loglevel", settings.workers.log_level, "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
