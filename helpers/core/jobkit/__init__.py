"""The async-job kit: a durable job store (:mod:`.store`) and the HTTP convention around it (:mod:`.http`).

Lesson 06's hybrid builds on it; see each module's docstring for why it is shaped this way.
"""
