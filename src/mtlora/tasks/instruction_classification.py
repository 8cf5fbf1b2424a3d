"""`instruction_classification`: a seq2seq model answers an instruction with a label word.

The answer is restricted to the label set: every label is scored by the model's log-likelihood of
writing it, and the likeliest label wins, so the model cannot answer outside the set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from mtlora.batching import padded_batches
from mtlora.errors import DataError
from mtlora.tasks.base import Encoded, Example
from mtlora.tasks.classification import LabelScores, check_labels, parse_labelled
from mtlora.tasks.seq2seq import IGNORED_LABEL, Seq2SeqTask, target_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mtlora.config import TaskConfig
    from mtlora.data.readers import Row


class InstructionClassificationTask(LabelScores, Seq2SeqTask):
    name = "instruction_classification"
    description = "instruction -> one label word (seq2seq, restricted to the labels)"
    roles = ("text", "label")
    primary_metric = "accuracy"
    categorical = True
    unused_settings: ClassVar[dict[str, str]] = {
        **Seq2SeqTask.unused_settings, "decoding": "it scores each label instead of writing text"}
    score_output = "scores"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._label_targets: dict[PreTrainedTokenizerBase, list[list[int]]] = {}

    @classmethod
    def check_config(cls, config: TaskConfig) -> None:
        super().check_config(config)
        check_labels(config)

    def parse(self, rows: Sequence[Row]) -> list[Example]:
        return parse_labelled(self, rows, lambda row: {"text": self.text_value(row, "text"), "where": row.where})

    def target(self, example: Example) -> str:
        assert self.labels is not None
        return self.labels[example["label"]]

    def encode(self, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int,
               doc_stride: int, with_targets: bool) -> Encoded:
        self.label_targets(tokenizer)  # before training on targets that cannot tell the labels apart
        return super().encode(tokenizer, examples, max_length, doc_stride, with_targets)

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
        self._label_targets[tokenizer] = self._checked_label_targets(tokenizer, f"{where}.data.labels")

    def label_targets(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        """Each label's target ids, as it is trained and scored: whole, and unlike every other label's.
        Checked once per tokenizer, not on every batch that scores the labels."""
        if tokenizer not in self._label_targets:
            self._label_targets[tokenizer] = self._checked_label_targets(tokenizer)
        return self._label_targets[tokenizer]

    def _checked_label_targets(self, tokenizer: PreTrainedTokenizerBase, where: str = "data.labels") -> list[list[int]]:
        assert self.labels is not None
        limit = self.settings.max_target_length
        whole = tokenizer(list(self.labels))["input_ids"]
        if (longest := max(len(ids) for ids in whole)) > limit:
            label = self.labels[[len(ids) for ids in whole].index(longest)]
            raise DataError(where, f"label {label!r} takes {longest} target tokens, more than "
                            f"seq2seq.max_target_length {limit}, which would cut it",
                            f"set seq2seq.max_target_length to {longest} or more")
        seen: dict[tuple[int, ...], str] = {}
        for label, ids in zip(self.labels, whole, strict=True):
            if (other := seen.setdefault(tuple(ids), label)) != label:
                raise DataError(where, f"labels {other!r} and {label!r} are the same tokens to this "
                                "tokenizer, so no score can tell them apart", "make them differ in more than case")
        return target_ids(tokenizer, self.labels, limit)[0]  # none cut: checked above

    def run(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, encoded: Encoded, batch_size: int,
            bf16: bool, **model_kwargs: Any) -> list[dict[str, Any]]:
        """Each feature's log-likelihood of every label; the encoder runs once per batch, the decoder per label."""
        candidates = self.label_targets(tokenizer)
        results: list[dict[str, Any]] = [{} for _ in range(len(encoded))]
        for index, batch, rows_kwargs in padded_batches(model, tokenizer, encoded.features, batch_size, bf16,
                                                        **model_kwargs):
            scores = torch.empty(len(index), len(candidates))
            encoder_outputs = None
            for j, ids in enumerate(candidates):
                labels = torch.tensor([ids] * len(index), device=batch["input_ids"].device)
                output = model(**batch, labels=labels, encoder_outputs=encoder_outputs, **rows_kwargs)
                encoder_outputs = BaseModelOutput(last_hidden_state=output.encoder_last_hidden_state)
                scores[:, j] = _sequence_log_likelihood(output.logits, labels).cpu()
            for position, row in enumerate(index):
                results[row] = {"scores": scores[position].numpy()}
        return results


def _sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target positions of log p(token); positions holding IGNORED_LABEL count for nothing."""
    log_probs = logits.float().log_softmax(-1)
    keep = labels != IGNORED_LABEL
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(-1)
