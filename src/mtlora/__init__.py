"""mtlora: multi-task LoRA adapters on one shared transformer backbone.

    >>> import mtlora
    >>> mtlora.train("examples/demo/mtlora.yaml")
    >>> mtlora.evaluate("examples/demo/mtlora.yaml")
    >>> mtlora.predict("examples/demo/mtlora.yaml", "a warm, funny film")   # routed to an adapter
"""

__version__ = "0.1.0"

from mtlora.api import (
    evaluate,
    evaluate_routers,
    list_adapters,
    load_engine,
    load_predictor,
    merge,
    predict,
    remove_adapter,
    route,
    show_adapter,
    train,
    train_router,
)
from mtlora.config import ProjectConfig, TaskConfig, load_config
from mtlora.engine import Engine, TaskPredictor
from mtlora.errors import (
    AdapterNotFoundError,
    AdapterNotServableError,
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
    "AdapterNotServableError",
    "BaseModelMismatchError",
    "ConfigError",
    "CorruptAdapterError",
    "DataError",
    "Engine",
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
    "evaluate_routers",
    "get_task_kind",
    "list_adapters",
    "load_config",
    "load_engine",
    "load_predictor",
    "merge",
    "predict",
    "register_task_kind",
    "remove_adapter",
    "route",
    "show_adapter",
    "task_kind_names",
    "train",
    "train_router",
]
