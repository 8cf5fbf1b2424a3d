"""The HTTP server (needs the `server` extra: fastapi, uvicorn, prometheus-client)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtlora.server.settings import ServerSettings

if TYPE_CHECKING:
    from mtlora.server.app import create_app, create_app_from_env

__all__ = ["ServerSettings", "create_app", "create_app_from_env"]


def __getattr__(name: str) -> Any:
    # The app needs the `server` extra; the CLI reads ServerSettings for `serve`'s defaults without it.
    if name in ("create_app", "create_app_from_env"):
        from mtlora.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'mtlora.server' has no attribute {name!r}")
