"""Run one course service as its own process, when a class outgrows one kernel.

    python -m helpers serve helpers.tools.serve:demo_app --port 8081

``TARGET`` is ``module:callable``; the callable returns an aiohttp ``web.Application``
(or is a request handler). The capstone's four services have names of their own
(``capstone-storage``, ``capstone-upload``, ``capstone-processor``, ``capstone-notifier``:
see :mod:`helpers.capstone.services` and ``python -m helpers serve capstone-upload --help``).
The service gets the same fault knobs as in the notebooks
(set at start with ``--latency``/``--error-rate``) and binds to 127.0.0.1 unless
``--host`` says otherwise. Notebooks then call it by URL instead of starting it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aiohttp import web

from helpers.core.http import FAULTS, STATS, AppLike, Faults, Stats, as_app


async def _demo(request: web.Request) -> web.Response:
    return web.json_response({"service": "demo", "path": request.path})


def demo_app() -> web.Application:
    """A trivial app, to try the command out."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", _demo)
    return app


def load_target(spec: str) -> AppLike:
    """Import ``module:callable`` and call it if it builds an app; errors say what to fix."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"TARGET must look like package.module:function, got {spec!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load {spec!r}: {exc}") from None
    if isinstance(target, web.Application):
        return target
    try:
        built = target()
    except TypeError:
        return target  # a request handler: needs a request, so it is used as-is
    return built


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0].startswith("capstone-"):
        from helpers.capstone import services  # lazy: Pillow and OpenCV load only for the capstone

        if args_in[0] not in services.SERVICES:
            raise SystemExit(f"unknown capstone service {args_in[0]!r}: use one of {', '.join(services.SERVICES)}")
        return services.main(args_in[0], args_in[1:])
    parser = argparse.ArgumentParser(prog="python -m helpers serve", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="module:callable returning a web.Application (or a handler)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 500")
    args = parser.parse_args(args_in)
    app = as_app(load_target(args.target))
    app[FAULTS] = Faults(latency=args.latency, error_rate=args.error_rate)
    app[STATS] = Stats()
    web.run_app(app, host=args.host, port=args.port, shutdown_timeout=0.25, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
