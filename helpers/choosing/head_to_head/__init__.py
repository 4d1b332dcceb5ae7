"""One business operation, "place an order", built both ways and measured under the same load.

An order needs three things from three services: Inventory reserves the items, Payment
charges the card, Notification sends the confirmation. The three services, their work
per order and their fault knobs are the same in both designs; only the way the Order
service reaches them differs:

* **sync** (:func:`start_sync`): Inventory, Payment and Notification are HTTP services and
  the Order service calls them, waiting for each answer, before it answers its caller.
* **async** (:func:`start_async`): the Order service publishes one ``order.placed`` event
  (QoS 1) and answers ``202 Accepted`` at once; Inventory, Payment and Notification are
  MQTT consumers (:class:`helpers.core.messaging.Consumer`, persistent sessions) that each
  apply their effect when the event reaches them.

The Order service's handler is the learner's code: the notebook writes both handlers and
passes them in. This module holds everything around them: the downstream services, the
open-loop load (:func:`helpers.core.measure.open_loop`), the faults (a downstream made
slow, or taken down and brought back), the measurements, the summary table and the plots.

The modules, one concern each: :mod:`.effects` (what the downstream services did),
:mod:`.designs` (the two designs behind one :class:`Design` interface), :mod:`.workload`
(the orders, their schedule and the scenarios), :mod:`.results` (one run, read every way),
:mod:`.drills` (running a scenario) and :mod:`.plots`.

What is measured, per order, for both designs:

* what the caller waits for: from the intended send time to the Order service's answer;
* when the work is really done: from the intended send time until all three effects were
  applied (:class:`Effects` records every effect, whichever design applied it);
* what a fault costs: errors the caller saw, orders never done, orders left half done
  (some effects applied, not all), and how long after a dead service returns the work
  has caught up again.

Timestamps are the event loop's clock (``loop.time()``), the one
:func:`helpers.core.measure.open_loop` stamps its samples with.
"""

from helpers.choosing.head_to_head.designs import (
    PATHS,
    AsyncDesign,
    AsyncHandler,
    Design,
    DesignKind,
    SyncDesign,
    SyncHandler,
    start_async,
    start_sync,
)
from helpers.choosing.head_to_head.drills import compare, run_design, summary_rows
from helpers.choosing.head_to_head.effects import DEFAULT_WORK, Applied, Effects
from helpers.choosing.head_to_head.plots import (
    DESIGN_COLORS,
    caller_waits,
    completion_timeline,
    percentile_panel,
    plot_latencies,
    plot_outage,
)
from helpers.choosing.head_to_head.results import Result
from helpers.choosing.head_to_head.workload import (
    HEALTHY,
    ITEMS,
    SLOW_PAYMENT,
    SLOW_THEN_DOWN,
    Order,
    OrderRefused,
    Scenario,
    Workload,
    place_orders,
)

__all__ = [
    "DEFAULT_WORK", "DESIGN_COLORS", "HEALTHY", "ITEMS", "PATHS", "SLOW_PAYMENT", "SLOW_THEN_DOWN", "Applied", "AsyncDesign",
    "AsyncHandler", "Design", "DesignKind", "Effects", "Order", "OrderRefused", "Result", "Scenario", "SyncDesign", "SyncHandler",
    "Workload", "caller_waits", "compare", "completion_timeline", "percentile_panel", "place_orders", "plot_latencies",
    "plot_outage", "run_design", "start_async", "start_sync", "summary_rows",
]  # fmt: skip
