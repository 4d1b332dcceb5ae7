"""Scenarios of lessons 01-02 (request/response over HTTP): the shop's service chain, the
cascading failure replay, connection pools and bulkheads, the retry storm.

Each module builds its scenario on ``helpers.core``; the notebook keeps the lines it
teaches on screen and hands them to these harnesses.
"""
