"""ObservabilityStack: one deployment's dashboard, its alarms and the topic they notify.

Everything reads metrics by name and dimension values computed from config (``plan.topology``):
no resource of another stack is referenced, so the stack deploys beside the deployment's others
in any order.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from plan.config import AppConfig
from stacks.observability.alarms import AlarmTopic, ServingAlarms
from stacks.observability.dashboard import ServingDashboard, dashboard_name
from stacks.observability.props import ObservabilityProps


class ObservabilityStack(cdk.Stack):
    """``EdgeDiffusion-<deployment>-Observability``: the topic, the alarms and the dashboard."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        props: ObservabilityProps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        props = props or ObservabilityProps()
        self.config = config
        self.notifications = AlarmTopic(self, "Notifications", config=config, props=props)
        self.alarms = ServingAlarms(self, "Alarms", config=config, topic=self.notifications.topic, props=props)
        self.dashboard = ServingDashboard(self, "Dashboard", config=config, alarms=self.alarms, props=props)
        cdk.CfnOutput(self, "DashboardName", value=dashboard_name(config))
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.notifications.topic.topic_arn)
