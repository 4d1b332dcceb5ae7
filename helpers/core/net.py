"""Where the course's servers listen and whose topics are whose: one home for both.

The embedded broker, Mosquitto, JupyterLab (the browser test) and the tests all need
"a port nothing listens on"; the broker client and Mosquitto's ACL must agree on where a
classroom learner's topics live. Standard library only, so anything may import it.
"""

from __future__ import annotations

import socket

__all__ = ["CLASSROOM_ROOT", "free_port"]

CLASSROOM_ROOT = "course"
"""Every learner owns ``course/<username>/``: the ACL says so, and helpers.core.broker puts their topics there."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now (a race is the caller's to retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
