"""What every router shares: the request it sees, the route it returns, and the interface.

A router is one module in this package with a `Router` subclass, registered by name in `__init__.py`.
The engine narrows each request's candidates by input shape before asking the router, so a router
only chooses among tasks that can answer the input at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine
    from mtlora.registry import Registry


# The task input shapes that can answer an input of each shape: QA takes a pair as question and context.
ANSWERED_BY = {"text": {"text"}, "pair": {"pair", "qa"}, "qa": {"qa"}}
# How messages name an input shape.
SHAPE_NAMES = {"text": "a text", "pair": "a text pair", "qa": "a question with a context"}
# What a route made by the input's shape alone names as its router: no router ran.
BY_SHAPE = "shape"


@dataclass(frozen=True)
class Request:
    """One input to answer. `shape` is "text" (one text), "pair" (two texts: a pair task, or QA's
    question and context) or "qa" (given as question and context)."""

    text: str
    text_pair: str | None = None
    shape: str = "text"
    task: str | None = None  # named by the caller (argument or `<task>` / `task:` prefix)


@dataclass
class Route:
    """Where a request goes. `task` is None when no adapter should answer it (unroutable)."""

    task: str | None
    router: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    reading: str | None = None  # what the router read, "encoder" or "embeddings" (routers that read the backbone)


class Router(ABC):
    name: ClassVar[str]
    # Picks a task for an input that names none. A router that only follows a name answers every unnamed
    # input with the default task or "unroutable": a routing evaluation of it measures nothing.
    chooses_task: ClassVar[bool] = True
    reads_features: ClassVar[bool] = False  # reads what `router.features` names (encoder or token embeddings)
    score_meaning: ClassVar[str] = "score"  # what a task's score is, for a person reading the scores
    reads_router_saves: ClassVar[bool] = False  # decides with what `mtlora train-router` saves (adapter, head)

    @classmethod
    def adapters_loaded(cls, settings: RouterSettings) -> list[str]:
        """The registry's adapters this router loads into the engine, beside the tasks' (the learned router's)."""
        return []

    @classmethod
    @abstractmethod
    def build(cls, engine: Engine, settings: RouterSettings) -> Router:
        """This router for the adapters `engine` holds, with the project's router settings."""

    @abstractmethod
    def route(self, requests: Sequence[Request], candidates: Sequence[list[str]]) -> list[Route]:
        """One route per request; `candidates[i]` lists the tasks whose input shape fits request i. A request
        that names a task never gets here: the engine sends it to that task (`Engine._explicit`)."""

    @classmethod
    def missing(cls, registry: Registry, settings: RouterSettings) -> str | None:
        """What this router still needs before it can route (None: nothing), for callers that skip it."""
        return None

    def unmeasured(self) -> str | None:
        """Why an evaluation of this router, as built, would measure no skill of it (None: it would)."""
        return None


def decide(router: str, scores: dict[str, float], threshold: float, default_task: str | None,
           candidates: list[str], what: str, reason: str | None = None, reading: str | None = None) -> Route:
    """Best-scoring candidate if it clears `threshold`; otherwise the default task, or unroutable, each
    with a reason (`reason` says why there are no scores, where "no <what> matched" would not). So a
    route without a reason is a task that won on its score."""
    if scores:
        best = max(scores, key=scores.__getitem__)
        if scores[best] >= threshold:
            return Route(best, router, scores[best], scores, reading=reading)
        reason = f"best {what} {scores[best]:.2f} ({best}) is below the threshold {threshold:.2f}"
    elif reason is None:
        reason = f"no {what} matched"
    if default_task is not None and default_task in candidates:
        return Route(default_task, router, 0.0, scores, f"{reason}; fell back to the default task", reading)
    if default_task is not None:
        reason += f"; the default task '{default_task}' is not a candidate (not loaded, or takes other inputs)"
    return Route(None, router, 0.0, scores, reason, reading)


RouteReading = Callable[[str, Sequence[Request], Sequence[list[str]]], list[Route]]


def cascaded(route_reading: RouteReading, requests: Sequence[Request], candidates: Sequence[list[str]],
             sure: Callable[[Route], bool]) -> list[Route]:
    """Routes read from the token embeddings where `sure` of them, from the encoder for the rest.

    `route_reading(reading, requests, candidates)` routes requests reading "embeddings" or "encoder".
    The token embeddings cost no encoder pass, so only the inputs they leave unsure pay for one.
    """
    routes = route_reading("embeddings", requests, candidates)
    unsure = [i for i, route in enumerate(routes) if not sure(route)]
    if unsure:
        rerouted = route_reading("encoder", [requests[i] for i in unsure], [candidates[i] for i in unsure])
        for i, route in zip(unsure, rerouted, strict=True):
            routes[i] = route
    return routes
