"""The capstone's four services as OS processes: ``python -m helpers serve capstone-NAME``.

In lesson 07 every service runs inside the notebook's kernel. Nothing in their code
depends on that: they talk only through HTTP URLs and MQTT topics. This module starts one
of them on its own, so it can run as a separate process (appendix 08) or on another
machine::

    python -m helpers serve capstone-storage   --root /tmp/store
    python -m helpers serve capstone-upload    --topics capstone/run1 --storage-url http://127.0.0.1:41234
    python -m helpers serve capstone-processor --topics capstone/run1 --storage-url http://127.0.0.1:41234 --slot processor-1
    python -m helpers serve capstone-notifier  --topics capstone/run1 --workdir /tmp/notifier

The broker comes from ``MQTT_URL`` (or ``--mqtt-url``), exactly as in the notebooks: on
several machines only that URL (address, credentials, ``mqtts://`` for TLS) and the
storage URL change, not the code. When a service is ready it prints one JSON line
(``{"ready": "capstone-processor", ...}``) on stdout, so a launcher waits for a real
condition instead of sleeping. SIGTERM or Ctrl+C stop it cleanly. A processor started in a
slot (``--slot processor-1``) keeps its persistent session when it stops, so whatever it
held waits for the slot's next process; one without a slot drops its session, and on
Mosquitto the messages it held go with it (they are not handed to another member).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from helpers.capstone.jobs import Topics
from helpers.core.broker import Broker, mqtt_broker

SERVICES = ("capstone-storage", "capstone-upload", "capstone-processor", "capstone-notifier")


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m helpers serve {name}", description=__doc__.splitlines()[0])
    parser.add_argument("--mqtt-url", default=None, help="broker URL (default: $MQTT_URL)")
    if name != "capstone-storage":
        parser.add_argument(
            "--topics", required=True, help="the run's topic prefix, e.g. capstone/run1 (the same for every service)"
        )
    if name in ("capstone-upload", "capstone-processor"):
        parser.add_argument("--storage-url", required=True, help="the Storage service's base URL")
    if name == "capstone-storage":
        parser.add_argument("--root", type=Path, required=True, help="folder the objects are kept in")
    if name == "capstone-processor":
        parser.add_argument("--workers", type=int, default=1, help="workers in this process (default 1)")
        parser.add_argument("--work", type=float, default=1.0, help="CPU cost per image (1.0: a normal photo)")
        parser.add_argument("--caption", default=None, help="caption model as module:function (default: the course's)")
        parser.add_argument("--pool", action="store_true", help="one subscription + a worker pool instead of $share members")
        parser.add_argument(
            "--slot",
            default=None,
            help="a stable name such as processor-1: a process restarted with the same slot resumes the "
            "persistent session, and so the messages in flight, of the one that died (default: fresh ids)",
        )
    if name == "capstone-upload":
        parser.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="folder for the job store (jobs.sqlite3): a restart on the same folder keeps every job "
            "(default: a temporary folder, removed at exit)",
        )
    if name == "capstone-notifier":
        parser.add_argument("--workdir", type=Path, required=True, help="folder for the inbox and outbox")
        parser.add_argument("--status-base", default=None, help="the Upload service's URL, for links in messages")
    return parser


def _import(spec: str) -> Any:
    """``module:function`` -> the function (a process cannot receive a function defined in a notebook)."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SystemExit(f"cannot load {spec!r} (expected package.module:function): {exc}") from None


def ready(name: str, **details: Any) -> None:
    """Tell a launcher this service is up: one JSON line on stdout."""
    print(json.dumps({"ready": name, "pid": os.getpid(), **details}), flush=True)


async def _until_stopped() -> None:
    """Wait for SIGTERM or SIGINT (how a launcher, or Ctrl+C, stops a service)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _storage(args: argparse.Namespace) -> None:
    from helpers.capstone.storage import start_storage

    service = await start_storage(args.root, name="capstone-storage")
    ready("capstone-storage", url=service.url)
    try:
        await _until_stopped()
    finally:
        await service.stop()


async def _with_broker(args: argparse.Namespace, body: Callable[[Broker, Topics], Awaitable[None]]) -> None:
    async with mqtt_broker(args.mqtt_url or os.environ.get("MQTT_URL"), name="capstone-process") as broker:
        if broker.embedded:
            raise SystemExit(
                "set MQTT_URL (or --mqtt-url) to the broker the other services use: a process cannot share an embedded one"
            )
        await body(broker, Topics(args.topics))


async def _upload(args: argparse.Namespace) -> None:
    from helpers.capstone.upload import start_upload

    async def body(broker: Broker, topics: Topics) -> None:
        upload = await start_upload(broker, topics, args.storage_url, name="capstone-upload", work_dir=args.workdir)
        ready("capstone-upload", url=upload.url)
        try:
            await _until_stopped()
        finally:
            await upload.stop()

    await _with_broker(args, body)


async def _processor(args: argparse.Namespace) -> None:
    from helpers.capstone.processor import start_processor

    caption_fn = _import(args.caption) if args.caption else None

    async def body(broker: Broker, topics: Topics) -> None:
        processor = await start_processor(
            broker,
            topics,
            args.storage_url,
            workers=args.workers,
            shared=not args.pool,
            work=args.work,
            caption_fn=caption_fn,
            session=slot_session(topics, args.slot) if args.slot else None,
        )
        ready(
            "capstone-processor",
            mode=processor.mode,
            workers=args.workers,
            client_ids=[member.client_id for member in processor.members],
        )
        try:
            await _until_stopped()
        finally:
            errors = await processor.stop(forget=not args.slot)  # a slot's session waits for the slot's next process
            for member, error in errors.items():
                print(f"processor member {member} had failed: {type(error).__name__}: {error}", file=sys.stderr)

    await _with_broker(args, body)


def slot_session(topics: Topics, slot: str) -> str:
    """The MQTT client id of processor slot ``slot`` (``processor-1``) in the run ``topics``.

    The same slot of the same run always gets the same id, so a restarted process resumes
    its predecessor's persistent session; the run's prefix keeps two runs (or two
    notebooks on one broker) from sharing a session.
    """
    return f"{topics.prefix.replace('/', '-')}-{slot}"


async def _notifier(args: argparse.Namespace) -> None:
    from helpers.capstone.notifier import Notifier

    async def body(broker: Broker, topics: Topics) -> None:
        notifier = Notifier(
            broker,
            topics,
            args.workdir,
            client_id=f"capstone-notifier-{topics.prefix.replace('/', '-')}",
            status_base=args.status_base,
        )
        await notifier.start()
        ready("capstone-notifier", workdir=str(args.workdir))
        try:
            await _until_stopped()
        finally:
            await notifier.stop()

    await _with_broker(args, body)


_RUNNERS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "capstone-storage": _storage,
    "capstone-upload": _upload,
    "capstone-processor": _processor,
    "capstone-notifier": _notifier,
}


def main(name: str, argv: list[str]) -> int:
    """Run capstone service ``name`` until SIGTERM/SIGINT."""
    args = _parser(name).parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_RUNNERS[name](args))
    return 0
