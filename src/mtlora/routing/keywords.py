"""Rules from each task's routing hints: keywords (whole words, any case) and regular expressions.

A task's score is its number of matching rules; ties go to the higher `priority`, then to the task
listed first. With no match the default task answers, or the request is unroutable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mtlora.routing.base import Request, Route, Router, decide

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine


class KeywordRouter(Router):
    name = "keywords"

    def __init__(self, hints: Mapping[str, Mapping[str, Any]], default_task: str | None = None):
        self.rules = {task: _compile(h) for task, h in hints.items()}
        self.priority = {task: int(h.get("priority", 0)) for task, h in hints.items()}
        self.default_task = default_task

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> KeywordRouter:
        return cls({task: engine.manifest(task).routing for task in engine.tasks}, settings.default_task)

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        routes = []
        for request, fits in zip(requests, candidates, strict=True):
            text = request.text if request.text_pair is None else f"{request.text}\n{request.text_pair}"
            matches = {task: sum(1 for rule in self.rules.get(task, []) if rule.search(text)) for task in fits}
            # Priority only breaks ties between equal match counts (it is far below one match).
            scores = {t: n + self.priority.get(t, 0) * 1e-3 for t, n in matches.items() if n > 0}
            route = decide(self.name, scores, 1.0, self.default_task, fits, "keyword")
            if route.task is not None and route.task in matches and matches[route.task]:
                total = sum(matches.values())
                route.confidence = matches[route.task] / total
            routes.append(route)
        return routes


def _compile(hints: Mapping[str, Any]) -> list[re.Pattern[str]]:
    words = [re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE) for word in hints.get("keywords", [])]
    return words + [re.compile(pattern, re.IGNORECASE) for pattern in hints.get("patterns", [])]
