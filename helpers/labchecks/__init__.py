"""One module per lab: ``helpers/labchecks/<slug>.py`` holds ``checks = Checks("NN_slug")``.

These modules are loaded by file path under a fresh name (``helpers.grading.checks.load_checks``),
never imported through ``sys.modules``, so a notebook cannot swap them for its own copy.
See CONTRIBUTING.md ("Writing checks") for the guide and ``warmup.py`` for an example.
"""
