"""Routers decide which adapter answers an input. Adding one is a module plus one line in ROUTERS: the project
file, the CLI and the HTTP schema take the router names from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtlora.errors import UnknownTaskError
from mtlora.routing.base import Request, Route, Router
from mtlora.routing.explicit import ExplicitRouter, split_prefix
from mtlora.routing.keywords import KeywordRouter
from mtlora.routing.learned import ROUTER_ADAPTER, LearnedRouter, train_router
from mtlora.routing.semantic import SemanticRouter

if TYPE_CHECKING:
    from mtlora.config import RouterSettings
    from mtlora.engine.engine import Engine

ROUTERS: dict[str, type[Router]] = {
    router.name: router for router in (ExplicitRouter, KeywordRouter, SemanticRouter, LearnedRouter)
}


def choosing_routers() -> list[str]:
    """The routers that choose a task for an input themselves (`Router.chooses_task`): not those that only
    follow the task an input names."""
    return [name for name, router in ROUTERS.items() if router.chooses_task]


def router_class(name: str) -> type[Router]:
    if name not in ROUTERS:
        raise UnknownTaskError("router", name, list(ROUTERS))
    return ROUTERS[name]


def build_router(name: str, engine: Engine, settings: RouterSettings) -> Router:
    """The router called `name`, set up for `engine`'s adapters with the project's router settings."""
    return router_class(name).build(engine, settings)


__all__ = ["ROUTERS", "ROUTER_ADAPTER", "ExplicitRouter", "KeywordRouter", "LearnedRouter", "Request", "Route",
           "Router", "SemanticRouter", "build_router", "choosing_routers", "router_class", "split_prefix",
           "train_router"]
