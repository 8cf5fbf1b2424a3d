"""Nearest task by meaning: the input's embedding against embeddings of each task's example inputs.

Embeddings come from the shared backbone itself, so routing needs no second model: its last layer with
every LoRA adapter switched off (`router.features: encoder`), or its token embeddings, which cost no
encoder pass (`embeddings`, `token_head.py`); either mean-pooled and normalised. With `cascade` (the
default) the token embeddings route an input when the best task leads the next by `cascade_margin`, and
the encoder routes the rest: on held-out GLUE mixes that routed better than either alone, with an encoder
pass for about one input in seven (bench/quality.py). A task's examples are the
training inputs sampled into its manifest at training time plus any `routing.examples` of its config.
A task scores the mean cosine similarity of its `top_k` nearest examples; below the threshold the
default task answers, or none.

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


CALIBRATED_SHARE = 0.98
# A 2% quantile of fewer examples is just their minimum, too noisy to refuse inputs by: a task with
# fewer examples accepts any input it scores best on. Training keeps 64 examples per task.
MIN_CALIBRATION_EXAMPLES = 50


class SemanticRouter(Router):
    name = "semantic"
    reads_features = True

    def __init__(self, engine: Engine, threshold: float | None = None, default_task: str | None = None,
                 top_k: int = 3, features: str = "encoder", cascade_margin: float = 0.0):
        self.engine = engine
        self.features = features
        self.threshold = threshold  # None: calibrated per task from its examples
        self.default_task = default_task
        self.top_k = top_k
        self.cascade_margin = cascade_margin
        self._banks: dict[tuple[str, str, str], torch.Tensor] = {}
        self._thresholds: dict[tuple[str, str, str], float] = {}

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> SemanticRouter:
        threshold = None if settings.min_similarity == "auto" else settings.min_similarity
        return cls(engine, threshold, settings.default_task, features=settings.features,
                   cascade_margin=settings.cascade_margin)

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        if self.features != "cascade":
            return self._route(self.features, requests, candidates)
        return cascaded(lambda features, rows: self._route(features, [requests[i] for i in rows],
                                                           [candidates[i] for i in rows]),
                        len(requests), self._sure)

    def _route(self, features: str, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        embeddings = self.engine.embed([r.text for r in requests], features)  # (requests, hidden)
        routes = []
        for embedding, fits in zip(embeddings, candidates, strict=True):
            scores = {}
            for task in fits:
                bank = self.bank(task, features)  # (examples, hidden)
                if len(bank):
                    nearest = torch.topk(bank @ embedding, min(self.top_k, len(bank))).values
                    scores[task] = float(nearest.mean())
            best = max(scores, key=scores.__getitem__, default=None)
            threshold = self.threshold_for(best, features) if best is not None else 1.0
            routes.append(decide(self.name, scores, threshold, self.default_task, fits, "similarity",
                                 features=features))
        return routes

    def _sure(self, route: Route) -> bool:
        """Whether a route read from token embeddings stands: its task won on similarity, clearing its
        threshold, by at least `cascade_margin` over the next candidate."""
        if route.task is None or not route.scores:
            return False
        best, *others = sorted(route.scores.values(), reverse=True)
        won = route.scores[route.task] == best >= self.threshold_for(route.task, route.features or "embeddings")
        return won and (not others or best - others[0] >= self.cascade_margin)

    def threshold_for(self, task: str, features: str) -> float:
        """The similarity a route to `task` needs: the configured one, or `task`'s calibrated one."""
        if self.threshold is not None:
            return self.threshold
        key = self._key(task, features)
        if key not in self._thresholds:
            self._thresholds[key] = self._calibrate(self.bank(task, features))
        return self._thresholds[key]

    def _calibrate(self, bank: torch.Tensor) -> float:
        if len(bank) < MIN_CALIBRATION_EXAMPLES:
            return -1.0
        similarities = bank @ bank.T
        similarities.fill_diagonal_(float("-inf"))  # leave each example out of its own neighbours
        own = torch.topk(similarities, min(self.top_k, len(bank) - 1), dim=1).values.mean(dim=1)
        return float(torch.quantile(own, 1 - CALIBRATED_SHARE))

    def bank(self, task: str, features: str) -> torch.Tensor:
        """Embeddings of `task`'s example inputs, computed once per stored adapter version."""
        key = self._key(task, features)
        if key not in self._banks:
            manifest = self.engine.manifest(task)
            texts = [routing_text(e) for e in manifest.example_inputs]
            texts += self.engine.routing_hints(task).get("examples", [])
            texts = [t for t in texts if t]
            self._banks[key] = self.engine.embed(texts, features) if texts else torch.empty(0)
        return self._banks[key]

    def _key(self, task: str, features: str) -> tuple[str, str, str]:
        return task, self.engine.manifest(task).created_at, features
