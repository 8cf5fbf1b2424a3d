"""Predicting with one stored adapter: `TaskPredictor(...).predict("text")`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn
from transformers import PreTrainedTokenizerBase

from mtlora.backbone import default_device, use_bf16
from mtlora.config import Precision
from mtlora.engine.inputs import Input, read_input, require_texts, wrong_shape
from mtlora.errors import InputError
from mtlora.modeling import adapter_tokenizer, load_adapter_model
from mtlora.registry import Registry
from mtlora.routing.base import ANSWERED_BY
from mtlora.tasks import Example, Prediction, TaskKind

# The engine's forms of an input, and a [text, text_pair] list (a JSON pair) too: one task, nothing to route.
PredictorInput = Input | list[str]


class TaskPredictor:
    """One adapter from a registry, loaded on its base model, ready to answer inputs.

    Example:
        >>> predictor = TaskPredictor(Registry("adapters"), "sentiment", backbone="embedded")
        >>> predictor.predict("a wonderful film")["label"]
        'positive'
    """

    def __init__(self, registry: Registry, name: str, backbone: str, precision: Precision = "auto"):
        self.model, self.kind, self.manifest = load_adapter_model(registry, name, backbone)
        self.tokenizer = adapter_tokenizer(registry, name, backbone)
        self.device = default_device()
        self.model.to(self.device)
        self.bf16 = use_bf16(precision, self.device, backbone)

    def predict(self, text: str, text_pair: str | None = None) -> Prediction:
        """One input (a text, or a text pair / question and context) -> one prediction."""
        return self.predict_batch([(text, text_pair) if text_pair is not None else text])[0]

    def predict_batch(self, inputs: Sequence[PredictorInput], batch_size: int = 64) -> list[Prediction]:
        """Answer each input (a text, a `(text, text_pair)` tuple or list, a `{text, text_pair}` or a
        `{question, context}` dict) in order."""
        examples = [self._example(item) for item in inputs]
        predictions = predict_examples(self.model, self.kind, self.tokenizer, examples, self.manifest.max_length,
                                       self.manifest.doc_stride, batch_size, self.bf16)
        return [{"task": self.manifest.name, **p} for p in predictions]

    def _example(self, item: PredictorInput) -> Example:
        """An input as the engine reads it for this task; a `<task>` prefix is the text's own, as nothing is
        routed, and a `{text, task}` dict may name only this task."""
        pair = tuple(item) if isinstance(item, list) and len(item) == 2 else item
        request = read_input(pair)
        if request.task is not None and request.task != self.manifest.name:
            raise InputError(f"the input names task '{request.task}', but this predictor answers "
                             f"'{self.manifest.name}' only")
        if self.kind.input_shape not in ANSWERED_BY[request.shape]:
            raise wrong_shape(self.manifest.name, self.kind, request.shape)
        # Two texts are a question and its context to a QA task, and are named so in its messages.
        request = require_texts(replace(request, shape=self.kind.input_shape if request.text_pair else "text"))
        return self.kind.input_example(request.text, request.text_pair)


def predict_examples(
    model: nn.Module,
    kind: TaskKind,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
    doc_stride: int,
    batch_size: int,
    bf16: bool = False,
) -> list[Prediction]:
    """Encode `examples`, run them through `model` the way their kind answers, decode one prediction each."""
    if not examples:
        return []
    encoded = kind.encode(tokenizer, examples, max_length, doc_stride, with_targets=False)
    outputs = kind.run(model, tokenizer, encoded, batch_size, bf16)
    return kind.decode(outputs, encoded, examples)
