"""ObservabilityProps: the periods and evaluation windows of one deployment's alarms and dashboard,
in one place (the alarms, the dashboard and the stack all take them)."""

from __future__ import annotations

from dataclasses import dataclass

from plan import contract


@dataclass(frozen=True)
class ObservabilityProps:
    """Periods and evaluation windows of the dashboard and alarms; defaults in one place."""

    period_s: int = contract.METRIC_PUBLISH_INTERVAL_S  # the pods publish once a minute
    # p99 latency and 5xx: 3 of the last 5 minutes over the threshold (a single slow batch is not an outage).
    latency_evaluation_periods: int = 5
    latency_datapoints_to_alarm: int = 3
    errors_evaluation_periods: int = 5
    errors_datapoints_to_alarm: int = 3
    # No ready pod / empty inventory: three minutes in a row (the publisher reports every 15 s).
    ready_evaluation_periods: int = 3
    inventory_evaluation_periods: int = 3
    dashboard_hours: int = 3
    key_pending_window_days: int = 7
