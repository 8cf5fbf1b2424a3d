"""Task kinds, registered by name. Adding a kind is one module plus one `register_task_kind` line."""

from __future__ import annotations

from mtlora.errors import UnknownTaskError
from mtlora.tasks.base import Encoded, Example, Prediction, TaskKind
from mtlora.tasks.classification import ClassificationTask
from mtlora.tasks.extractive_qa import ExtractiveQATask
from mtlora.tasks.generation import GenerationTask
from mtlora.tasks.instruction_classification import InstructionClassificationTask
from mtlora.tasks.mcq_generation import MCQGenerationTask
from mtlora.tasks.multitask import MultitaskTask
from mtlora.tasks.pair_classification import PairClassificationTask
from mtlora.tasks.regression import RegressionTask

_KINDS: dict[str, type[TaskKind]] = {}


def register_task_kind(kind: type[TaskKind]) -> type[TaskKind]:
    """Make `kind` available under `kind.name`; refuses a name that is taken, and a kind that lacks a method
    (said now, not as a TypeError wherever the kind is first built)."""
    if kind.name in _KINDS:
        raise ValueError(f"task kind '{kind.name}' is registered already (by {_KINDS[kind.name].__name__})")
    if missing := sorted(getattr(kind, "__abstractmethods__", ())):
        raise TypeError(f"task kind '{kind.name}' ({kind.__name__}) does not define {', '.join(missing)}, which "
                        "every kind needs (see mtlora.tasks.base.TaskKind)")
    _KINDS[kind.name] = kind
    return kind


def get_task_kind(name: str) -> type[TaskKind]:
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownTaskError("task kind", name, list(_KINDS)) from None


def task_kind_names() -> list[str]:
    return sorted(_KINDS)


for _kind in (ClassificationTask, PairClassificationTask, RegressionTask, ExtractiveQATask,
              InstructionClassificationTask, GenerationTask, MCQGenerationTask, MultitaskTask):
    register_task_kind(_kind)

__all__ = ["Encoded", "Example", "Prediction", "TaskKind", "get_task_kind", "register_task_kind",
           "task_kind_names"]
