"""Scenarios of lessons 03-04 (messages through a broker): the fan-out shop, delivery
and durability, load leveling, scaling consumers, broker probes, duplicates and
idempotency, ordering, consistency, dead letters, traces across a broker, and when a
queue is over-engineering.
"""
