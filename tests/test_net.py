"""helpers.core.net: the one home of free_port and the classroom topic root."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from helpers.core import broker, mosquitto, net

HELPERS = Path(__file__).resolve().parent.parent / "helpers"


def test_free_port_is_bindable() -> None:
    port = net.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_and_the_topic_root_have_one_home() -> None:
    """Mosquitto, the broker client and the browser tools use net's, never a copy of their own."""
    defines = [
        path.relative_to(HELPERS).as_posix()
        for path in HELPERS.rglob("*.py")
        if re.search(r"^def free_port\(|^CLASSROOM_ROOT = ", path.read_text(encoding="utf-8"), re.MULTILINE)
    ]
    assert defines == ["core/net.py"]
    assert mosquitto.free_port is broker.free_port is net.free_port
    assert mosquitto.CLASSROOM_ROOT == broker.CLASSROOM_ROOT == net.CLASSROOM_ROOT == "course"
