"""Scenarios of lessons 03-04 (messages through a broker): the fan-out shop, delivery
and durability, load leveling, scaling consumers, broker probes, duplicates and
idempotency, ordering, consistency, dead letters, traces across a broker, and when a
queue is over-engineering.

Two small modules serve the scenarios themselves: ``events`` names the event types
once, and ``running`` keeps a consumer running for the length of a ``with`` block.
"""
