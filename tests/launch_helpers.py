"""Helpers for tests that start `accelerate launch` with several processes."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free right now, for ``accelerate launch --main_process_port``: two launches running at once on
    the default rendezvous port (29500) race, and the loser exits 1 (seen in a clean-clone run of the slow
    suite, where tests run in two workers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
