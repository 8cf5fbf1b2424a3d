"""The verbs of mtlora in Python, one function each; the CLI calls exactly these."""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast, overload

import torch

from mtlora import routing
from mtlora.config import ROUTER_ADAPTER, ProjectConfig, load_config
from mtlora.data import check_split
from mtlora.engine import Engine, TaskPredictor
from mtlora.engine.inputs import Input
from mtlora.errors import AdapterNotFoundError, CorruptAdapterError, RegistryError, train_hint
from mtlora.evaluation import (
    RoutingReport,
    TaskReport,
    evaluate_routing,
    evaluate_task,
    routing_mix,
    saves_routed_among,
    write_reports,
    write_routing_reports,
)
from mtlora.modeling import Method, check_base, export_merged
from mtlora.registry import Manifest, Registry
from mtlora.routing import Route
from mtlora.routing.learned import remove_router
from mtlora.routing.token_head import HeadInfo, TokenRouterHead
from mtlora.tasks import Prediction, get_task_kind
from mtlora.training import TrainOutcome, ready_data, train_task

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
    An interrupted run resumes from its latest checkpoint, and a stored result trained with the task's
    present settings and data is kept (`kept` in its outcome), unless `fresh=True`. The outcomes carry no
    model (`training.train_task` returns one): each is let go once stored, so that training many tasks
    holds one model at a time, on the GPU where there is one.
    """
    project = as_config(config)
    tasks = project.select(task)
    data = ready_data(project, tasks)
    outcomes = []
    for task_config in tasks:
        wanted = task_config.training.baseline if baseline is None else baseline
        with_head = wanted and get_task_kind(task_config.kind).has_head
        methods: list[Method] = ["lora", "head_only"] if with_head else ["lora"]
        for method in methods:
            outcome = train_task(project, task_config, method, fresh=fresh, progress=progress, log=log, keep=True,
                                 data=data[task_config.name])
            outcomes.append(dataclasses.replace(outcome, model=None))
            del outcome
            _release_memory()
    return outcomes


def _release_memory() -> None:
    gc.collect()  # a trained model sits in reference cycles (trainer callbacks), not freed by its count alone
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    check_split(split)  # before any adapter is loaded
    tasks = project.select(task)
    registry = Registry(project.registry)
    untrained = [t.name for t in tasks if t.name not in registry]
    if task is not None and untrained:  # a task of the project: say how to train it
        raise AdapterNotFoundError(str(registry.root), task, registry.names(),
                                   fix=f"train it first: `{train_hint(task)}`")
    if task is None and untrained:
        if len(untrained) == len(tasks):
            raise RegistryError(f"no task of the project is trained yet: train them first (`{train_hint()}`)")
        log(f"not trained yet, so not evaluated: {', '.join(untrained)} (`{train_hint('NAME')}`)")
        tasks = [t for t in tasks if t.name not in untrained]
    without = [t.name for t in tasks if not project.has_split(t, split)]
    if task is None and without and len(without) < len(tasks):  # else evaluating says which setting to add
        log(f"no {split} data, so not evaluated: {', '.join(without)}")
        tasks = [t for t in tasks if t.name not in without]
    if write:  # a file where the folder goes fails now, not after the first evaluation
        Path(project.reports).mkdir(parents=True, exist_ok=True)
    reports = []
    for t in tasks:
        reports.append(evaluate_task(project, t, split, log=log))
        if write:  # task by task: an error in a later task keeps the reports already made
            write_reports(reports[-1:], Path(project.reports), registry.versions())
    return reports


def evaluate_routers(
    config: ConfigLike,
    routers: Sequence[str] | None = None,
    *,
    split: str = "validation",
    per_task: int = 200,
    write: bool = True,
    log: Callable[[str], None] = print,
) -> list[RoutingReport]:
    """Routing accuracy of each router (default: every one that chooses a task itself, `Router.chooses_task`)
    on a mix of every task's `split` inputs; writes reports/routing.*"""
    project = as_config(config)
    check_split(split)
    registry = Registry(project.registry)
    available, skipped = [], {}
    for name in routing.choosing_routers() if routers is None else routers:
        if missing := routing.router_class(name).missing(registry, project.router):
            skipped[name] = missing
        else:
            available.append(name)
    if not available:
        raise RegistryError(f"no router to evaluate ({'; '.join(f'{n}: {why}' for n, why in skipped.items())})")
    for name, missing in skipped.items():  # said once: in the error above when no router is left, else here
        log(f"[routing] skipping '{name}': {missing}")
    # Only the project's trained adapters: the registry may hold others, which the mix has no inputs for.
    trained = [t.name for t in project.tasks if t.name in registry]
    if not trained:
        raise RegistryError(f"no task of the project is trained yet: train them first (`{train_hint()}`)")
    if untrained := [t.name for t in project.tasks if t.name not in trained]:
        log(f"[routing] not trained yet, so left out of the mix: {', '.join(untrained)} (`{train_hint('NAME')}`)")
    if write:
        Path(project.reports).mkdir(parents=True, exist_ok=True)
    engine = Engine.from_config(project, trained)
    mix = routing_mix(project, split, per_task, log=log, tasks=trained)
    adapters = saves_routed_among(registry, trained)
    reports = [dataclasses.replace(report, adapters=adapters)
               for report in evaluate_routing(engine, mix, available, split, log=log)]
    if write and reports:
        gone = [name for name in routing.choosing_routers() if name not in available
                and routing.router_class(name).missing(registry, project.router)]
        write_routing_reports(reports, Path(project.reports), gone)
    return reports


