"""Shared parts of the kinds that put a head on the whole sequence (one or two texts in, logits out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from peft import TaskType
from transformers import AutoModelForSequenceClassification

from mtlora.errors import DataError, InputError
from mtlora.tasks.base import Encoded, Example, TaskKind, integer_text, require_text, truncated_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mtlora.data.readers import Row


class SequenceTask(TaskKind):
    auto_class = AutoModelForSequenceClassification
    peft_task_type = TaskType.SEQ_CLS
    pair: ClassVar[bool]

    def parse_texts(self, row: Row) -> Example:
        example: Example = {"text": self.text_value(row, "text"), "where": row.where}
        if self.pair:
            example["text_pair"] = self.text_value(row, "text_pair")
        return example

    def input_example(self, text: str, text_pair: str | None = None) -> Example:
        example: Example = {"text": require_text(text, "text")}
        if self.pair:
            if text_pair is None:
                raise InputError(f"a {self.name} task compares two texts: give text and text_pair")
            example["text_pair"] = require_text(text_pair, "text_pair")
        elif text_pair is not None:
            raise InputError(f"a {self.name} task takes one text, but a text pair was given")
        return example

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        examples: Sequence[Example],
        max_length: int,
        doc_stride: int,
        with_targets: bool,
    ) -> Encoded:
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if self.pair else None
        tokens = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        features: dict[str, list[Any]] = dict(tokens)
        if with_targets:
            features["labels"] = [self.target(e) for e in examples]
        truncated = truncated_rows(tokenizer, texts, pairs, tokens["input_ids"], max_length)
        return Encoded(features=features, example_index=list(range(len(examples))), truncated=truncated)

    def target(self, example: Example) -> Any:
        return example["label"]


def label_id(task: TaskKind, row: Row, raw: Any, ids_readable: bool) -> int:
    """Map a raw label (a name, a label_map key, or, where `ids_readable`, a 0-based id into `labels`) to its id."""
    assert task.labels is not None
    name = task.label_map.get(str(raw), str(raw))
    if name in task.labels:
        return task.labels.index(name)
    # A JSON true/false is a bool, which Python counts as 1/0: taken as an id it would silently pick a label.
    is_id = (isinstance(raw, int) and not isinstance(raw, bool)) or (isinstance(raw, str) and integer_text(raw))
    if is_id and ids_readable:
        index = int(raw)
        if 0 <= index < len(task.labels):
            return index
        if index < 0:
            raise DataError(row.where, f"label {raw!r} in field '{task.column('label')}' marks a row without a label "
                            "(datasets writes -1 for them, as in GLUE's test splits)",
                            "read a labelled split (name it with split:), or leave this split out")
        raise DataError(row.where, f"label id {raw!r} in field '{task.column('label')}' is out of range: numbers "
                        f"are read as 0-based ids into data.labels ({', '.join(task.labels)})",
                        "map ids counted from 1 (or any other numbering) to names with data.label_map")
    raise DataError(
        row.where,
        f"unknown label {raw!r} in field '{task.column('label')}'; valid labels: {', '.join(task.labels)}",
        "add it to data.labels, or map it with data.label_map",
    )


def label_ids_readable(labels: Sequence[str] | None, label_map: dict[str, str]) -> bool:
    """Whether a number in a label field may be read as a 0-based id into `labels`: only where the project
    names the labels itself (the order of labels learned from data is no one's ids), none of them is a
    number (then '1' would be a name and an id at once), and no label_map says how the data names them."""
    return labels is not None and not label_map and not any(integer_text(name) for name in labels)
