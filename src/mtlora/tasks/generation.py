"""`generation`: text -> free text (summarization, question generation), scored with ROUGE.

Besides ROUGE-1/2/L the metrics give the share of outputs that are empty or only copy a stretch
of the input, the two ways a seq2seq model that has not learned the task usually fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mtlora.metrics import ROUGE_METRICS, degenerate_shares, rouge
from mtlora.tasks.base import Encoded, Example, Prediction
from mtlora.tasks.seq2seq import Seq2SeqTask

if TYPE_CHECKING:
    from mtlora.data.readers import Row


class GenerationTask(Seq2SeqTask):
    name = "generation"
    description = "text -> text (seq2seq: summaries, questions)"
    roles = ("text", "target")
    primary_metric = "rougeL"
    percent_metrics = ROUGE_METRICS

    def parse(self, rows: Sequence[Row]) -> list[Example]:
        return [{"text": self.text_value(row, "text"), "target": self.text_value(row, "target"), "where": row.where}
                for row in rows]

    def target(self, example: Example) -> str:
        return example["target"]

    def decode(self, outputs: list[dict[str, Any]], encoded: Encoded,
               examples: Sequence[Example]) -> list[Prediction]:
        return [{"text": o["text"], "generated_tokens": o["tokens"], "truncated": encoded.truncated[i]}
                for i, o in enumerate(outputs)]

    def metrics(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        texts = [p["text"] for p in predictions]
        return {**rouge(texts, [self.target(e) for e in examples]),
                **degenerate_shares(texts, [e["text"] for e in examples])}
