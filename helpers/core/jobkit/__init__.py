"""The async-job kit, the course's one request-reply implementation: a durable job store (:mod:`.store`),
the HTTP convention around it (:mod:`.http`: 202, status, 303, problem+json, the event stream) and
its client side (:mod:`.client`: requests, a poller that honors Retry-After, an SSE reader).

Lesson 06's hybrid and lesson 07's upload build on it; see each module's docstring for why it is shaped this way.
"""
