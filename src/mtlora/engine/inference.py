"""Batched inference for one task model: length-sorted batches, dynamic padding, no autograd."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mtlora.tasks import Encoded, Example, Prediction, TaskKind


def predict_examples(
    model: nn.Module,
    kind: TaskKind,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int,
    doc_stride: int,
    batch_size: int,
    bf16: bool = False,
    progress: bool = False,
) -> list[Prediction]:
    if not examples:
        return []
    encoded = kind.encode(tokenizer, examples, max_length, doc_stride, with_targets=False)
    outputs = forward_features(model, kind, tokenizer, encoded, batch_size, bf16, progress)
    return kind.decode(outputs, encoded, examples)


def forward_features(
    model: nn.Module,
    kind: TaskKind,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Encoded,
    batch_size: int,
    bf16: bool,
    progress: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Run every feature through the model; returns per-feature outputs without padding."""
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in encoded.features["input_ids"]]
    # Sorting by length makes each batch pad to nearly nothing.
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    names = [n for n in encoded.features if n in tokenizer.model_input_names]
    results: list[dict[str, np.ndarray]] = [{} for _ in order]
    batches = range(0, len(order), batch_size)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for start in tqdm(batches, desc="predict", disable=not progress, leave=False):
            index = order[start:start + batch_size]
            batch = tokenizer.pad([{n: encoded.features[n][i] for n in names} for i in index],
                                  return_tensors="pt")
            output = model(**{k: v.to(device) for k, v in batch.items()})
            for name, tensor in kind.outputs_of(output).items():
                values = tensor.float().cpu().numpy()
                for row, i in enumerate(index):
                    # Token-level outputs (QA) are cut back to the feature's own length.
                    results[i][name] = values[row][:lengths[i]] if kind.token_level else values[row]
    return results
