"""The caller names the task: an argument, or a `<task>` / `task:` prefix on the text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtlora.routing.base import SHAPE_NAMES, Request, Route, Router, decide

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine

PREFIX = re.compile(r"^\s*(?:<(?P<angle>[A-Za-z0-9][\w.-]*)>|(?P<colon>[A-Za-z0-9][\w.-]*):)\s*")


def split_prefix(text: str, tasks: Sequence[str]) -> tuple[str | None, str]:
    """`"<sentiment> great film"` -> `("sentiment", "great film")`; text without a known task prefix is kept."""
    name = prefix_name(text)
    if name is not None and name in tasks:
        return name, PREFIX.sub("", text, count=1)
    return None, text


def prefix_name(text: str) -> str | None:
    """The name a `<name>` / `name:` prefix of `text` gives, task or not (`"note: hi"` -> `"note"`)."""
    match = PREFIX.match(text)
    return (match.group("angle") or match.group("colon")) if match else None


class ExplicitRouter(Router):
    name = "explicit"
    chooses_task = False
    score_meaning = "named (1)"

    def __init__(self, default_task: str | None = None):
        self.default_task = default_task

    @classmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> ExplicitRouter:
        return cls(settings.default_task)

    @classmethod
    def named(cls, task: str) -> Route:
        """The route of a request that names `task`, a task that takes its input."""
        return Route(task, cls.name, 1.0, {task: 1.0})

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        """A request that names a task goes to it, as the engine sends one (which never asks a router); one
        that names none, to the default task, or none."""
        return [self._route(request, fits) for request, fits in zip(requests, candidates, strict=True)]

    def _route(self, request: Request, fits: list[str]) -> Route:
        if request.task is None:
            unnamed = "no task named (name one: the task argument, or a <task> or task: prefix on the text)"
            return decide(self.name, {}, 1.0, self.default_task, fits, "task", reason=unnamed)
        if request.task in fits:
            return self.named(request.task)
        # The engine refuses such a request; a router answers every request, so this one is unroutable, and
        # not sent to the default task, which is not what the caller named.
        return Route(None, self.name, 0.0, reason=f"the named task '{request.task}' is not loaded or does not take "
                                                  f"{SHAPE_NAMES[request.shape]} (the tasks that do: "
                                                  f"{', '.join(fits) or 'none'})")
