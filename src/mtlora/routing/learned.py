"""A router trained by mtlora from the tasks' own training inputs to name the task of an input.

With `router.features: encoder` it is one more adapter, a `classification` task over task names stored
in the registry as `router`; routing is then an encoder pass of its own. With `embeddings` it is a linear
head over the backbone's mean token embeddings (`token_head.py`) and costs no pass. With `cascade` (the
default) it is both: the head routes the inputs it gives `cascade_confidence` or more, and the adapter
the rest.

It reads the first text of an input (the text, or the question), which together with the shape
narrowing the engine does first, is what tells tasks apart.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mtlora import atomic
from mtlora.config import ROUTER_ADAPTER, ProjectConfig, TaskConfig
from mtlora.data import load_task_data
from mtlora.errors import AdapterNotFoundError, RegistryError
from mtlora.registry import Registry
from mtlora.routing.base import ANSWERED_BY, Request, Route, Router, cascaded, decide
from mtlora.routing.token_head import TokenRouterHead, check_router_tasks
from mtlora.tasks import get_task_kind
from mtlora.tasks.base import routing_text

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine
    from mtlora.training import TrainOutcome


logger = logging.getLogger(__name__)
READS_EMBEDDINGS, READS_ENCODER = ("embeddings", "cascade"), ("encoder", "cascade")  # by router.features


class LearnedRouter(Router):
    name = "learned"
    score_meaning = "probability"
    reads_features = True
    reads_router_saves = True

    def __init__(self, engine: Engine, settings: RouterSettings, head: TokenRouterHead | None):
        self.engine = engine
        self.settings = settings
        self.head = head  # None unless the setting reads token embeddings
        self._shapes: dict[str, str | None] = {}  # input shape of each task the router knows (None: gone)

    @classmethod
    def adapters_loaded(cls, settings: RouterSettings) -> list[str]:
        return [ROUTER_ADAPTER] if settings.features in READS_ENCODER else []

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> LearnedRouter:
        if missing := cls.missing(engine.registry, settings):
            raise RegistryError(f"{missing} (registry {engine.registry.root})")
        head = None
        if settings.features in READS_EMBEDDINGS:
            head = TokenRouterHead.load(engine.registry, engine.backbone)
            cls._warn_untrained_on(engine, head.info.labels, "the learned router's head over token embeddings")
        if settings.features in READS_ENCODER:
            engine.add(ROUTER_ADAPTER)
            cls._warn_untrained_on(engine, engine.manifest(ROUTER_ADAPTER).labels or [],
                                   "the learned router" if head is None else "the learned router's adapter")
        return cls(engine, settings, head)

    @staticmethod
    def _warn_untrained_on(engine: Engine, known: list[str], which: str) -> None:
        choosable = [task for task in engine.tasks if not get_task_kind(engine.manifest(task).kind).mixes_tasks]
        if unknown := [task for task in choosable if task not in known]:
            # Added since the router was trained (at run time, say): it never picks them, and nothing
            # else would say so.
            logger.warning("%s was trained without %s and never routes to %s; retrain it with "
                           "`mtlora train-router`", which, ", ".join(unknown), "it" if len(unknown) == 1 else "them")

    @classmethod
    def missing(cls, registry: Registry, settings: RouterSettings) -> str | None:
        has_head = TokenRouterHead.saved_info(registry) is not None
        has_adapter = ROUTER_ADAPTER in registry
        if settings.features == "cascade" and has_adapter and not has_head:
            # A router trained while `encoder` was the default: say what changed, and both ways on.
            return ("the learned router lacks its head over token embeddings, which router.features: cascade (the "
                    "default) reads first: run `mtlora train-router` (it trains the head and the adapter; with "
                    "router.features: embeddings it fits the head alone, in seconds), or set router.features: "
                    "encoder to route with the router adapter alone")
        lacking = [what for what, needed, present in (
            ("its head over token embeddings", settings.features in READS_EMBEDDINGS, has_head),
            ("its router adapter", settings.features in READS_ENCODER, has_adapter)) if needed and not present]
        if not lacking:
            return None
        return (f"no learned router for router.features: {settings.features} (it lacks {' and '.join(lacking)}): "
                "train it first with `mtlora train-router`")

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        if self.settings.features == "cascade":
            # The head's share for its choice among the loaded tasks that fit. A route it would leave
            # unroutable, or to the default task, scores 0 and goes to the adapter.
            return cascaded(self._route, requests, candidates,
                            lambda route: route.confidence >= self.settings.cascade_confidence)
        return self._route("embeddings" if self.head is not None else "encoder", requests, candidates)

    def _route(self, reading: str, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        routes = []
        answers = self._probabilities(reading, [r.text for r in requests])
        for request, answered, fits in zip(requests, answers, candidates, strict=True):
            # The router knows every task it was trained on, loaded or not. What it gives tasks that cannot
            # take this input's shape is its mistake, and goes. What it gives a task that could but is not
            # loaded says the input belongs elsewhere: it counts against every candidate.
            total = sum(p for t, p in answered.items() if self._could_answer(t, request.shape)) or 1.0
            scores = {t: answered.get(t, 0.0) / total for t in fits}
            routes.append(decide(self.name, scores, self.settings.min_confidence, self.settings.default_task, fits,
                                 "probability", reading=reading))
        return routes

    def _could_answer(self, task: str, shape: str) -> bool:
        """Whether `task` takes inputs of `shape`, by its manifest; a task gone from the registry might."""
        if task not in self._shapes:
            registry = self.engine.registry
            self._shapes[task] = get_task_kind(registry.manifest(task).kind).input_shape if task in registry else None
        return self._shapes[task] is None or self._shapes[task] in ANSWERED_BY[shape]

    def _probabilities(self, reading: str, texts: list[str]) -> list[dict[str, float]]:
        if reading == "encoder":
            return [answer["probabilities"] for answer in self.engine.run_adapter(ROUTER_ADAPTER, texts)]
        assert self.head is not None
        rows = self.head.probabilities(self.engine.embed(texts, "embeddings")).tolist()
        return [dict(zip(self.head.info.labels, row, strict=True)) for row in rows]


def train_router(project: ProjectConfig, *, fresh: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> TrainOutcome:
    """Sample each task's training inputs, label them with the task name, and train what
    `router.features` reads: the router adapter (encoder), its head over token embeddings (embeddings), or
    both from the same inputs (cascade). With both, the adapter's outcome is returned. A router adapter
    trained on the same inputs with the same settings is kept (`train_task`'s `keep`); the head, which fits in
    seconds, is fit again."""
    from mtlora.training import train_task

    # A multitask adapter answers its parts' inputs only when they name it by a task token: a router
    # sends those inputs to the parts, and a class of its own would take half their probability.
    tasks = [task for task in project.tasks if not get_task_kind(task.kind).mixes_tasks]
    check_router_tasks([task.name for task in tasks])  # before any file is written
    settings = project.router
    # Absolute: the router task's data paths would otherwise be read relative to the project's data_dir.
    folder = training_inputs_folder(Registry(project.registry)).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(settings.training.seed)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": []}
    for task in tasks:
        data = load_task_data(project, task, splits=("train", "validation"))
        for split, examples in (("train", data.train), ("validation", data.validation)):
            texts = sorted({routing_text(e) for e in examples})
            picked = rng.sample(texts, min(settings.examples_per_task, len(texts)))
            splits[split] += [{"text": t, "label": task.name} for t in picked]
    if settings.features == "embeddings":
        return _train_head(project, splits, log)
    for split, rows in splits.items():
        rng.shuffle(rows)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data_config = {"train": str(folder / "train.jsonl"), "labels": [t.name for t in tasks]}
    if splits["validation"]:
        data_config["validation"] = str(folder / "validation.jsonl")
    router_task = TaskConfig.model_validate({
        "name": ROUTER_ADAPTER, "kind": "classification", "data": data_config,
        "lora": settings.lora.model_dump(), "training": {**settings.training.model_dump(), "baseline": False},
    })
    log(f"[router] {len(splits['train'])} training inputs from {len(tasks)} tasks")
    outcome = train_task(project, router_task, "lora", fresh=fresh, progress=progress, log=log, keep=True)
    if settings.features == "cascade":  # after the adapter: an interrupted run leaves the two as they were
        _train_head(project, splits, log)
    return outcome


def training_inputs_folder(registry: Registry) -> Path:
    """Where `train_router` writes the task-labelled inputs it trains the router on."""
    return registry.root / ".router-data"


def stored_router(registry: Registry) -> list[Path]:
    """The parts of a learned router that `train_router` stored in `registry`, of: the router adapter,
    its head over token embeddings, the inputs they trained on, and an interrupted training's checkpoints."""
    adapter = [registry.path(ROUTER_ADAPTER)] if ROUTER_ADAPTER in registry else []
    others = (TokenRouterHead.folder(registry), training_inputs_folder(registry),
              registry.run_path(ROUTER_ADAPTER, "lora").parent)
    return adapter + [folder for folder in others if folder.is_dir()]


def remove_router(registry: Registry) -> None:
    """Delete every part of the learned router, so that none is left to route with or to list."""
    parts = stored_router(registry)
    if not parts:
        raise AdapterNotFoundError(str(registry.root), ROUTER_ADAPTER, registry.names())
    if ROUTER_ADAPTER in registry:
        registry.remove(ROUTER_ADAPTER)
    for folder in parts:
        if folder.is_dir():  # the adapter's is gone already
            atomic.remove_folder(folder, registry.staging, registry.swapping)
    atomic.remove_empty(TokenRouterHead.folder(registry).parent, registry.root / ".runs")


def _train_head(project: ProjectConfig, splits: dict[str, list[dict[str, str]]],
                log: Callable[[str], None]) -> TrainOutcome:
    from mtlora.training import TrainOutcome

    started = time.perf_counter()
    train = splits["train"]
    head = TokenRouterHead.fit(project.backbone, [r["text"] for r in train], [r["label"] for r in train],
                               [(r["text"], r["label"]) for r in splits["validation"]])
    saved_to = head.save(Registry(project.registry))
    accuracy = head.info.validation_accuracy
    log(f"[router] head over token embeddings fit on {len(train)} inputs from {len({r['label'] for r in train})} tasks"
        + (f"; validation accuracy {accuracy:.3f}" if accuracy is not None else "") + f"; saved to {saved_to}")
    size = head.info.parameters
    return TrainOutcome(task=ROUTER_ADAPTER, method="token_head", trainable=size, total=size,
                        time_s=time.perf_counter() - started, steps=0, samples_per_s=0.0, train_loss=float("nan"),
                        resumed_from=None, saved_to=saved_to)
