"""IT helpdesk agent: password resets, VPN troubleshooting, printer commands, incident alerts, escalation.

The dialogue is `policy.yaml`; this module holds the workflow it calls (a Python function that workers run on the
workflow engine, and stories call directly).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from agents.inline_workflows import WorkflowFailed, WorkflowFunction

_USERNAME = re.compile(r"^[a-z][a-z0-9.]{1,31}$")
#: Sample directory: accounts that exist (a stand-in for the identity provider).
ACCOUNTS = frozenset({"alice", "bob", "carol", "dave", "j.smith"})


def reset_password(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """Start a password reset: a one-time link to the user's registered address (never the password itself)."""
    username = str(payload.get("username") or "").strip().lower()
    if not _USERNAME.match(username) or username not in ACCOUNTS:
        raise WorkflowFailed(f"no account named {username or '(empty)'}")
    reference = hashlib.sha256(f"{payload.get('session')}|{username}".encode()).hexdigest()[:8].upper()
    return {"username": username, "reference": f"PR-{reference}", "sent_to": f"{username}@corp.example.com"}


WORKFLOWS: dict[str, WorkflowFunction] = {"reset_password": reset_password}
