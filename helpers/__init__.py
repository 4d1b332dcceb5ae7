"""The course library: small, typed helpers the notebooks import.

Each module teaches or supports one concept; notebooks keep the idea on screen and
leave the plumbing here. Import what you need, e.g. ``from helpers import broker``.
"""

from __future__ import annotations

__version__ = "0.1.0"


async def doctor() -> bool:
    """Check this machine can run the course: ``await helpers.doctor()`` in a notebook."""
    from helpers.doctor import run_doctor

    return await run_doctor()
