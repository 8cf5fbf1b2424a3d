"""Metrics, evaluation of adapters against their baselines, and reports."""

from mtlora.evaluation.evaluate import TaskReport, evaluate_task
from mtlora.evaluation.report import markdown_summary, write_reports

__all__ = ["TaskReport", "evaluate_task", "markdown_summary", "write_reports"]
