"""Evaluation of adapters against their baselines, of routers on a mix of tasks, and reports."""

from mtlora.evaluation.evaluate import TaskReport, evaluate_task
from mtlora.evaluation.report import markdown_summary, write_reports, write_routing_reports
from mtlora.evaluation.routing import RoutingReport, evaluate_routing, routing_mix, saves_routed_among

__all__ = ["RoutingReport", "TaskReport", "evaluate_routing", "evaluate_task", "markdown_summary", "routing_mix",
           "saves_routed_among", "write_reports", "write_routing_reports"]
