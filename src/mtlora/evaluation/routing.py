"""Routing accuracy: a mix of every task's inputs of one split, sent as a user would, through each router."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mtlora.config import ROUTER_ADAPTER, ProjectConfig
from mtlora.data import load_task_data
from mtlora.engine import Engine
from mtlora.errors import DataError
from mtlora.metrics import confusion
from mtlora.registry import Registry
from mtlora.routing import ROUTERS
from mtlora.routing.base import BY_SHAPE
from mtlora.routing.token_head import TokenRouterHead

UNROUTABLE = "(unroutable)"
ROUTER_HEAD = ".routers/embeddings"


@dataclass
class RoutingReport:
    router: str
    features: str | None  # what the router read (`router.features`), for routers that read the backbone
    split: str
    examples: int
    accuracy: float
    unroutable: float  # share of inputs no task was chosen for
    # Share of inputs routed by their shape before the router ran (a pair only one task takes): counted in
    # accuracy, alike for every router.
    shape_share: float
    per_task: dict[str, float]  # accuracy on each task's inputs
    labels: list[str]  # confusion rows are the true tasks; columns add UNROUTABLE
    confusion: list[list[int]]
    ms_per_input: float
    encoder_share: float | None = None  # inputs whose route read the encoder (cost a pass), of routers that read
    # What the numbers measured, where it is not the router's skill (a keywords router with no rules to match).
    note: str | None = None
    # The saves routed among (`saves_routed_among`): an earlier run's row is kept beside a later run's only
    # where those its router reads are the same (`saves_read`: the semantic router reads the adapters'
    # manifests, the learned one its own adapter and head too).
    adapters: dict[str, str | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def encoder_pass_cell(self) -> str:
        """The encoder share as a table shows it: blank for routers that read nothing of the backbone."""
        return "" if self.encoder_share is None else f"{self.encoder_share:.3f}"


def saves_routed_among(registry: Registry, tasks: Sequence[str]) -> dict[str, str | None]:
    """The `Manifest.version` of each of `tasks`' adapters and of the learned router's, and the checksum of
    the router's head over token embeddings (under `ROUTER_HEAD`: no task name starts with a dot), which
    `train-router` with `router.features: embeddings` fits again leaving every adapter's save as it was."""
    versions = registry.versions()
    saves = {name: versions[name] for name in [*tasks, ROUTER_ADAPTER] if name in versions}
    if (head := TokenRouterHead.saved_version(registry)) is not None:
        saves[ROUTER_HEAD] = head
    return saves


def saves_read(router: str, saves: dict[str, str | None] | None) -> dict[str, str | None] | None:
    """Those of `saves` (`saves_routed_among`) that `router`'s decisions depend on: the learned router's
    adapter and head only for the router that reads them (any router mtlora no longer knows: all)."""
    if saves is None or getattr(ROUTERS.get(router), "reads_router_saves", True):
        return saves
    return {name: version for name, version in saves.items() if name not in (ROUTER_ADAPTER, ROUTER_HEAD)}


def routing_mix(project: ProjectConfig, split: str = "validation", per_task: int = 200, seed: int = 0,
                log: Callable[[str], None] = print, tasks: Sequence[str] | None = None) -> list[tuple[Any, str]]:
    """Up to `per_task` inputs of each task (of `tasks`, by default the project's) with the task they belong
    to. Pairs and QA come as plain (text, text) tuples, so only the router, not the input's form, tells them
    apart. A task without the split is left out, and said so.

    A multitask task is left out too: its inputs are its parts', which a router sends to the parts; the
    multitask adapter answers only inputs that name it by a task token, so no router could choose it."""
    rng = random.Random(seed)
    mix = []
    without = []
    chosen = [task for task in project.tasks if tasks is None or task.name in tasks]
    mixtures = [task.name for task in chosen if task.mixture is not None]
    if mixtures:
        log(f"[routing] multitask {', '.join(mixtures)} left out of the mix: a router sends their inputs to "
            "their parts; task tokens reach the multitask adapter")
    for task in (task for task in chosen if task.mixture is None):
        examples = load_task_data(project, task, splits=(split,)).split(split)
        if not examples:
            without.append(task.name)
        for example in rng.sample(examples, min(per_task, len(examples))):
            if "question" in example:
                mix.append(((example["question"], example["context"]), task.name))
            elif "text_pair" in example:
                mix.append(((example["text"], example["text_pair"]), task.name))
            else:
                mix.append((example["text"], task.name))
    if without and not mix:
        raise DataError(f"split '{split}'", "no task of the project has inputs in it to route",
                        f"set data.{split} of the tasks in the project file")
    if without:
        log(f"[routing] no {split} inputs from {', '.join(without)}: the mix leaves them out")
    rng.shuffle(mix)
    return mix


def evaluate_routing(engine: Engine, mix: Sequence[tuple[Any, str]], routers: Sequence[str], split: str,
                     log: Callable[[str], None] = print) -> list[RoutingReport]:
    tasks = sorted({task for _, task in mix})
    # Confusion columns: a route may go to a loaded task whose split had no inputs (left out of the mix).
    columns = [*tasks, *sorted(set(engine.tasks) - set(tasks)), UNROUTABLE]
    requests = [engine.request(item) for item, _ in mix]
    reports = []
    for router in routers:
        if note := engine.router(router).unmeasured():
            log(f"[routing] warning: {router}: {note}")
        _warm_up(engine, requests, router)
        started = time.perf_counter()
        routes = engine.route(requests, router)
        elapsed = time.perf_counter() - started
        chosen = [r.task or UNROUTABLE for r in routes]
        truth = [task for _, task in mix]
        counts = confusion([columns.index(t) for t in truth], [columns.index(c) for c in chosen], len(columns))
        per_task = {t: _share(c == t for c, g in zip(chosen, truth, strict=True) if g == t) for t in tasks}
        reads = ROUTERS[router].reads_features
        report = RoutingReport(
            router=router, features=engine.router_settings.features if reads else None,
            split=split, examples=len(mix),
            accuracy=_share(c == g for c, g in zip(chosen, truth, strict=True)),
            unroutable=_share(c == UNROUTABLE for c in chosen),
            shape_share=_share(r.router == BY_SHAPE and r.task is not None for r in routes),
            per_task=per_task, labels=columns,
            confusion=counts[:len(tasks)], ms_per_input=1000 * elapsed / max(1, len(mix)),
            encoder_share=_share(r.reading == "encoder" for r in routes) if reads else None,
            note=note,
        )
        log(f"[routing] {router}: accuracy {report.accuracy:.3f} on {len(mix)} {split} inputs")
        reports.append(report)
    return reports


def _warm_up(engine: Engine, requests: Sequence[Any], router: str) -> None:
    """Route the whole mix once, untimed. The first calls build what the router needs (the learned router's
    adapter, the semantic router's example banks), a one-time cost that is no part of the cost per input;
    under a cascade the encoder's banks are built only once an input the token embeddings are unsure of
    comes, which a few inputs may not bring."""
    engine.route(requests, router)


def _share(flags: Any) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else 0.0
