"""``python -m helpers COMMAND [ARGS...]``: every course tool behind one entry point.

Each command is a module with ``main(argv) -> int``, imported only when it is asked
for, so ``python -m helpers --help`` works without the heavy dependencies.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("helpers.tools.doctor", "check versions, event loop, HTTP and MQTT round trips"),
    "bench": ("helpers.tools.bench", "measure HTTP, MQTT and load-generator performance"),
    "run": ("helpers.tools.run_all", "execute every lesson and solution headless into build/"),
    "serve": ("helpers.tools.serve", "run one course service as its own process"),
    "diagrams": ("helpers.tools.mermaid_check", "check every Mermaid diagram of the course, without a browser"),
    "grade": ("helpers.grading.cli", "grade a folder of lab submissions"),
    "gradescope": ("helpers.grading.gradescope", "build a Gradescope autograder zip for one lab"),
    "prairielearn": ("helpers.grading.prairielearn", "build a PrairieLearn external grader for one lab"),
    "labs": ("helpers.grading.labgen", "write labs/ from solutions/"),
    "mosquitto": ("helpers.core.mosquitto", "run a command with a throw-away Mosquitto (MQTT_URL set)"),
    "classroom": ("helpers.tools.classroom", "write a shared classroom Mosquitto config from a roster"),
    "wheels": ("helpers.tools.wheels", "can every learner platform install the pins from wheels? (asks the index)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "usage: python -m helpers COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
