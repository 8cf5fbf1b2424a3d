"""Nearest task by meaning: the input's embedding against embeddings of each task's example inputs.

Embeddings come from the shared backbone itself with every LoRA adapter switched off (mean-pooled,
normalised), so routing needs no second model. A task's examples are the training inputs sampled into
its manifest at training time plus any `routing.examples` of its config. A task scores the mean cosine
similarity of its `top_k` nearest examples; below `threshold` the default task answers, or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mtlora.routing.base import Request, Route, Router, decide

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine


class SemanticRouter(Router):
    name = "semantic"

    def __init__(self, engine: Engine, threshold: float = 0.3, default_task: str | None = None, top_k: int = 3):
        self.engine = engine
        self.threshold = threshold
        self.default_task = default_task
        self.top_k = top_k
        self._banks: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> SemanticRouter:
        return cls(engine, settings.min_similarity, settings.default_task)

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        embeddings = self.engine.embed([r.text for r in requests])  # (requests, hidden)
        routes = []
        for embedding, fits in zip(embeddings, candidates, strict=True):
            scores = {}
            for task in fits:
                bank = self.bank(task)  # (examples, hidden)
                if len(bank):
                    nearest = torch.topk(bank @ embedding, min(self.top_k, len(bank))).values
                    scores[task] = float(nearest.mean())
            routes.append(decide(self.name, scores, self.threshold, self.default_task, fits, "similarity"))
        return routes

    def bank(self, task: str) -> torch.Tensor:
        """Embeddings of `task`'s example inputs, computed once per stored adapter version."""
        manifest = self.engine.manifest(task)
        key = (task, manifest.created_at)
        if key not in self._banks:
            texts = [e.get("text") or e.get("question") for e in manifest.example_inputs]
            texts += manifest.routing.get("examples", [])
            texts = [t for t in texts if t]
            self._banks[key] = self.engine.embed(texts) if texts else torch.empty(0)
        return self._banks[key]
