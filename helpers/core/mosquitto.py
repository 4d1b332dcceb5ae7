"""Run a real Mosquitto broker on a free loopback port, for tests, CI and benchmarks.

    python -m helpers mosquitto -- pytest tests              # runs the command with MQTT_URL set
    python -m helpers mosquitto --classroom -- pytest tests  # ... logged in as a classroom learner

The broker gets a throw-away config (127.0.0.1 only, anonymous allowed, no
persistence file) and is stopped when the command ends, whatever its outcome.

``--classroom`` gives it the configuration of a shared classroom broker instead
(:func:`classroom_config`: passwords, no anonymous clients, each learner confined to
``course/<username>/``) and a test roster, and MQTT_URL logs in as the learner ``ada``:
the whole course must pass on such an account. ``python -m helpers classroom`` writes
the same configuration for a real class (helpers/tools/classroom.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from helpers.core.net import CLASSROOM_ROOT, free_port

INSTALL_HINT = "Mosquitto is not installed: 'sudo apt-get install mosquitto' (Debian/Ubuntu) or 'brew install mosquitto'."

ADMIN = "instructor"
"""The classroom account that may read and write every learner's topics (and read $SYS)."""

TEST_LEARNERS = ("ada", "grace")
"""The roster of ``python -m helpers mosquitto --classroom``: MQTT_URL logs in as the first."""


@dataclass(frozen=True)
class Account:
    """A classroom broker login. ``admin`` accounts see every learner's topics."""

    username: str
    password: str
    admin: bool = False

    def url(self, host: str, port: int, *, tls: bool = False, cafile: str | None = None) -> str:
        """The MQTT_URL this account's holder sets (user name and password percent-encoded)."""
        query = f"?cafile={quote(cafile)}" if cafile else ""
        auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}"
        return f"{'mqtts' if tls else 'mqtt'}://{auth}@{host}:{port}{query}"


def random_password() -> str:
    """16 URL-safe characters (96 random bits): nothing to escape in a URL, a CSV or a shell."""
    return secrets.token_urlsafe(12)


def find_mosquitto_passwd() -> str:
    """Path of ``mosquitto_passwd``, which hashes passwords the way Mosquitto checks them."""
    found = shutil.which("mosquitto_passwd") or next(
        (
            p
            for p in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd", "/opt/homebrew/bin/mosquitto_passwd")
            if os.path.exists(p)
        ),
        None,
    )
    if not found:
        raise FileNotFoundError(f"mosquitto_passwd is missing. {INSTALL_HINT}")
    return found


