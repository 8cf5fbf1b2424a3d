"""Evaluating a task's adapter side by side with its head-only baseline and the untrained base."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from mtlora.backbone import default_device, use_bf16
from mtlora.config import ProjectConfig, TaskConfig
from mtlora.data import load_task_data
from mtlora.engine import predict_examples
from mtlora.errors import DataError
from mtlora.modeling import (
    adapter_tokenizer,
    load_adapter_model,
    load_baseline_model,
    load_untrained_model,
)
from mtlora.registry import Registry
from mtlora.tasks import Example, Prediction, TaskKind

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
    examples = data.split(split)
    if not examples:
        source = {"validation": task.data.validation, "test": task.data.test}.get(split) if task.data else None
        if source is not None:  # declared, but it holds no rows
            raise DataError(source.describe(), f"no {split} rows", "the source is empty or every row is blank")
        hint = {"validation": "set data.validation (or data.holdout)", "test": "set data.test"}.get(split, "")
        raise DataError(f"task '{task.name}'", f"has no {split} data", f"{hint} in the project file" if hint else None)
    tokenizer = adapter_tokenizer(registry, task.name, project.backbone)
    bf16 = use_bf16(task.training.precision, default_device())

    def run(variant_model: nn.Module) -> list[Prediction]:
        return predict_examples(variant_model.to(default_device()), kind, tokenizer, examples,
                                manifest.max_length, manifest.doc_stride, task.training.eval_batch_size, bf16)

    log(f"[{task.name}] evaluating on {len(examples)} {split} examples")
    predictions = {"lora": run(model)}
    counts = manifest.parameters
    # Manifests from before saved ranks stored what trained.
    parameters = {"lora": {"trainable": counts.trainable, "total": counts.total,
                           "stored": counts.stored or counts.trainable}}
    recorded = registry.baseline_path(task.name) / "baseline.json"
    record = json.loads(recorded.read_text()) if recorded.is_file() else {}
    if record.get("data") not in (None, manifest.training.get("data")):
        log(f"[{task.name}] head-only baseline left out: it was trained on other data than the adapter; "
            f"retrain both with `mtlora train --task {task.name}`")
    elif (baseline := load_baseline_model(registry, task.name, project.backbone)) is not None:
        predictions["head_only"] = run(baseline)
        parameters["head_only"] = {"trainable": record["trainable"], "total": record["total"]}
    predictions["base"] = run(load_untrained_model(project.backbone, kind, task.training.seed, len(tokenizer)))
    parameters["base"] = {"trainable": 0, "total": manifest.parameters.total}

    metrics = {variant: kind.metrics(p, examples) for variant, p in predictions.items()}
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
    )
    registry.update(task.name, metrics={**manifest.metrics, split: report.metrics})
    return report


def _samples(kind: TaskKind, examples: list[Example], predictions: dict[str, list[Prediction]]) -> list[dict]:
    """A few examples with what each variant answered, for a person to read."""
    shown = []
    for i in range(min(SAMPLES_SHOWN, len(examples))):
        example = examples[i]
        entry: dict[str, Any] = {k: example[k] for k in ("text", "text_pair", "question") if k in example}
        entry["expected"] = kind.expected_text(example)
        for variant, preds in predictions.items():
            entry[variant] = kind.answer_text(preds[i])
        shown.append(entry)
    return shown
