"""From a task's data settings to parsed train / validation / test examples."""

from __future__ import annotations

from dataclasses import dataclass

from sklearn.model_selection import train_test_split

from mtlora.config import ProjectConfig, TaskConfig
from mtlora.data.readers import read_rows
from mtlora.errors import DataError, InputError
from mtlora.tasks import Example, TaskKind, get_task_kind

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    kind: TaskKind
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def split(self, name: str) -> list[Example]:
        check_split(name)
        examples: list[Example] = getattr(self, name)
        return examples


def check_split(name: str) -> str:
    if name not in SPLITS:
        raise InputError(f"no split '{name}'; valid splits: {', '.join(SPLITS)}")
    return name


def load_task_data(project: ProjectConfig, task: TaskConfig, splits: tuple[str, ...] = SPLITS) -> TaskData:
    """Read and validate a task's data. Training data is always read: it fixes the label set.

    With `data.holdout`, validation is a seeded (stratified for labelled tasks) share of train.
    """
    kind = get_task_kind(task.kind).from_config(task)
    seed = task.training.seed
    train = kind.parse(read_rows(task.data.train, project.data_dir, seed))
    if not train:
        raise DataError(task.data.train.describe(), "no training rows")
    validation: list[Example] = []
    if task.data.holdout is not None:
        train, validation = _holdout(kind, train, task.data.holdout, seed)
    elif task.data.validation is not None and "validation" in splits:
        validation = kind.parse(read_rows(task.data.validation, project.data_dir, seed))
    test: list[Example] = []
    if task.data.test is not None and "test" in splits:
        test = kind.parse(read_rows(task.data.test, project.data_dir, seed))
    return TaskData(kind=kind, train=train, validation=validation, test=test)


def _holdout(kind: TaskKind, examples: list[Example], fraction: float,
             seed: int) -> tuple[list[Example], list[Example]]:
    keys = [kind.stratify_key(e) for e in examples]
    stratify = keys if kind.categorical and min(keys.count(k) for k in set(keys)) >= 2 else None
    train, held = train_test_split(examples, test_size=fraction, random_state=seed, stratify=stratify)
    return list(train), list(held)
