"""Lab feedback and grading.

* ``checks``: the check-authoring API (``Checks``, ``Context``, ``expect``) and the
  ``check("q1")`` front end a lab notebook binds with ``checker(lab)``;
* ``grader``: run each submission in a fresh kernel, then its checks
  (``python -m helpers grade``); ``kernel``: the grader's side inside that kernel;
* ``labgen``: write ``labs/`` from ``solutions/`` (``python -m helpers labs``).

The checks themselves are course content and live in ``helpers/labchecks/``.
See CONTRIBUTING.md for how to write a lab and its checks.
"""
