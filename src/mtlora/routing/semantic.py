"""Nearest task by meaning: the input's embedding against embeddings of each task's example inputs.

Embeddings come from the shared backbone itself, so routing needs no second model: its last layer with
every LoRA adapter switched off (`router.features: encoder`), or its token embeddings, which cost no
encoder pass (`embeddings`, `token_head.py`); either mean-pooled and normalised. With `cascade` (the
default) the token embeddings route an input when the best task leads the next by `cascade_margin`, and
the encoder routes the rest (bench/quality.py scores the three readings and sweeps the margin). A
task's examples are the training inputs sampled into its manifest at training time plus any
`routing.examples` of its config. A task scores the mean cosine similarity of its `TOP_K` nearest
examples; below the threshold the default task answers, or none.

How similar a task's own inputs are to each other depends on the task (short reviews vs. news articles)
and on the backbone, so a fixed threshold is wrong somewhere. With `min_similarity: auto` each task's
threshold is calibrated on its own examples: every example scored against the others, leave-one-out,
and the threshold put where `CALIBRATED_SHARE` of them clear it. A new input of the task is scored the
same way, so about that share of them routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mtlora.routing.base import Request, Route, Router, cascaded, decide
from mtlora.tasks.base import routing_text

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine


TOP_K = 3
CALIBRATED_SHARE = 0.98
# A 2% quantile of fewer examples is just their minimum, too noisy to refuse inputs by: a task with
# fewer examples accepts any input it scores best on. Training keeps 64 examples per task.
MIN_CALIBRATION_EXAMPLES = 50


class SemanticRouter(Router):
    name = "semantic"
    score_meaning = "cosine similarity"
    reads_features = True

    def __init__(self, engine: Engine, settings: RouterSettings):
        self.engine = engine
        self.settings = settings
        # None: calibrated per task (and per reading: their similarities differ in scale) from its examples.
        self.threshold = None if settings.min_similarity == "auto" else settings.min_similarity
        self._banks: dict[tuple[str, str, str], torch.Tensor] = {}
        self._thresholds: dict[tuple[str, str, str], float] = {}

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> SemanticRouter:
        router = cls(engine, settings)
        # The banks and thresholds are kept in the engine across the rebuilds a change of tasks makes, so that
        # loading one adapter embeds only its own examples; those of saves no longer loaded go here.
        memo = engine.router_memo.setdefault(cls.name, {"banks": router._banks, "thresholds": router._thresholds})
        loaded = {(task, manifest.created_at) for task, manifest in engine.manifests().items()}
        for kept in memo.values():
            for key in [key for key in kept if key[:2] not in loaded]:
                del kept[key]
        router._banks, router._thresholds = memo["banks"], memo["thresholds"]
        return router

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        if self.settings.features == "cascade":
            return cascaded(self._route, requests, candidates, self._sure)
        return self._route(self.settings.features, requests, candidates)

    def _route(self, reading: str, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        embeddings = self.engine.embed([r.text for r in requests], reading)  # (requests, hidden)
        # A task's scores for the whole call at once: four tensor ops per task and request took a third of
        # the route's host time.
        banks = {task: self.bank(task, reading) for task in dict.fromkeys(task for fits in candidates for task in fits)}
        task_scores = {task: self._scores(embeddings, bank) for task, bank in banks.items() if len(bank)}
        routes = []
        for row, fits in zip(range(len(embeddings)), candidates, strict=True):
            scores = {task: task_scores[task][row] for task in fits if task in task_scores}
            best = max(scores, key=scores.__getitem__, default=None)
            threshold = self.threshold_for(best, reading) if best is not None else 1.0
            routes.append(decide(self.name, scores, threshold, self.settings.default_task, fits, "similarity",
                                 reading=reading))
        return routes

    @staticmethod
    def _scores(embeddings: torch.Tensor, bank: torch.Tensor) -> list[float]:
        """Each embedding's mean similarity to its `TOP_K` nearest examples in `bank` (one at least)."""
        return torch.topk(embeddings @ bank.T, min(TOP_K, len(bank)), dim=1).values.mean(dim=1).tolist()

    def _sure(self, route: Route) -> bool:
        """Whether a route read from token embeddings stands: a task won on similarity (a route that fell
        back to the default task, or none, carries its reason) by `cascade_margin` over the next one, or,
        alone, over its own threshold: a text that only shares a task's words may belong to none."""
        if route.task is None or route.reason:
            return False
        others = [score for task, score in route.scores.items() if task != route.task]
        runner_up = max(others) if others else self.threshold_for(route.task, "embeddings")
        return route.confidence - runner_up >= self.settings.cascade_margin

    def threshold_for(self, task: str, reading: str) -> float:
        """The similarity a route to `task` needs: the configured one, or `task`'s calibrated one."""
        if self.threshold is not None:
            return self.threshold
        key = self._key(task, reading)
        if key not in self._thresholds:
            self._thresholds[key] = self._calibrate(self.bank(task, reading))
        return self._thresholds[key]

    def _calibrate(self, bank: torch.Tensor) -> float:
        if len(bank) < MIN_CALIBRATION_EXAMPLES:
            return -1.0
        similarities = bank @ bank.T
        similarities.fill_diagonal_(float("-inf"))  # leave each example out of its own neighbours
        own = torch.topk(similarities, min(TOP_K, len(bank) - 1), dim=1).values.mean(dim=1)
        return float(torch.quantile(own, 1 - CALIBRATED_SHARE))

    def bank(self, task: str, reading: str) -> torch.Tensor:
        """Embeddings of `task`'s example inputs, computed once per stored adapter version and reading."""
        key = self._key(task, reading)
        if key not in self._banks:
            manifest = self.engine.manifest(task)
            texts = [routing_text(e) for e in manifest.example_inputs]
            texts += self.engine.routing_hints(task).get("examples", [])
            texts = [t for t in texts if t]
            self._banks[key] = self.engine.embed(texts, reading) if texts else torch.empty(0)
        return self._banks[key]

    def _key(self, task: str, reading: str) -> tuple[str, str, str]:
        return task, self.engine.manifest(task).created_at, reading
