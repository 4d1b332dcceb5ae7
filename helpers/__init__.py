"""The course library the notebooks import. The folder says who each file serves:

* ``helpers.core``: what every lesson uses (broker, HTTP services, messaging, receiving,
  measurement, tracing, resilience, plots, tables);
* ``helpers.sync``: the scenarios of lessons 01-02 (request/response over HTTP);
* ``helpers.pubsub``: the scenarios of lessons 03-04 (messages through a broker);
* ``helpers.grading``: ``check()`` in the labs, the grader, the lab generator;
* ``helpers.labchecks``: the labs' checks (course content, one file per lab);
* ``helpers.tools``: the commands behind ``python -m helpers COMMAND``.

Importing ``helpers`` itself imports nothing heavy: ``import helpers.core.tables`` does not
need aiohttp or aiomqtt.
"""

from __future__ import annotations

__version__ = "0.1.0"


async def doctor() -> bool:
    """Check this machine can run the course: ``await helpers.doctor()`` in a notebook."""
    from helpers.tools.doctor import run_doctor  # lazy: the doctor pulls in aiohttp and aiomqtt

    return await run_doctor()
