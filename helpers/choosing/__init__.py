"""Scenarios of lessons 05-06 (choosing between sync and async): one business operation
built both ways and measured head to head under the same load and the same faults.

Each module builds its scenario on ``helpers.core``; the notebook keeps the lines it
teaches (the two order handlers) on screen and hands them to these harnesses. This file
imports nothing, so ``import helpers.choosing`` stays cheap.
"""
