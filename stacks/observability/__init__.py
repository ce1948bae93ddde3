"""One deployment's CloudWatch dashboard, its alarms and the topic they notify: :class:`ObservabilityStack`.

* ``stack``: the stack, which reads no resource of another stack (it deploys in any order);
* ``metrics``: what the runtime and Container Insights publish, as the alarms and dashboard read it;
* ``alarms``: per placement p99 latency, 5xx share, no ready pod, pods pending, and an empty
  inventory, notifying a KMS-encrypted topic with the configured email subscriptions;
* ``dashboard``: a row of graphs per placement, then the deployment's own;
* ``props``: periods and evaluation windows.
"""

from stacks.observability.props import ObservabilityProps
from stacks.observability.stack import ObservabilityStack

__all__ = ["ObservabilityProps", "ObservabilityStack"]
