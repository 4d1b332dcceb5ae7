"""Moved to :mod:`helpers.core.problems` (lessons 06 and 07 share it); this name stays while lesson 07's lab is written."""

from helpers.core.problems import PROBLEM_BASE, PROBLEM_JSON, ProblemLike, problem, problem_for

__all__ = ["PROBLEM_BASE", "PROBLEM_JSON", "ProblemLike", "problem", "problem_for"]
