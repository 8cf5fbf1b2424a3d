"""Evaluating a task's adapter side by side with its head-only baseline and the untrained base."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from mtlora.backbone import default_device, use_bf16
from mtlora.config import LEARNING_RATES, NOT_TRAINING_SETTINGS, ProjectConfig, TaskConfig
from mtlora.data import TaskData, load_task_data
from mtlora.engine import predict_examples
from mtlora.errors import DataError, RegistryError, train_hint
from mtlora.modeling import (
    BASELINE_RECORD,
    adapter_tokenizer,
    load_adapter_model,
    load_baseline_model,
    load_untrained_model,
)
from mtlora.registry import Manifest, Registry
from mtlora.tasks import Example, Prediction, TaskKind
from mtlora.tasks.base import SHOWN_ROLES

SAMPLES_SHOWN = 5
# "base" is the backbone without the adapter: with an untrained head for encoder kinds, prompt-only for seq2seq.
VARIANTS = {"base": "base, no adapter", "head_only": "head-only baseline", "lora": "LoRA adapter"}


@dataclass
class TaskReport:
    task: str
    kind: str
    split: str
    examples: int
    primary_metric: str
    metrics: dict[str, dict[str, float]]  # variant -> metric -> value
    parameters: dict[str, dict[str, int]]  # variant -> {trainable, total}; LoRA also stored (saved rank)
    labels: list[str] | None = None
    confusion: list[list[int]] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    # Examples whose input a training example also has; None on the train split, where every one has.
    seen_in_training: int | None = None
    # variant -> what its metrics report without having measured it (`TaskKind.caveats`)
    caveats: dict[str, list[str]] = field(default_factory=dict)
    # Which save of the adapter was scored (`Manifest.version`), so that a summary built later can tell a
    # report of an adapter trained again since (the same name, other weights) from one of the adapter there
    # now. None in reports of earlier versions.
    adapter_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_task(
    project: ProjectConfig,
    task: TaskConfig,
    split: str = "validation",
    log: Callable[[str], None] = print,
) -> TaskReport:
    """Score the LoRA adapter, the head-only baseline (if trained) and the untrained base on `split`."""
    registry = Registry(project.registry)
    model, kind, manifest = load_adapter_model(registry, task.name, project.backbone)
    data = load_task_data(project, task, splits=(split,))
    _check_trained_as_configured(task, manifest, data, log)
    examples = data.split(split)
    if not examples:  # not declared: a declared source without rows fails as it is read
        hint = {"validation": "set data.validation (or data.holdout)", "test": "set data.test"}.get(split, "")
        raise DataError(f"task '{task.name}'", f"has no {split} data", f"{hint} in the project file" if hint else None)
    seen = None if split == "train" else data.inputs_seen_in_training(split)
    if seen:
        log(f"[{task.name}] warning: {seen_in_training_warning(seen, len(examples), split)}")
    tokenizer = adapter_tokenizer(registry, task.name, project.backbone)
    bf16 = use_bf16(project.inference.precision, default_device(), project.backbone)  # as the engine serves

    def run(variant_model: nn.Module) -> list[Prediction]:
        return predict_examples(variant_model.to(default_device()), kind, tokenizer, examples,
                                manifest.max_length, manifest.doc_stride, task.training.eval_batch_size, bf16)

    log(f"[{task.name}] evaluating on {len(examples)} {split} examples")
    predictions = {"lora": run(model)}
    counts = manifest.parameters
    parameters = {"lora": {"trainable": counts.trainable, "total": counts.total, "stored": counts.stored}}
    recorded = registry.baseline_path(task.name) / BASELINE_RECORD
    record = json.loads(recorded.read_text()) if recorded.is_file() else {}
    if unlike := _baseline_unlike_adapter(record, manifest):
        log(f"[{task.name}] head-only baseline left out: it was trained on {unlike} than the adapter; "
            f"retrain both with `{train_hint(task.name)}`")
    elif (baseline := load_baseline_model(registry, task.name, project.backbone)) is not None:
        predictions["head_only"] = run(baseline)
        parameters["head_only"] = {"trainable": record["trainable"], "total": record["total"]}
    predictions["base"] = run(load_untrained_model(project.backbone, kind, task.training.seed, len(tokenizer)))
    parameters["base"] = {"trainable": 0, "total": manifest.parameters.total}

    metrics = {variant: kind.metrics(p, examples) for variant, p in predictions.items()}
    caveats = {variant: notes for variant in VARIANTS
               if variant in predictions and (notes := kind.caveats(predictions[variant], examples))}
    for variant, notes in caveats.items():
        for note in notes:
            log(f"[{task.name}] warning: {VARIANTS[variant]}: {note}")
    report = TaskReport(
        task=task.name,
        kind=task.kind,
        split=split,
        examples=len(examples),
        primary_metric=kind.primary_metric,
        metrics={v: metrics[v] for v in VARIANTS if v in metrics},
        parameters={v: parameters[v] for v in VARIANTS if v in parameters},
        labels=kind.labels,
        confusion=kind.confusion(predictions["lora"], examples),
        samples=_samples(kind, examples, predictions),
        seen_in_training=seen,
        caveats=caveats,
        adapter_version=manifest.version,
    )
    registry.record_metrics(task.name, manifest, split, report.metrics)
    return report


def seen_in_training_warning(seen: int, examples: int, split: str) -> str:
    holdout = ", or use data.holdout, which keeps each input on one side" if split == "validation" else ""
    return (f"{seen} of {examples} {split} inputs are also training inputs, so the scores tell what the adapter "
            f"remembers as much as what it learned; read {split} from rows the training data lacks{holdout}")


def _baseline_unlike_adapter(record: dict[str, Any], manifest: Manifest) -> str | None:
    """What the head-only baseline was trained on that the adapter was not, if anything (records from
    before a field was kept do not count against it)."""
    if record.get("base_fingerprint") not in (None, manifest.base_fingerprint):
        return "another backbone"
    if record.get("data_signature") not in (None, manifest.training.get("data_signature")):
        return "other data"
    # A baseline kept from an earlier run (the adapter retrained with --no-baseline) may have trained for
    # other epochs, on other batches...: no like-for-like comparison with the adapter. Each trains at its
    # own learning rate, so neither rate tells.
    ours, theirs = record.get("settings"), manifest.training.get("settings")
    if isinstance(ours, dict) and isinstance(theirs, dict):
        differ = sorted(key for key in ours.keys() | theirs.keys()
                        if key not in NOT_TRAINING_SETTINGS | LEARNING_RATES and ours.get(key) != theirs.get(key))
        if differ:
            said = ", ".join(f"{key} {ours.get(key)} against {theirs.get(key)}" for key in differ[:3])
            return f"other training settings ({said})"
    return None


def _check_trained_as_configured(task: TaskConfig, manifest: Manifest, data: TaskData,
                                 log: Callable[[str], None]) -> None:
    """The project's data is scored with the adapter's kind and labels: they must be the ones it was
    trained with, or every score is wrong. Other training data than the adapter's is worth a warning:
    a changed holdout puts rows it trained on into the validation split."""
    retrain = f"retrain it with `{train_hint(task.name)}`"
    if manifest.kind != task.kind:
        raise RegistryError(f"adapter '{task.name}' was trained as {manifest.kind}, but the project file now says "
                            f"kind: {task.kind}; {retrain}")
    if manifest.labels != data.kind.labels:
        given = "the project file now gives" if data.kind.labels_given else "the training data now gives (sorted)"
        fix = "restore them in that order" if data.kind.labels_given else "list them in data.labels in that order"
        raise RegistryError(f"adapter '{task.name}' was trained with labels {manifest.labels}, but {given} "
                            f"{data.kind.labels}; {fix}, or {retrain}")
    trained_on = manifest.training.get("data_signature")
    if trained_on is not None and trained_on != data.train_signature():
        log(f"[{task.name}] warning: the adapter was trained on other examples than the project's training data "
            f"gives now (a file edited, or limit, holdout or mixture changed): a validation split held out of "
            f"the training file may hold rows it trained on; {retrain}")


def _samples(kind: TaskKind, examples: list[Example], predictions: dict[str, list[Prediction]]) -> list[dict]:
    """A few examples with what each variant answered, for a person to read."""
    shown = []
    for i in _sample_indices(examples):
        example = examples[i]
        entry: dict[str, Any] = {k: example[k] for k in SHOWN_ROLES if k in example}
        entry["expected"] = kind.expected_text(example)
        for variant, preds in predictions.items():
            entry[variant] = kind.answer_text(preds[i])
        shown.append(entry)
    return shown


def _sample_indices(examples: list[Example]) -> list[int]:
    """The first examples, taking turns between a multitask adapter's parts (`example["task"]`) so that
    each part shows: its examples come grouped by part."""
    by_part: dict[Any, list[int]] = {}
    for i, example in enumerate(examples):
        by_part.setdefault(example.get("task"), []).append(i)
    turns = [i for group in itertools.zip_longest(*by_part.values()) for i in group if i is not None]
    return turns[:SAMPLES_SHOWN]
