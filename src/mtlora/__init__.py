"""mtlora: multi-task LoRA adapters on one shared transformer backbone.

    >>> import mtlora
    >>> mtlora.train("examples/demo/mtlora.yaml")
    >>> mtlora.evaluate("examples/demo/mtlora.yaml")
    >>> mtlora.predict("examples/demo/mtlora.yaml", "my parcel never arrived")   # routed to an adapter
    >>> mtlora.predict("examples/demo/mtlora.yaml", "a warm, funny film", task="sentiment")
    >>> mtlora.route("examples/demo/mtlora.yaml", "my parcel never arrived")     # where it goes, and why
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtlora")  # pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree on the path, never installed
    __version__ = "0+unknown"

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
    EmptyTextError,
    InputError,
    MtloraError,
    RegistryError,
    TaskProblems,
    TrainingInterrupted,
    UnknownTaskError,
)
from mtlora.evaluation import RoutingReport, TaskReport
from mtlora.registry import Manifest, Registry
from mtlora.routing import Route
from mtlora.tasks import TaskKind, get_task_kind, register_task_kind, task_kind_names
from mtlora.training import TrainOutcome

__all__ = [
    "AdapterNotFoundError",
    "AdapterNotServableError",
    "BaseModelMismatchError",
    "ConfigError",
    "CorruptAdapterError",
    "DataError",
    "EmptyTextError",
    "Engine",
    "InputError",
    "Manifest",
    "MtloraError",
    "ProjectConfig",
    "Registry",
    "RegistryError",
    "Route",
    "RoutingReport",
    "TaskConfig",
    "TaskKind",
    "TaskPredictor",
    "TaskProblems",
    "TaskReport",
    "TrainOutcome",
    "TrainingInterrupted",
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
