"""`pair_classification`: two texts -> one label (paraphrase, entailment, duplicate questions)."""

from __future__ import annotations

from mtlora.tasks.classification import ClassificationTask


class PairClassificationTask(ClassificationTask):
    name = "pair_classification"
    description = "two texts -> one label"
    roles = ("text", "text_pair", "label")
    input_shape = "pair"
    pair = True
