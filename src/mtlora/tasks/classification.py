"""`classification`: one text -> one label of a fixed set (sentiment, topic, support-ticket category)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy.special import softmax

from mtlora.errors import DataError
from mtlora.metrics import classification_metrics, confusion
from mtlora.tasks.base import Encoded, Example, Prediction, TaskKind, integer_text
from mtlora.tasks.sequence import SequenceTask, label_id, label_ids_readable

if TYPE_CHECKING:
    from mtlora.config import TaskConfig
    from mtlora.data.readers import Row


class LabelScores:
    """Decoding and scoring for kinds whose output is one score per label (`score_output`)."""

    labels: list[str] | None
    score_output: ClassVar[str] = "logits"

    def decode(self, outputs: list[dict[str, np.ndarray]], encoded: Encoded,
               examples: Sequence[Example]) -> list[Prediction]:
        assert self.labels is not None
        predictions = []
        for i, output in enumerate(outputs):
            probabilities = softmax(output[self.score_output].astype(np.float64), axis=-1)
            best = int(probabilities.argmax())
            predictions.append({
                "label": self.labels[best],
                "label_id": best,
                "confidence": float(probabilities[best]),
                "probabilities": {name: float(p) for name, p in zip(self.labels, probabilities, strict=True)},
                "truncated": encoded.truncated[i],
            })
        return predictions

    def metrics(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        assert self.labels is not None
        return classification_metrics([e["label"] for e in examples], [p["label_id"] for p in predictions],
                                      self.labels)

    def confusion(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> list[list[int]]:
        assert self.labels is not None
        return confusion([e["label"] for e in examples], [p["label_id"] for p in predictions], len(self.labels))

    def expected_text(self, example: Example) -> str:
        assert self.labels is not None
        return self.labels[example["label"]]

    def answer_text(self, prediction: Prediction) -> str:
        return f"{prediction['label']} ({prediction['confidence']:.2f})"


class ClassificationTask(LabelScores, SequenceTask):
    name = "classification"
    description = "one text -> one label"
    roles: ClassVar[tuple[str, ...]] = ("text", "label")
    input_shape = "text"
    primary_metric = "accuracy"
    categorical = True
    pair = False

    @classmethod
    def check_config(cls, config: TaskConfig) -> None:
        super().check_config(config)
        check_labels(config)

    def parse(self, rows: Sequence[Row]) -> list[Example]:
        return parse_labelled(self, rows, self.parse_texts)

    def model_kwargs(self) -> dict[str, Any]:
        assert self.labels is not None, "labels are known once training data is parsed"
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {name: i for i, name in enumerate(self.labels)},
        }


def check_labels(config: TaskConfig) -> None:
    assert config.data is not None
    if config.data.labels is not None and len(config.data.labels) < 2:
        raise ValueError(f"a {config.kind} task needs at least 2 labels")
    unknown = sorted(set(config.data.label_map.values()) - set(config.data.labels or []))
    if config.data.labels is not None and unknown:
        raise ValueError(f"data.label_map maps to {unknown}, which are not in data.labels")


def parse_labelled(kind: TaskKind, rows: Sequence[Row], texts: Callable[[Row], Example]) -> list[Example]:
    """Rows -> examples with a label id; without data.labels the training rows (parsed first) fix the set."""
    if kind.labels is None:
        kind.labels = labels_seen(kind, rows)
    ids_readable = label_ids_readable(kind.labels if kind.labels_given else None, kind.label_map)
    return [{**texts(row), "label": label_id(kind, row, label_value(kind, row), ids_readable)} for row in rows]


def label_value(kind: TaskKind, row: Row) -> Any:
    """A row's raw label: a name or a number, never an empty cell or a list, which would become a class, and
    without the spaces around it (", positive" in a CSV would be a class apart from "positive")."""
    value, column = kind.value(row, "label"), kind.column("label")
    if isinstance(value, list | dict):
        raise DataError(row.where, f"field '{column}' holds a {type(value).__name__}, not a label",
                        "give each row one label (a name, or a 0-based id into data.labels)")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise DataError(row.where, f"field '{column}' is empty", "give the row its label, or drop it")
    return value


def labels_seen(kind: TaskKind, rows: Sequence[Row]) -> list[str]:
    """Without data.labels, the label set is what the training data holds, sorted (as numbers where every
    label is one, so that class 10 follows class 9 in reports, not class 1)."""
    raw = [label_value(kind, row) for row in rows]
    names = {kind.label_map.get(str(value), str(value)) for value in raw}
    if len(names) < 2:
        where = rows[0].where if rows else "training data"
        raise DataError(where, f"found only {len(names)} distinct label(s): {sorted(names)}",
                        "a classifier needs at least 2; check data.fields.label")
    numbered = all(integer_text(name) for name in names)
    return sorted(names, key=lambda name: (int(name), name)) if numbered else sorted(names)  # "1" < "01": one order
