"""Running encoded rows through a model in batches: length-sorted, padded per batch, without autograd."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    from mtlora.tasks import Encoded, TaskKind


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
    results: list[dict[str, np.ndarray]] = [{} for _ in lengths]
    batches = length_sorted_batches(lengths, batch_size)
    with torch.inference_mode(), autocast(device, bf16):
        for index in tqdm(batches, desc="predict", disable=not progress, leave=False):
            batch = pad_rows(tokenizer, [feature_row(encoded.features, i) for i in index], device)
            store_outputs(kind, kind.outputs_of(model(**batch)), index, lengths, results)
    return results


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length, so each batch pads to nearly nothing.

    Rows are sorted longest first; a batch also ends where the next row is under half its longest
    row, because padding a short text to a long QA window costs more than one more (smaller) batch.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    for row in order:
        if not batches or len(batches[-1]) == batch_size or 2 * lengths[row] < lengths[batches[-1][0]]:
            batches.append([])
        batches[-1].append(row)
    return batches


def feature_row(features: dict[str, list], row: int) -> dict[str, list]:
    return {name: values[row] for name, values in features.items()}


def pad_rows(tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, list]],
             device: torch.device) -> dict[str, torch.Tensor]:
    """Feature rows padded into one batch of model inputs on `device` (targets and extras left out)."""
    names = [n for n in tokenizer.model_input_names if n in rows[0]]
    batch = tokenizer.pad([{n: row[n] for n in names} for row in rows], return_tensors="pt")
    return {name: tensor.to(device) for name, tensor in batch.items()}


def store_outputs(kind: TaskKind, outputs: dict[str, torch.Tensor], rows: Sequence[int], lengths: Sequence[int],
                  results: list[dict[str, np.ndarray]]) -> None:
    """Copy a batch's outputs into per-row results; token-level outputs (QA) lose their padding."""
    for name, tensor in outputs.items():
        values = tensor.float().cpu().numpy()
        for position, row in enumerate(rows):
            results[row][name] = values[position][:lengths[row]] if kind.token_level else values[position]


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
