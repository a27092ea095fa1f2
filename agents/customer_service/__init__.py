"""Customer service agent: greeting, FAQ from `faq.yaml`, order status through a workflow, tickets, handoff.

The dialogue is `policy.yaml`; this module holds the workflows it calls, each a Python function that workers run
on the workflow engine (and stories call directly). `orders.yaml` is a small sample order book, standing in for
the shop's order system.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from agents.inline_workflows import WorkflowFailed, WorkflowFunction

HERE = Path(__file__).resolve().parent


@cache
def _orders() -> dict[str, dict[str, Any]]:
    loaded = yaml.safe_load((HERE / "orders.yaml").read_text(encoding="utf-8"))
    return {str(order["order_id"]).upper(): dict(order) for order in loaded["orders"]}


def order_status(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """Look an order up by `order_id`."""
    order_id = str(payload.get("order_id") or "").strip().upper()
    order = _orders().get(order_id)
    if order is None:
        raise WorkflowFailed(f"no order {order_id or '(empty)'}")
    return {key: str(value) for key, value in order.items()}


def create_ticket(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """Open a support ticket; the id derives from the content, so a retried request opens the same ticket."""
    problem = str(payload.get("problem") or "").strip()
    email = str(payload.get("email") or "").strip()
    if not problem or not email:
        raise WorkflowFailed("a ticket needs a problem description and an email address")
    digest = hashlib.sha256(f"{payload.get('session')}|{problem}|{email}".encode()).hexdigest()
    return {"ticket_id": f"T-{digest[:6].upper()}", "queue": "support", "problem": problem, "email": email}


WORKFLOWS: dict[str, WorkflowFunction] = {"order_status": order_status, "create_ticket": create_ticket}
