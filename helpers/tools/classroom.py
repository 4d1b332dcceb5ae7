"""``python -m helpers classroom ROSTER.csv``: a shared Mosquitto where learners cannot see each other.

One broker for a whole class saves every learner installing one, but on a plain broker
anyone can read (and write) everyone's messages. This writes a Mosquitto configuration
in which every learner logs in with a password and reads and writes only under
``course/<username>/``; the course's clients put their topics there by themselves when
MQTT_URL carries a user name (helpers.core.broker), so no notebook changes.

The roster is a CSV file with a header row::

    username,password
    ada,
    grace,correct-horse-battery

``username`` is required: 1-64 letters, digits, ``.``, ``_`` or ``-`` (it becomes a topic
level, a client-id prefix and part of a URL, so ``/ + # :``, spaces and ``%`` are out).
``password`` is optional: an empty cell (or no column) gets a random one; a given one
needs at least 8 characters. Other columns (name, email) are ignored. Blank lines and
lines starting with ``#`` are skipped.

Written to ``--out`` (default ``classroom/``):

- ``mosquitto.conf``: start the broker with ``mosquitto -c classroom/mosquitto.conf``;
- ``passwd``: the passwords, hashed by ``mosquitto_passwd`` (no plaintext is kept);
- ``acl``: ``pattern readwrite course/%u/#``, plus the instructor account that sees all;
- ``handout.csv``: each account's user name, password and MQTT_URL, the one file with
  passwords in it (private to you, 0600): give each learner their line.
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers.core.mosquitto import (
    ADMIN,
    Account,
    classroom_acl,
    classroom_config,
    random_password,
    write_password_file,
)

USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_PASSWORD = 8
ALLOWED = "1-64 letters, digits, '.', '_' or '-'"


class RosterError(ValueError):
    """The roster cannot be used; the message names the file, the line and what to fix."""


@dataclass(frozen=True)
class Learner:
    """One roster row: a user name and the password the instructor chose (None: generate one)."""

    username: str
    password: str | None
    line: int


def read_roster(path: Path, *, admin: str = ADMIN) -> list[Learner]:
    """Parse and check ``path``; every problem found is reported at once, each with its line."""
    rows = [(n, row) for n, row in _rows(_read_text(path)) if any(cell.strip() for cell in row)]
    rows = [(n, row) for n, row in rows if not row[0].lstrip().startswith("#")]
    if not rows:
        raise RosterError(f"{path} is empty: expected a header row 'username,password' and one row per learner")
    columns, at_user, at_password = _header(path, *rows[0])
    if len(rows) == 1:
        raise RosterError(f"{path} has a header but no learners")
    problems: list[str] = []
    learners: list[Learner] = []
    seen: dict[str, int] = {}
    for line, row in rows[1:]:
        cells = row + [""] * (len(columns) - len(row))
        username = cells[at_user].strip()
        password = cells[at_password] if at_password is not None else ""
        problem = _username_problem(username, admin, seen)
        if problem is None:
            seen[username.lower()] = line  # a later repeat is reported even when this row's password is bad
            problem = _password_problem(username, password)
        if problem:
            problems.append(f"line {line}: {problem}")
            continue
        learners.append(Learner(username, password or None, line))
    if problems:
        raise RosterError(f"{path}: {len(problems)} problem(s), nothing written:\n  " + "\n  ".join(problems))
    return learners


def _read_text(path: Path) -> str:
    """The roster's text, or a RosterError that says how to save it so it can be read."""
    try:
        return path.read_text(encoding="utf-8-sig")  # Excel writes a BOM
    except FileNotFoundError:
        raise RosterError(f"{path}: no such roster file") from None
    except UnicodeDecodeError as exc:
        raise RosterError(f"{path}: not UTF-8 text ({exc}); save the roster as CSV UTF-8") from None