def train_router(
    config: ConfigLike, *, fresh: bool = False, progress: bool = True, log: Callable[[str], None] = print
) -> TrainOutcome:
    """Train the learned router: a classification adapter over the project's task names and a linear
    head over the backbone's token embeddings (with `router.features` encoder or embeddings, only the one
    it reads). Returns the adapter's outcome, or with `embeddings` the head's."""
    return routing.train_router(as_config(config), fresh=fresh, progress=progress, log=log)


def load_engine(config: ConfigLike, tasks: Sequence[str] | None = None, **kwargs: Any) -> Engine:
    """Every adapter of the project (or `tasks`) on one backbone, ready to route and answer inputs."""
    project = require_adapters(config) if tasks is None else as_config(config)
    return Engine.from_config(project, tasks, **kwargs)


def require_adapters(config: ConfigLike) -> ProjectConfig:
    """The project, once its registry is known to hold a task adapter: an engine without any answers
    nothing but "unroutable"."""
    project = as_config(config)
    if not set(Registry(project.registry).names()) - {ROUTER_ADAPTER}:
        raise RegistryError(f"no adapters in {project.registry} yet: train them first (`{train_hint()}`)")
    return project


def verify_adapters(config: ConfigLike) -> None:
    """Check every adapter an engine of the project loads (its files against their checksums, the base it
    was trained on), as loading it would: a server then refuses to start with that one error, where its
    start-up would fail with a traceback."""
    project = as_config(config)
    registry = Registry(project.registry)
    loaded = [name for name in registry.names() if name != ROUTER_ADAPTER]
    loaded += [name for name in routing.router_class(project.router.strategy).adapters_loaded(project.router)
               if name in registry]  # one missing is require_router's to refuse
    for name in loaded:
        check_base(registry.verified(name), project.backbone)


def require_router(config: ConfigLike) -> None:
    """Refuse a project whose default router cannot run (a learned router not trained yet): every routed
    request would fail."""
    project = as_config(config)
    strategy = project.router.strategy
    if missing := routing.router_class(strategy).missing(Registry(project.registry), project.router):
        raise RegistryError(f"router.strategy is '{strategy}', but {missing}; or set another router.strategy")


def load_predictor(config: ConfigLike, task: str) -> TaskPredictor:
    """One adapter alone, at the project's inference precision, as the engine and evaluation run it."""
    project = as_config(config)
    project.task(task)  # an unknown task is named with the project's tasks
    return TaskPredictor(Registry(project.registry), task, project.backbone, precision=project.inference.precision)


@overload
def predict(config: ConfigLike, inputs: Input, *, task: str | Sequence[str | None] | None = None,
            router: str | None = None) -> Prediction: ...
@overload
def predict(config: ConfigLike, inputs: list[Input], *, task: str | Sequence[str | None] | None = None,
            router: str | None = None) -> list[Prediction]: ...
def predict(config: ConfigLike, inputs: Input | list[Input], *, task: str | Sequence[str | None] | None = None,
            router: str | None = None) -> Prediction | list[Prediction]:
    """Answer one input or a list: with the adapter of `task` (one for all inputs, or one per input), or
    where the router sends each input.

    Loads the engine on every call (only the named adapters when every input names one); keep a
    `load_engine(...)` for many calls.
    """
    named = [task] if isinstance(task, str) else list(task or [])
    # No None among the names in the second branch: the condition has just ruled it out.
    needed = None if not named or None in named else cast(list[str], list(dict.fromkeys(named)))
    return load_engine(config, needed).predict(inputs, task, router)


@overload
def route(config: ConfigLike, inputs: Input, router: str | None = None) -> Route: ...
@overload
def route(config: ConfigLike, inputs: list[Input], router: str | None = None) -> list[Route]: ...
def route(config: ConfigLike, inputs: Input | list[Input], router: str | None = None) -> Route | list[Route]:
    """Where an input would go, or each of a list, with the score of every candidate task."""
    engine = load_engine(config)
    if isinstance(inputs, list):
        return engine.route(inputs, router)
    return engine.route([inputs], router)[0]


def list_adapters(config: ConfigLike) -> list[Manifest]:
    return list(Registry(as_config(config).registry).manifests())


def adapter_listing(config: ConfigLike) -> tuple[list[Manifest], dict[str, str]]:
    """The manifests of the registry's adapters, and why each of the others cannot be read (by name): one
    damaged adapter does not hide the rest from the listing that diagnoses it."""
    registry = Registry(as_config(config).registry)
    manifests, damaged = [], {}
    for name in registry.names():
        try:
            manifests.append(registry.manifest(name))
        except CorruptAdapterError as error:
            damaged[name] = str(error)
    return manifests, damaged


def router_head(config: ConfigLike) -> HeadInfo | None:
    """The learned router's head over token embeddings, when `train-router` has fit one."""
    return TokenRouterHead.saved_info(Registry(as_config(config).registry))


def merge(config: ConfigLike, task: str, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write `task`'s adapter as a plain transformers model with its LoRA merged in, for deploying one task."""
    project = as_config(config)
    return export_merged(Registry(project.registry), project.backbone, task, folder, overwrite)


def remove_adapter(config: ConfigLike, name: str) -> None:
    """Delete adapter `name` (and its head-only baseline) from the project's registry. The learned
    router's name deletes all it is made of: the adapter, its head over token embeddings, its inputs."""
    registry = Registry(as_config(config).registry)
    if name == ROUTER_ADAPTER:
        remove_router(registry)
    else:
        registry.remove(name)


def show_adapter(config: ConfigLike, name: str) -> Manifest:
    return Registry(as_config(config).registry).verified(name)
