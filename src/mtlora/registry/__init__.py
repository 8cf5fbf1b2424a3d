"""Adapter storage: a folder of standard PEFT adapters, each with a manifest."""

from mtlora.registry.manifest import Manifest, ParameterCounts, share_of
from mtlora.registry.store import Registry

__all__ = ["Manifest", "ParameterCounts", "Registry", "share_of"]
