"""`python -m streams.mqtt_bridge [--config FILE]`: run the MQTT bridge (settings from the environment)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from infra.config import load_settings
from streams.mqtt_bridge.service import serve
from topics.errors import SwitchboardError


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m streams.mqtt_bridge", description=__doc__)
    parser.add_argument("--config", default=None, help="TOML settings file (default: $SWITCHBOARD_CONFIG)")
    args = parser.parse_args()
    try:
        settings = load_settings(args.config)
    except SwitchboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    level = getattr(logging, settings.bridge.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "gmqtt"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
