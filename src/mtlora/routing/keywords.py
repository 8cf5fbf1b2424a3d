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
    score_meaning = "rules matched"

    def __init__(self, hints: Mapping[str, Mapping[str, Any]], default_task: str | None = None):
        self.rules = {task: _compile(h) for task, h in hints.items()}
        self.priority = {task: int(h.get("priority", 0)) for task, h in hints.items()}
        self.default_task = default_task

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> KeywordRouter:
        return cls({task: engine.routing_hints(task) for task in engine.tasks}, settings.default_task)

    def unmeasured(self) -> str | None:
        if any(self.rules.values()):
            return None
        return ("no task has routing keywords or patterns (a task's `routing:` hints), so this router left every "
                "input to the default task or unroutable: its row measures no rules")

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        routes = []
        for request, fits in zip(requests, candidates, strict=True):
            text = request.text if request.text_pair is None else f"{request.text}\n{request.text_pair}"
            matches = {task: float(n) for task in fits
                       if (n := sum(1 for rule in self.rules.get(task, []) if rule.search(text)))}
            if not matches:
                routes.append(decide(self.name, {}, 1.0, self.default_task, fits, "keyword"))
                continue
            # More matches win; priority only breaks ties, then the task listed first (max keeps the first).
            best = max(matches, key=lambda task: (matches[task], self.priority.get(task, 0)))
            routes.append(Route(best, self.name, matches[best] / sum(matches.values()), matches))
        return routes


def _compile(hints: Mapping[str, Any]) -> list[re.Pattern[str]]:
    # Whole words, by lookarounds rather than \b, so that a keyword may begin or end with a symbol (c++, #refund).
    words = [re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE) for word in hints.get("keywords", [])]
    return words + [re.compile(pattern, re.IGNORECASE) for pattern in hints.get("patterns", [])]
