"""From a task's data settings to parsed train / validation / test examples."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sklearn.model_selection import train_test_split

from mtlora.config import ProjectConfig, SourceConfig, TaskConfig
from mtlora.data.readers import read_rows, source_location
from mtlora.errors import DataError, InputError
from mtlora.tasks import Example, TaskKind, get_task_kind
from mtlora.tasks.base import input_key
from mtlora.tasks.multitask import MultitaskTask

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    kind: TaskKind
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    # A multitask mixture draws every epoch of its run at once (`_mixture_data`): `train` holds this many
    # epochs' examples, to be trained in one pass. None: `train` is read as is, for `training.epochs` passes.
    epochs_drawn: float | None = None

    def split(self, name: str) -> list[Example]:
        check_split(name)
        examples: list[Example] = getattr(self, name)
        return examples

    def inputs_seen_in_training(self, split: str) -> int:
        """How many of `split`'s examples ask what a training example asks: their scores tell what the
        adapter remembers as much as what it learned."""
        trained = {input_key(example) for example in self.train}
        return sum(input_key(example) in trained for example in self.split(split))

    def train_signature(self) -> str:
        """The training examples, not where they were read from: a file edited in place, another limit,
        holdout or mixture all change it. Training records it; evaluation compares a head-only baseline
        with the adapter only when theirs agree, and says when the adapter's differs from the project's."""
        rows = [{key: value for key, value in example.items() if key != "where"} for example in self.train]
        return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_split(name: str) -> str:
    if name not in SPLITS:
        raise InputError(f"no split '{name}'; valid splits: {', '.join(SPLITS)}")
    return name


def load_task_data(project: ProjectConfig, task: TaskConfig, splits: tuple[str, ...] = SPLITS) -> TaskData:
    """Read and validate a task's data. Training data is always read: it fixes the label set.

    With `data.holdout`, validation is a seeded (stratified for labelled tasks) share of train.
    """
    if task.mixture is not None:
        return _mixture_data(project, task, splits)
    # A task without a mixture has data: TaskConfig's validator refuses one that lacks either.
    assert task.data is not None
    kind = get_task_kind(task.kind).from_config(task)
    seed = task.training.seed

    def read(role: str, source: SourceConfig) -> list[Example]:
        rows = read_rows(source, project.data_dir, seed, role)
        # A declared source with nothing in it is a mistake, whichever split it is. Checked before parsing,
        # where a classifier without data.labels would first count the labels of no rows.
        if not rows:
            raise DataError(source_location(source, project.data_dir, role),
                            f"no {'training' if role == 'train' else role} rows",
                            "the source is empty, holds only a header line, or every line is blank")
        return kind.parse(rows)

    train = read("train", task.data.train)
    validation: list[Example] = []
    if task.data.holdout is not None:
        where = source_location(task.data.train, project.data_dir, "train")
        train, validation = _holdout(kind, train, task.data.holdout, seed, where)
    elif task.data.validation is not None and "validation" in splits:
        validation = read("validation", task.data.validation)
    kind.fit(train)
    test: list[Example] = []
    if task.data.test is not None and "test" in splits:
        test = read("test", task.data.test)
    return TaskData(kind=kind, train=train, validation=validation, test=test)


def _mixture_data(project: ProjectConfig, task: TaskConfig, splits: tuple[str, ...]) -> TaskData:
    """Every part's data tagged with its part; training examples drawn in the mix (see `mix_shares`).

    The draw covers every epoch of the run, trained in one pass: a part drawn less often than it has
    examples trains on other ones in each epoch, where one epoch's draw repeated left the same ones out
    of every epoch. A run that stops at `max_steps` draws one epoch, which it repeats."""
    assert task.mixture is not None
    parts = {name: load_task_data(project, project.task(name), splits) for name in task.mixture.tasks}
    shares = mix_shares({name: len(data.train) for name, data in parts.items()}, task.mixture.temperature)
    total = sum(len(data.train) for data in parts.values())
    epochs = task.training.epochs if task.training.max_steps is None else None
    rng = random.Random(task.training.seed)
    train: list[Example] = []
    mix: dict[str, Any] = {"temperature": task.mixture.temperature, "tasks": {}}
    for name, data in parts.items():
        drawn = round(total * shares[name])
        train += _tagged(_drawn_evenly(data.train, round(drawn * (epochs or 1.0)), rng), name)
        mix["tasks"][name] = {"examples": len(data.train), "share": round(shares[name], 4), "drawn": drawn}
    rng.shuffle(train)
    kind = MultitaskTask.from_parts({name: data.kind for name, data in parts.items()}, mix)  # type: ignore[misc]
    return TaskData(kind=kind, train=train,
                    validation=[e for name, data in parts.items() for e in _tagged(data.validation, name)],
                    test=[e for name, data in parts.items() for e in _tagged(data.test, name)], epochs_drawn=epochs)


def _drawn_evenly(pool: list[Example], count: int, rng: random.Random) -> list[Example]:
    """`count` examples of `pool`: a seeded sample, or where it asks for more than the pool holds, every
    example as many whole times as fit and then a sample of the rest (none left out, none favoured)."""
    if count <= len(pool):
        return rng.sample(pool, count)
    whole, rest = divmod(count, len(pool))
    return pool * whole + rng.sample(pool, rest)


def mix_shares(sizes: dict[str, int], temperature: float) -> dict[str, float]:
    """Temperature-scaled mixing (Raffel et al., 2020): a task's share is proportional to size^(1/T).
    T=1 mixes by size; a larger T lifts small tasks toward equal shares."""
    weights = {name: size ** (1 / temperature) for name, size in sizes.items()}
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


def _tagged(examples: list[Example], task: str) -> list[Example]:
    return [{**e, "task": task} for e in examples]


def _holdout(kind: TaskKind, examples: list[Example], fraction: float,
             seed: int, where: str) -> tuple[list[Example], list[Example]]:
    """Split off `fraction` of the training inputs: the examples that ask the same thing (RACE's questions
    on one article) stay on one side, lest validation score what training showed.

    Labelled inputs split stratified. A label with one input cannot be on both sides: it stays in training
    and the rest split stratified, unless they are too few to hold each of their labels on both sides; then,
    as where no label has two inputs, the whole split goes unstratified."""
    groups = list(_by_input(examples).values())
    keys = [kind.stratify_key(group[0]) for group in groups]
    counts = Counter(keys)
    paired = [(group, key) for group, key in zip(groups, keys, strict=True) if counts[key] > 1]
    labels = len({key for _, key in paired})
    whole = len(paired) == len(groups)  # no label set aside: a split too small to stratify is an error
    if kind.categorical and paired and (whole or labels <= _held(fraction, len(paired)) < len(paired)):
        split_groups, stratify = zip(*paired, strict=True)
        _check_holdout_size(where, fraction, list(split_groups), labels)
        train, held = train_test_split(list(split_groups), test_size=fraction, random_state=seed,
                                       stratify=list(stratify))
        train = [*train, *(group for group, key in zip(groups, keys, strict=True) if counts[key] == 1)]
    else:
        _check_holdout_size(where, fraction, groups, 1)
        train, held = train_test_split(groups, test_size=fraction, random_state=seed)
    return [e for group in train for e in group], [e for group in held for e in group]


def _held(fraction: float, inputs: int) -> int:
    return math.ceil(fraction * inputs)  # train_test_split's rounding


def _by_input(examples: list[Example]) -> dict[tuple[str | None, ...], list[Example]]:
    groups: dict[tuple[str | None, ...], list[Example]] = defaultdict(list)
    for example in examples:
        groups[input_key(example)].append(example)
    return groups


def _check_holdout_size(where: str, fraction: float, groups: list[list[Example]], classes: int) -> None:
    """What train_test_split needs, said in the project's terms: a stratified split puts every label in
    validation (training then has them too, holdout being under half), and any split leaves a training input."""
    inputs, held = len(groups), _held(fraction, len(groups))
    rows = sum(len(group) for group in groups)
    of = f"{rows} training row{'s' * (rows > 1)}" + (f" ({inputs} distinct input{'s' * (inputs > 1)})"
                                                   if inputs < rows else "")
    instead = "give a validation file instead of holdout"
    if held == inputs:  # one input: holdout is under half, so this is the only way to leave none
        raise DataError(where, f"holdout {fraction} of {of} leaves 0 for training", instead)
    if held < classes:
        least = math.ceil(100 * classes / inputs) / 100
        fix = f"raise holdout to {least}, or {instead}" if least < 0.5 else instead
        raise DataError(where, f"holdout {fraction} of {of} keeps {held} for validation, fewer than the {classes} "
                               "labels (a split stratified by label holds each on both sides)", fix)
