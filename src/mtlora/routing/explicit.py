"""The caller names the task: an argument, or a `<task>` / `task:` prefix on the text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtlora.routing.base import Request, Route, Router, decide

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

    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        """The requests that name no task (the engine routes a named one itself): the default task, or none."""
        unnamed = "no task named (name one: the task argument, or a <task> or task: prefix on the text)"
        return [decide(self.name, {}, 1.0, self.default_task, fits, "task", reason=unnamed) for fits in candidates]
