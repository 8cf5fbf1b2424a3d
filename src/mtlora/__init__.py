"""mtlora: multi-task LoRA adapters on one shared transformer backbone.

    >>> import mtlora
    >>> mtlora.train("examples/demo/mtlora.yaml")
    >>> mtlora.evaluate("examples/demo/mtlora.yaml")
    >>> mtlora.predict("examples/demo/mtlora.yaml", "sentiment", "a warm, funny film")
"""

__version__ = "0.1.0"

from mtlora.api import evaluate, list_adapters, load_predictor, predict, show_adapter, train
from mtlora.config import ProjectConfig, TaskConfig, load_config
from mtlora.engine import TaskPredictor
from mtlora.errors import (
    AdapterNotFoundError,
    BaseModelMismatchError,
    ConfigError,
    CorruptAdapterError,
    DataError,
    InputError,
    MtloraError,
    RegistryError,
    UnknownTaskError,
)
from mtlora.registry import Manifest, Registry
from mtlora.tasks import TaskKind, get_task_kind, register_task_kind, task_kind_names

__all__ = [
    "AdapterNotFoundError",
    "BaseModelMismatchError",
    "ConfigError",
    "CorruptAdapterError",
    "DataError",
    "InputError",
    "Manifest",
    "MtloraError",
    "ProjectConfig",
    "Registry",
    "RegistryError",
    "TaskConfig",
    "TaskKind",
    "TaskPredictor",
    "UnknownTaskError",
    "__version__",
    "evaluate",
    "get_task_kind",
    "list_adapters",
    "load_config",
    "load_predictor",
    "predict",
    "register_task_kind",
    "show_adapter",
    "task_kind_names",
    "train",
]
