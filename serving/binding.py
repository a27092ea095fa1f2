"""Keep a Ray Serve replica's own server on its node's IP address.

Ray Serve (2.5x/2.60) starts an inter-deployment gRPC server in every replica on `[::]:0`, all interfaces, whatever
the node's IP (`--node-ip-address 127.0.0.1` included). Callers through deployment handles do not use it. Importing a
deployment's module in the replica calls `bind_replica_grpc_to_node_ip()`, which makes that server listen on the
node's IP address (127.0.0.1 for a local Ray) instead. Other Ray versions: nothing changes.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

ALL_INTERFACES = "[::]:"


def bind_replica_grpc_to_node_ip() -> None:
    """Patch Ray Serve's replica module (idempotent; does nothing when Ray's internals differ)."""
    with contextlib.suppress(ImportError, AttributeError):
        replica: Any = importlib.import_module("ray.serve._private.replica")
        original = replica.add_port_to_grpc_server
        if getattr(original, "switchboard_node_ip", False):
            return

        def add_port(server: Any, address: str) -> Any:
            if address.startswith(ALL_INTERFACES):
                ray = importlib.import_module("ray")
                address = f"{ray.util.get_node_ip_address()}:{address[len(ALL_INTERFACES):]}"
            return original(server, address)

        add_port.switchboard_node_ip = True  # type: ignore[attr-defined]
        replica.add_port_to_grpc_server = add_port
