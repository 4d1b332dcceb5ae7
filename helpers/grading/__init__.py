"""Lab feedback and grading.

* ``checks``: the check-authoring API (``Checks``, ``Context``, ``expect``, ``outcome``,
  ``run_check``, ``CheckResult``);
* ``notebook``: the ``check("q1")`` front end a lab binds with ``checker(lab)``;
* ``runner``: run each submission in a fresh kernel, then its checks (``grade_file``,
  ``grade_many``); ``kernel``: the grader's side inside that kernel;
* ``report``: a submission's ``Result``, as text, CSV and JSON;
* ``cli``: ``python -m helpers grade``;
* ``labgen``: write ``labs/`` from ``solutions/`` (``python -m helpers labs``).

The checks themselves are course content and live in ``helpers/labchecks/``.
See CONTRIBUTING.md for how to write a lab and its checks, and how the grader works.
"""
