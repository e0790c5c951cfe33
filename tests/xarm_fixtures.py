"""Shared by every test that runs the xArm emulator: whether this user may listen on port 502."""

from __future__ import annotations

import random
import socket

import pytest


def can_bind_port_502() -> bool:
    """The SDK's command port is fixed at 502, a privileged port (root or CAP_NET_BIND_SERVICE)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.1", 502))
    except PermissionError:
        return False
    except OSError:
        return True  # in use at that address: the port itself is allowed
    finally:
        probe.close()
    return True


@pytest.fixture(scope="session")
def port_502() -> None:
    """Skip where this user may not listen on port 502 (the SDK's fixed command port)."""
    if not can_bind_port_502():
        pytest.skip("binding port 502 needs root or CAP_NET_BIND_SERVICE")
