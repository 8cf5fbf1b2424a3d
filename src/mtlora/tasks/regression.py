"""`regression`: two texts -> a real-valued score, e.g. STS-B similarity from 0 to 5.

The head learns standardised scores (the training scores' mean and spread, kept in the manifest,
turn them back). Raw 0-5 targets far from the fresh head's zero output make the first gradients large
enough to saturate the pooler's tanh at LoRA learning rates, after which every input gets one score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from mtlora.errors import AdapterNotServableError, DataError
from mtlora.metrics import regression_metrics, undefined_correlation
from mtlora.tasks.base import Encoded, Example, Prediction
from mtlora.tasks.sequence import SequenceTask

if TYPE_CHECKING:
    from mtlora.data.readers import Row


class RegressionTask(SequenceTask):
    name = "regression"
    description = "two texts -> a score"
    roles = ("text", "text_pair", "label")
    input_shape = "pair"
    primary_metric = "pearson"
    pair = True

    def parse(self, rows: Sequence[Row]) -> list[Example]:
        examples = []
        for row in rows:
            example = self.parse_texts(row)
            raw = self.value(row, "label")
            try:
                if isinstance(raw, bool):  # float(True) is 1.0: a JSON true is no score
                    raise TypeError
                example["label"] = float(raw)
            except (TypeError, ValueError):
                raise DataError(row.where, f"score {raw!r} in field '{self.column('label')}' is not a number") from None
            if not np.isfinite(example["label"]):
                raise DataError(row.where, f"score {raw!r} in field '{self.column('label')}' is not finite")
            examples.append(example)
        return examples

    def fit(self, train: Sequence[Example]) -> None:
        if "target_mean" not in self.options and train:  # kept from training in the manifest
            scores = np.array([e["label"] for e in train])
            self.options["target_mean"] = float(scores.mean())
            # Scores that never vary have no spread to scale by; asked whether std() is 0 instead, 3.7's mean,
            # off in its last bit, gave 4e-16, and float noise became targets of -1.
            self.options["target_std"] = float(scores.std()) if np.ptp(scores) > 0 else 1.0

    @property
    def _scale(self) -> tuple[float, float]:
        return self.options.get("target_mean", 0.0), self.options.get("target_std", 1.0)

    def target(self, example: Example) -> float:
        mean, std = self._scale
        return (example["label"] - mean) / std

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def prepare_export(self, model: nn.Module) -> None:
        # The head learned standardised scores: its output layer, scaled, gives a plain transformers user
        # scores on the training scale, as the engine's decode does.
        base = getattr(model, cast(str, model.base_model_prefix), None)  # a transformers model's class attribute
        in_base = {id(m) for m in base.modules()} if isinstance(base, nn.Module) else set()
        outputs = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1
                   and id(m) not in in_base]
        mean, std = self._scale
        layer = outputs[-1] if outputs else None
        # GPT-2's and Llama's score layers have no bias, and their class would drop one added on load.
        if layer is None or (layer.bias is None and mean != 0.0):
            raise AdapterNotServableError(
                f"{type(model).__name__}'s head has no output layer with a bias to carry the training scores' "
                f"mean ({mean:.4g}), so a plain export would answer standardised scores; serve this regression "
                "task through mtlora (its engine, predictor or server) instead")
        with torch.no_grad():
            layer.weight.mul_(std)
            if layer.bias is not None:
                layer.bias.mul_(std).add_(mean)

    def decode(self, outputs: list[dict[str, np.ndarray]], encoded: Encoded,
               examples: Sequence[Example]) -> list[Prediction]:
        mean, std = self._scale
        return [{"score": float(o["logits"].reshape(-1)[0]) * std + mean, "truncated": encoded.truncated[i]}
                for i, o in enumerate(outputs)]

    def metrics(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        return regression_metrics([e["label"] for e in examples], [p["score"] for p in predictions])

    def caveats(self, predictions: Sequence[Prediction], examples: Sequence[Example]) -> list[str]:
        why = undefined_correlation([e["label"] for e in examples], [p["score"] for p in predictions])
        return [] if why is None else [f"pearson and spearman are undefined ({why}); reported as 0"]

    def expected_text(self, example: Example) -> str:
        return f"{example['label']:.2f}"

    def answer_text(self, prediction: Prediction) -> str:
        return f"{prediction['score']:.2f}"
