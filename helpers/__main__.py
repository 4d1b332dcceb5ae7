"""Command line: ``python -m helpers doctor`` (more subcommands arrive with the lessons)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from helpers.doctor import loop_problem, run_doctor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description="Course helper commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check versions, event loop, HTTP and MQTT round trips")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        if sys.platform == "win32" and loop_problem(asyncio.new_event_loop()):
            asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())  # type: ignore[attr-defined]
        return 0 if asyncio.run(run_doctor()) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
