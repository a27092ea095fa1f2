"""Avro schemas (`*.avsc`) of every Switchboard event; `history/` keeps every released version by fingerprint.

A file is named by its schema's full name and is self-contained (no references to other files), so a third party
needs nothing but this folder to decode any message on the bus (see docs/events.md).
"""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"

__all__ = ["HISTORY_DIR", "SCHEMA_DIR"]
