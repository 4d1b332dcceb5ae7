"""Lesson 07's capstone: an image pipeline of four services, one interface to run it, and the drills that attack it.

The services:

* ``images``: validate untrusted uploads (Pillow's own guards) and do the real image work;
  ``caption``: the stand-in captioning model; ``samples``: the photo and hostile inputs, made in memory;
* ``storage``: the object store service (keys that cannot escape its folder) and its client;
* ``jobs``: topics, event names and the job store behind ``GET /jobs/{id}``;
* ``upload``: the HTTP front door (``202 Accepted`` + ``Location``, idempotency keys);
* ``processor``: the AI image processor (one ``ProcessorSettings``), MQTT workers that store results before they ack;
* ``notifier``: notifications once per job, from a persistent session, into the ``Inbox``.

One system, several builds of it:

* ``system``: the ``CapstoneSystem`` protocol every drill runs on, and ``WatchedSystem``, what its adapters share;
* ``wire``: the instruments that watch a system from outside (uploads, every message, Storage per caller);
* ``pipeline``: the reference system (lesson 07); ``assembly``: the learner's three services (lab 07);
  ``sync_design``: the naive synchronous design; ``scaleout``: workers as processes (appendix 08);
* ``drills``: burst, head-of-line, worker killed, notifier outage, failing transform, Upload restarted,
  written once; ``slot_drill``: appendix 08's kill -9 of a worker process;
* ``experiments``: the lesson's comparisons of designs; ``plots``: one plot per result;
* ``diagram``: read and judge a learner's Mermaid flowchart of the system;
* (RFC 9457 error bodies live in ``helpers.core.problems``.)

This file imports nothing, so ``import helpers.capstone`` stays cheap (the modules import
Pillow, aiohttp or OpenCV).
"""
