"""What every lesson uses: the broker, in-kernel HTTP services, the message envelope and
consumers, receiving and lifecycle, measurement, tracing, resilience, plots and tables;
and the generic parts anything may import (free ports, timestamps, the Mermaid parser).

Nothing here knows about a particular lesson; lesson packages (``helpers.sync``,
``helpers.pubsub``) and grading build on it, never the other way round. The one lesson
word kept here is what two lesson groups share (``events.ORDER_PLACED``).
"""