def write_password_file(path: Path, accounts: Sequence[Account]) -> None:
    """Write Mosquitto's password file for ``accounts``, hashed by ``mosquitto_passwd -U``.

    The plain ``user:password`` lines exist only until ``mosquitto_passwd`` hashes them in
    place (the file is private to its owner from the start); if hashing fails the file is
    removed, so no plaintext is left behind.
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{a.username}:{a.password}\n" for a in accounts)
    try:
        done = subprocess.run([find_mosquitto_passwd(), "-U", str(path)], capture_output=True, text=True, check=False)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if done.returncode != 0:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"mosquitto_passwd -U failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    os.chmod(path, 0o600)


def classroom_acl(accounts: Sequence[Account]) -> str:
    """Mosquitto ACL: each user reads and writes only ``course/<username>/...``; admins see all.

    ``pattern`` lines apply to every user with ``%u`` replaced by their user name; a topic
    no line grants is denied (so ``$SYS`` and other learners' topics are off limits).
    """
    lines = [
        "# Written by python -m helpers classroom. Each learner reads and writes only course/<username>/...",
        f"pattern readwrite {CLASSROOM_ROOT}/%u/#",
    ]
    for admin in (a for a in accounts if a.admin):
        lines += ["", f"user {admin.username}", f"topic readwrite {CLASSROOM_ROOT}/#", "topic read $SYS/#"]
    return "\n".join(lines) + "\n"


def classroom_config(  # noqa: PLR0913  one keyword per mosquitto.conf setting
    folder: Path,
    *,
    port: int,
    host: str = "127.0.0.1",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_port: int = 8883,
    persistence: bool = True,
) -> str:
    """mosquitto.conf for a classroom: no anonymous clients, ``passwd`` and ``acl`` in ``folder``.

    With a TLS certificate the learners' listener is TLS on ``tls_port`` at ``host``, and
    the plain listener stays on 127.0.0.1 (the instructor's own tools), so no password
    crosses the network in clear text.
    """
    folder = folder.resolve()
    lines = [
        "# Written by python -m helpers classroom. Start the broker with: mosquitto -c " + str(folder / "mosquitto.conf"),
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {folder / 'passwd'}",
        f"acl_file {folder / 'acl'}",
        "set_tcp_nodelay true",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {folder / 'data'}/"]
    else:
        lines += ["persistence false"]
    if tls_cert is not None and tls_key is not None:
        lines += [
            "",
            "# plain MQTT for this machine only",
            f"listener {port} 127.0.0.1",
            "",
            "# the learners' listener: TLS (mqtts://)",
            f"listener {tls_port} {host}",
            f"certfile {tls_cert.resolve()}",
            f"keyfile {tls_key.resolve()}",
        ]
    else:
        lines += ["", f"listener {port} {host}"]
    return "\n".join(lines) + "\n"


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto") if os.path.exists(p)),
        None,
    )
    if not found:
        raise FileNotFoundError(INSTALL_HINT)
    return found


class MosquittoDidNotStart(RuntimeError):
    """Mosquitto exited or did not listen in time; the message has its last log lines."""


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
def running_mosquitto(extra_config: str = "", *, accounts: Sequence[Account] = ()) -> Iterator[str]:
    """Start Mosquitto; yield its ``mqtt://127.0.0.1:PORT`` URL; stop it afterwards.

    With ``accounts`` it runs the classroom configuration (:func:`classroom_config`):
    anonymous clients are refused, so log in with ``account.url("127.0.0.1", port)``.
    """
    find_mosquitto()  # a clear FileNotFoundError before anything is written
    with tempfile.TemporaryDirectory(prefix="mosquitto-") as folder:
        if accounts:
            write_password_file(Path(folder) / "passwd", accounts)
            (Path(folder) / "acl").write_text(classroom_acl(accounts))
            readable_by_broker(Path(folder), ["passwd", "acl"])
        problem = "no attempt made"
        for _attempt in range(3):
            port = free_port()
            conf = Path(folder) / "mosquitto.conf"
            if accounts:
                base = classroom_config(Path(folder), port=port, persistence=False)
            else:
                # set_tcp_nodelay: small packets leave at once (as rumqttd with our clients); see internals.quick_acks
                base = f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            conf.write_text(f"{base}{extra_config}\n")
            started = False
            try:
                with serving(conf, port):
                    started = True
                    yield f"mqtt://127.0.0.1:{port}"
                return
            except MosquittoDidNotStart as exc:
                if started:  # raised by the caller's block, not by the start: not ours to retry
                    raise
                problem = str(exc)  # the port was taken between our probe and mosquitto's bind: try another
        raise RuntimeError(f"could not start mosquitto after 3 attempts: {problem}")


def readable_by_broker(folder: Path, names: Sequence[str]) -> None:
    """Let Mosquitto read ``folder``'s ``names`` when we run as root.

    Started as root, Mosquitto drops to the ``mosquitto`` user before it reads the
    password and ACL files, so files private to root stop it with "Unable to open pwfile".
    Giving them to that user keeps them private (0600) and readable. No-op otherwise.
    """
    if os.name != "posix" or os.geteuid() != 0:
        return
    import pwd

    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return  # no such user: mosquitto stays root and can read them
    for path in (folder, *(folder / n for n in names)):
        os.chown(path, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def serving(conf: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``mosquitto -c conf`` until the block ends; it must listen on 127.0.0.1:``port`` within 5 s.

    For a configuration written elsewhere (``python -m helpers classroom``, tests of it).
    Mosquitto's own last words are in the error when it does not come up.
    """
    log = conf.with_name(conf.name + ".log")
    with log.open("wb") as log_file:
        proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        try:
            _wait_listening(port, proc)
        except (RuntimeError, TimeoutError) as exc:
            said = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise MosquittoDidNotStart(f"{exc}; it said: {' / '.join(said) or 'nothing'}") from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def throwaway_classroom() -> list[Account]:
    """The throw-away classroom's accounts: the learners of TEST_LEARNERS and the instructor."""
    return [Account(name, random_password()) for name in TEST_LEARNERS] + [Account(ADMIN, random_password(), admin=True)]


USAGE = (
    "usage: python -m helpers mosquitto -- COMMAND [ARGS...]\n   or: python -m helpers mosquitto --classroom -- COMMAND [ARGS...]"
)


def main(argv: list[str]) -> int:
    """Run ``argv`` (after ``--``) with MQTT_URL pointing at a fresh Mosquitto.

    ``--classroom`` (before ``--``): the broker runs a classroom configuration and MQTT_URL
    logs in as the learner ``ada``; ``MQTT_CLASSROOM_URLS`` holds every account's URL
    (``name=url`` separated by spaces, ``grace`` and ``instructor`` too) for tests that
    need a second learner or an observer.
    """
    options, command = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else ([], argv)
    unknown = [o for o in options if o != "--classroom"]
    if unknown or not command:
        print(USAGE if not unknown else f"unknown option(s) {' '.join(unknown)}\n{USAGE}", file=sys.stderr)
        return 2
    accounts = throwaway_classroom() if "--classroom" in options else []
    try:
        with running_mosquitto(accounts=accounts) as url:
            env = {**os.environ, "MQTT_URL": url}
            if accounts:
                port = int(url.rsplit(":", 1)[1])
                urls = {a.username: a.url("127.0.0.1", port) for a in accounts}
                env["MQTT_URL"] = urls[accounts[0].username]
                env["MQTT_CLASSROOM_URLS"] = " ".join(f"{name}={u}" for name, u in urls.items())
                url = f"mqtt://{accounts[0].username}:***@127.0.0.1:{port} (classroom: {', '.join(urls)})"
            print(f"[mosquitto] {url}", flush=True)
            return subprocess.call(command, env=env)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