def _header(path: Path, line: int, header: list[str]) -> tuple[list[str], int, int | None]:
    """The header's column names and where username and (optional) password are."""
    columns = [cell.strip().lower() for cell in header]
    if "username" not in columns:
        raise RosterError(
            f"{path}, line {line}: the header {','.join(header)!r} has no 'username' column; "
            "the first row must be the header 'username,password' (password optional)"
        )
    return columns, columns.index("username"), columns.index("password") if "password" in columns else None


def _username_problem(username: str, admin: str, seen: dict[str, int]) -> str | None:
    """What is wrong with a row's username (None: nothing); ``seen`` maps earlier usernames to their lines."""
    if not username:
        return "the username is empty"
    if not USERNAME.fullmatch(username):
        bad = sorted({c for c in username if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        shown = ", ".join(repr(c) for c in bad) or f"{len(username)} characters"
        return f"username {username!r} has {shown}; a username is {ALLOWED}"
    if username.lower() == admin.lower():
        return f"{username!r} is the instructor's account; choose another username (or --admin NAME)"
    if username.lower() in seen:
        return f"username {username!r} repeats line {seen[username.lower()]} (usernames ignore case)"
    return None


def _password_problem(username: str, password: str) -> str | None:
    """What is wrong with a row's chosen password (None: nothing, or none chosen)."""
    if password and (len(password) < MIN_PASSWORD or password != password.strip() or "\n" in password):
        return (
            f"the password of {username!r} must have at least {MIN_PASSWORD} characters, "
            "no leading or trailing spaces and no line break (or leave it empty for a random one)"
        )
    return None


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """CSV rows with the line each starts on (so errors can name it)."""
    reader = csv.reader(text.splitlines(keepends=True))
    out: list[tuple[int, list[str]]] = []
    start = 1
    for row in reader:
        out.append((start, row))
        start = reader.line_num + 1
    return out


@dataclass(frozen=True)
class Written:
    """What :func:`write_classroom` wrote, for the summary and the tests."""

    folder: Path
    accounts: list[Account]
    urls: dict[str, str]


def write_classroom(  # noqa: PLR0913  keyword-only, one per flag of `python -m helpers classroom`; callers set one or two
    learners: Sequence[Learner],
    out: Path,
    *,
    port: int = 1883,
    host: str = "127.0.0.1",
    public_host: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_port: int = 8883,
    learner_cafile: str | None = None,
    admin: str = ADMIN,
    force: bool = False,
) -> Written:
    """Write mosquitto.conf, passwd, acl and handout.csv for ``learners`` into ``out``.

    Refuses to overwrite an earlier hand-out unless ``force``: its passwords may already
    be in learners' hands, and a new run would change the random ones.
    """
    if (tls_cert is None) != (tls_key is None):
        raise RosterError("give both --tls-cert and --tls-key (or neither)")
    for given in (tls_cert, tls_key):
        if given is not None and not given.is_file():
            raise RosterError(f"{given}: no such file")
    if learner_cafile and tls_cert is None:
        raise RosterError("--learner-cafile is for a TLS listener: give --tls-cert and --tls-key too")
    shown_host = public_host or host
    if _unspecified(shown_host):
        raise RosterError(
            f"--host {host} listens on every interface, but learners need a name or address to reach: "
            "add --public-host NAME (the host name or IP address learners connect to)"
        )
    handout = out / "handout.csv"
    if not force and (handout.exists() or (out / "passwd").exists()):
        raise RosterError(
            f"{out} already holds a classroom (handout.csv / passwd): its passwords may be handed out already. "
            "Use another --out, or --force to replace it (random passwords change)"
        )
    out.mkdir(parents=True, exist_ok=True)
    accounts = [Account(x.username, x.password or random_password()) for x in learners]
    accounts.append(Account(admin, random_password(), admin=True))
    write_password_file(out / "passwd", accounts)
    (out / "acl").write_text(classroom_acl(accounts))
    (out / "data").mkdir(exist_ok=True)
    (out / "mosquitto.conf").write_text(
        classroom_config(out, port=port, host=host, tls_cert=tls_cert, tls_key=tls_key, tls_port=tls_port)
    )
    tls = tls_cert is not None
    urls = {
        a.username: a.url(shown_host, tls_port if tls else port, tls=tls, cafile=learner_cafile) for a in accounts if not a.admin
    }
    # The instructor connects on this machine (the plain listener stays on 127.0.0.1 under TLS).
    urls[admin] = accounts[-1].url("127.0.0.1" if tls else shown_host, port)
    _write_handout(handout, accounts, urls)
    return Written(out, accounts, urls)


def _write_handout(handout: Path, accounts: list[Account], urls: dict[str, str]) -> None:
    """The one file with plaintext passwords: created 0600, so no other user can read it even for a moment."""
    fd = os.open(handout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["username", "password", "mqtt_url", "role"])
        for a in accounts:
            writer.writerow([a.username, a.password, urls[a.username], "instructor" if a.admin else "learner"])
    os.chmod(handout, 0o600)  # an existing file keeps its mode under O_CREAT: tighten it too


def _unspecified(host: str) -> bool:
    """True for 0.0.0.0 / :: (listen everywhere), which no learner can connect to."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def parser() -> argparse.ArgumentParser:
    """The command line (also documented in README.md, "A shared classroom broker")."""
    p = argparse.ArgumentParser(
        prog="python -m helpers classroom",
        description="Write a Mosquitto configuration for a shared classroom broker: passwords, no anonymous "
        "clients, and each learner confined to course/<username>/.",
        epilog="Roster: CSV with a header 'username,password' (password optional; empty means random).",
    )
    p.add_argument("roster", type=Path, help="CSV file: username[,password] with a header row")
    p.add_argument("--out", type=Path, default=Path("classroom"), help="folder to write into (default: classroom/)")
    p.add_argument("--port", type=int, default=1883, help="plain MQTT port (default 1883)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for a class)")
    p.add_argument("--public-host", help="host name or IP learners connect to, for their MQTT_URL (default: --host)")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM): learners connect with mqtts://")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--tls-port", type=int, default=8883, help="TLS port (default 8883)")
    p.add_argument("--learner-cafile", help="CA file path to put in learners' URLs as ?cafile= (self-signed CA)")
    p.add_argument("--admin", default=ADMIN, help=f"the instructor's account, which sees every topic (default {ADMIN})")
    p.add_argument("--force", action="store_true", help="replace an existing classroom in --out (new random passwords)")
    return p


def main(argv: list[str]) -> int:
    """Write the classroom; print where, how to start it, and nothing secret."""
    args = parser().parse_args(argv)
    for port in (args.port, args.tls_port):
        if not 1 <= port <= 65535:
            print(f"error: port {port} is not between 1 and 65535", file=sys.stderr)
            return 2
    try:
        learners = read_roster(args.roster, admin=args.admin)
        written = write_classroom(
            learners,
            args.out,
            port=args.port,
            host=args.host,
            public_host=args.public_host,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_port=args.tls_port,
            learner_cafile=args.learner_cafile,
            admin=args.admin,
            force=args.force,
        )
    except RosterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError) as exc:  # mosquitto_passwd missing or failing
        print(f"error: {exc}", file=sys.stderr)
        return 3
    folder = written.folder
    print(f"wrote a classroom for {len(learners)} learner(s) and the instructor ({args.admin}) to {folder}/")
    print(f"  start it:   mosquitto -c {(folder / 'mosquitto.conf').resolve()}")
    print(
        f"  hand out:   {folder / 'handout.csv'} (passwords and MQTT_URLs: give each learner their line, keep the file private)"
    )
    print("  learners:   MQTT_URL=<their url> make lab   (topics go under course/<username>/ by themselves)")
    if os.name == "posix" and os.geteuid() == 0:
        print(
            "  as root:    Mosquitto drops to the user 'mosquitto', which must read passwd and acl and write data/: "
            f"sudo chown -R mosquitto: {folder}/passwd {folder}/acl {folder}/data"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
