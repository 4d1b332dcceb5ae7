"""Run a real Mosquitto broker on a free loopback port, for tests, CI and benchmarks.

    python -m helpers mosquitto -- pytest tests        # runs the command with MQTT_URL set

The broker gets a throw-away config (127.0.0.1 only, anonymous allowed, no
persistence file) and is stopped when the command ends, whatever its outcome.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

INSTALL_HINT = "Mosquitto is not installed: 'sudo apt-get install mosquitto' (Debian/Ubuntu) or 'brew install mosquitto'."


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto") if os.path.exists(p)),
        None,
    )
    if not found:
        raise FileNotFoundError(INSTALL_HINT)
    return found


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {proc.returncode} before listening on port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout:g} s")


@contextlib.contextmanager
def running_mosquitto(extra_config: str = "") -> Iterator[str]:
    """Start Mosquitto; yield its ``mqtt://127.0.0.1:PORT`` URL; stop it afterwards."""
    binary = find_mosquitto()
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as folder:
        for _attempt in range(3):
            port = free_port()
            conf = Path(folder) / "mosquitto.conf"
            # set_tcp_nodelay: small packets leave at once (as rumqttd with our clients); see internals.quick_acks
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n{extra_config}\n"
            )
            proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_listening(port, proc)
            except (RuntimeError, TimeoutError):
                proc.kill()
                proc.wait()
                continue  # the port was taken between our probe and mosquitto's bind: try another
            try:
                yield f"mqtt://127.0.0.1:{port}"
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return
        raise RuntimeError("could not start mosquitto after 3 attempts")


def main(argv: list[str]) -> int:
    """Run ``argv`` (after ``--``) with MQTT_URL pointing at a fresh Mosquitto."""
    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    if not command:
        print("usage: python -m helpers mosquitto -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        with running_mosquitto() as url:
            print(f"[mosquitto] {url}", flush=True)
            return subprocess.call(command, env={**os.environ, "MQTT_URL": url})
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
