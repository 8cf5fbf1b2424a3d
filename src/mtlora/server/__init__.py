"""The HTTP server (needs the `server` extra: fastapi, uvicorn, prometheus-client)."""

from mtlora.server.app import create_app, create_app_from_env
from mtlora.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "create_app_from_env"]
