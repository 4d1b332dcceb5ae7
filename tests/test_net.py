"""helpers.core.net: the one home of free_port and the classroom topic root."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from helpers.core import broker, mosquitto, net

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "helpers"


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


def test_the_generic_parts_import_without_the_heavy_libraries() -> None:
    """net, timestamps, events and the Mermaid parser are standard library only: anything may import them."""
    code = (
        "import sys\n"
        "for name in ('aiohttp', 'aiomqtt', 'amqtt', 'paho', 'matplotlib'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import helpers.core.net, helpers.core.timestamps, helpers.core.events, helpers.core.mermaid\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
