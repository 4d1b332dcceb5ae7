"""The course library: small, typed helpers the notebooks import.

Each module teaches or supports one concept; notebooks keep the idea on screen and
leave the plumbing here. Import what you need, e.g. ``from helpers import broker``.
"""

from __future__ import annotations

__version__ = "0.1.0"


# Import the submodule first: importing it later would rebind ``helpers.doctor`` from the
# function below to the module, and a second ``await helpers.doctor()`` would fail.
from helpers import doctor as _doctor_module  # noqa: E402


async def doctor() -> bool:
    """Check this machine can run the course: ``await helpers.doctor()`` in a notebook."""
    return await _doctor_module.run_doctor()
