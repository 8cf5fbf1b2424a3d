"""The verbs of mtlora in Python, one function each; the CLI calls exactly these."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mtlora.config import ProjectConfig, load_config
from mtlora.engine import TaskPredictor
from mtlora.evaluation import TaskReport, evaluate_task, write_reports
from mtlora.registry import Manifest, Registry
from mtlora.tasks import Prediction
from mtlora.training import TrainOutcome, train_task

ConfigLike = ProjectConfig | str | os.PathLike[str]


def as_config(config: ConfigLike) -> ProjectConfig:
    return config if isinstance(config, ProjectConfig) else load_config(config)


def train(
    config: ConfigLike,
    task: str | None = None,
    *,
    fresh: bool = False,
    baseline: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[TrainOutcome]:
    """Train the LoRA adapter of every task (or of `task`) and store it in the registry.

    Each task's head-only baseline is trained too when its `training.baseline` is on (or `baseline=True`).
    An interrupted run resumes from its latest checkpoint unless `fresh=True`.
    """
    project = as_config(config)
    outcomes = []
    for task_config in project.select(task):
        outcomes.append(train_task(project, task_config, "lora", fresh=fresh, progress=progress, log=log))
        if task_config.training.baseline if baseline is None else baseline:
            outcomes.append(train_task(project, task_config, "head_only", fresh=fresh, progress=progress, log=log))
    return outcomes


def evaluate(
    config: ConfigLike,
    task: str | None = None,
    *,
    split: str = "validation",
    write: bool = True,
    log: Callable[[str], None] = print,
) -> list[TaskReport]:
    """Evaluate adapters against their baselines; writes JSON, Markdown and plots to `reports/`."""
    project = as_config(config)
    reports = [evaluate_task(project, t, split, log=log) for t in project.select(task)]
    if write:
        write_reports(reports, Path(project.reports))
    return reports


def load_predictor(config: ConfigLike, task: str) -> TaskPredictor:
    project = as_config(config)
    return TaskPredictor(Registry(project.registry), task, project.backbone,
                         precision=project.task(task).training.precision)


def predict(config: ConfigLike, task: str, text: str, text_pair: str | None = None) -> Prediction:
    """Answer one input with the adapter of `task` (loads it; keep a `load_predictor` for many calls)."""
    return load_predictor(config, task).predict(text, text_pair)


def list_adapters(config: ConfigLike) -> list[Manifest]:
    return list(Registry(as_config(config).registry).manifests())


def show_adapter(config: ConfigLike, name: str) -> Manifest:
    return Registry(as_config(config).registry).verified(name)
