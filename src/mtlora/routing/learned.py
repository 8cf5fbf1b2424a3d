"""A router that is one more adapter: a `classification` task over task names, trained by mtlora
from the tasks' own training inputs, stored in the registry as the adapter `router`.

It reads the first text of an input (the text, or the question), which together with the shape
narrowing the engine does first, is what tells tasks apart.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mtlora.config import ROUTER_ADAPTER, ProjectConfig, TaskConfig
from mtlora.data import load_task_data
from mtlora.errors import RegistryError
from mtlora.routing.base import Request, Route, Router, decide

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine
    from mtlora.training import TrainOutcome


class LearnedRouter(Router):
    name = "learned"

    def __init__(self, engine: Engine, threshold: float = 0.5, default_task: str | None = None):
        self.engine = engine
        self.threshold = threshold
        self.default_task = default_task

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> LearnedRouter:
        if ROUTER_ADAPTER not in engine.registry:
            raise RegistryError(f"no learned router in {engine.registry.root}: train it first with "
                                "`mtlora train-router CONFIG`")
        engine.add(ROUTER_ADAPTER)
        return cls(engine, settings.min_confidence, settings.default_task)

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        answers = self.engine.run_adapter(ROUTER_ADAPTER, [r.text for r in requests])
        routes = []
        for answer, fits in zip(answers, candidates, strict=True):
            probabilities = {t: answer["probabilities"].get(t, 0.0) for t in fits}
            # The router knows every task; renormalise over the ones that fit this input's shape.
            total = sum(probabilities.values()) or 1.0
            scores = {t: p / total for t, p in probabilities.items()}
            routes.append(decide(self.name, scores, self.threshold, self.default_task, fits, "probability"))
        return routes


def train_router(project: ProjectConfig, *, fresh: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> TrainOutcome:
    """Sample each task's training inputs, label them with the task name, and train the router adapter."""
    from mtlora.training import train_task

    settings = project.router
    # Absolute: the router task's data paths would otherwise be read relative to the project's data_dir.
    folder = (project.registry / ".router-data").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(settings.training.seed)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": []}
    for task in project.tasks:
        data = load_task_data(project, task, splits=("train", "validation"))
        for split, examples in (("train", data.train), ("validation", data.validation)):
            texts = sorted({e.get("text") or e["question"] for e in examples})
            picked = rng.sample(texts, min(settings.examples_per_task, len(texts)))
            splits[split] += [{"text": t, "label": task.name} for t in picked]
    for split, rows in splits.items():
        rng.shuffle(rows)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data_config = {"train": str(folder / "train.jsonl"), "labels": [t.name for t in project.tasks]}
    if splits["validation"]:
        data_config["validation"] = str(folder / "validation.jsonl")
    router_task = TaskConfig.model_validate({
        "name": ROUTER_ADAPTER, "kind": "classification", "data": data_config,
        "lora": settings.lora.model_dump(), "training": {**settings.training.model_dump(), "baseline": False},
    })
    log(f"[router] {len(splits['train'])} training inputs from {len(project.tasks)} tasks")
    return train_task(project, router_task, "lora", fresh=fresh, progress=progress, log=log)
