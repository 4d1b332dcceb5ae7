"""Lab feedback and grading.

* ``checks``: the check-authoring API (``Checks``, ``Context``, ``expect``, ``outcome``,
  ``run_check``, ``CheckResult``), re-exporting its parts: ``verdicts`` (``CheckFailed``,
  ``expect``), ``calls`` (``outcome``), ``context`` (``Context`` and its fixtures),
  ``saved`` (the saved notebook); ``probes``: ``LoopLag`` and ``WireWatch``;
* ``notebook``: the ``check("q1")`` front end a lab binds with ``checker(lab)``;
* ``runner``: run each submission in a fresh kernel, then its checks (``grade_file``,
  ``grade_many``), as stages: ``plan`` (options resolved once: ``GradingPlan``), ``steps``
  (where each question's checks run), ``execute`` (a submission's run across restarts),
  ``kernels`` (the kernel processes, the batch's ``Gate``); ``kernel``: the grader's side
  inside that kernel;
* ``report``: a submission's ``Result``, as text, CSV and JSON (merging a re-graded subset,
  per-check pass rates); ``feedback``: one Markdown/HTML page per learner;
* ``cli``: ``python -m helpers grade``; ``canvas``: fill a Canvas gradebook column;
* ``gradescope``, ``prairielearn``: build a platform's autograder for one lab, and grade
  inside it (``platforms``: what the two share);
* ``labgen``: write ``labs/`` from ``solutions/`` (``python -m helpers labs``).

The checks themselves are course content and live in ``helpers/labchecks/``.
See CONTRIBUTING.md for how to write a lab and its checks, and how the grader works.
"""
