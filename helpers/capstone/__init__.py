"""Lesson 07's capstone: an image pipeline of four services and the harness that measures it.

* ``images``: validate untrusted uploads (Pillow's own guards) and do the real image work;
* ``storage``: the object store service (keys that cannot escape its folder) and its client;
* ``jobs``: topics, event names and the job store behind ``GET /jobs/{id}``;
* ``upload``: the HTTP front door (``202 Accepted`` + ``Location``, idempotency keys);
* ``processor``: the AI image processor, MQTT workers that store results before they ack;
* ``notifier``: notifications once per job, from a persistent session;
* ``pipeline``: the whole system, the naive synchronous design, the scenarios and plots;
* ``diagram``: read and judge a learner's Mermaid flowchart of the system;
* ``assembly``: lab 07's kit: the learner's upload, processor and notifier wired into a running
  system (Storage that records who called it, fault drills), watched from outside;
* (RFC 9457 error bodies live in ``helpers.core.problems``.)

This file imports nothing, so ``import helpers.capstone`` stays cheap (the modules import
Pillow, aiohttp or OpenCV).
"""
