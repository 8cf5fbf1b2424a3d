"""Running encoded rows through a model in batches: length-sorted, padded per batch, without autograd."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
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
) -> list[dict[str, np.ndarray]]:
    """Run every feature through the model; returns per-feature outputs without padding."""
    lengths = [len(ids) for ids in encoded.features["input_ids"]]
    results: list[dict[str, np.ndarray]] = [{} for _ in lengths]
    for index, batch, _ in padded_batches(model, tokenizer, encoded.features, batch_size, bf16):
        store_outputs(kind, kind.outputs_of(model(**batch)), index, lengths, results)
    return results


def padded_batches(model: nn.Module, tokenizer: PreTrainedTokenizerBase, features: dict[str, list],
                   batch_size: int, bf16: bool,
                   **row_kwargs: list[Any]) -> Iterator[tuple[list[int], dict[str, torch.Tensor], dict[str, list]]]:
    """The feature rows in length-sorted batches: each batch's row indices, its rows padded into model
    inputs on the model's device, and its rows' values of `row_kwargs` (per-row arguments such as PEFT's
    `adapter_names`). Inference mode and autocast are thread-wide, so they hold while the caller runs
    each batch."""
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in features["input_ids"]]
    with torch.inference_mode(), autocast(device, bf16):
        for index in length_sorted_batches(lengths, batch_size, pass_cost_tokens(device)):
            batch = pad_rows(tokenizer, [feature_row(features, i) for i in index], device)
            yield index, batch, {name: [values[i] for i in index] for name, values in row_kwargs.items()}


# What one more encoder pass costs, in padded tokens: its fixed work (every layer's Python, kernel
# launches, casts) against the per-token work. Measured on MiniLM on this project's CPU: about 65 tokens
# in fp32 and 350 in bf16. Cutting on this cost instead of at every halving of length ran the engine's
# stream 10-16% faster in fp32 and 11-18% in bf16. 256 scored 4% higher than 128 in bf16 in one run and
# the same in the next, and 4-6% lower in fp32, so one value serves both.
PASS_COST_TOKENS = 128
# On an H100 a pass of MiniLM costs the host 5-10 ms of Python and launches while the device spends about
# a microsecond per padded token: padding is all but free there, so rows share a pass unless it would pad
# more than this (each call of bench/infer_speed.py's stream then takes the fewest passes `batch_size`
# allows). In A/Bs on an H100 (bench/batch_cuts.py) the bare encoder ran 56-76% faster for it, the engine
# 24-26% with per-adapter passes and 84-90% with shared ones. Measured on MiniLM only: a larger backbone
# spends more per token and might want less.
PASS_COST_TOKENS_CUDA = 10_000


def pass_cost_tokens(device: torch.device) -> int:
    """What one more encoder pass costs on `device`, in padded tokens (for `length_sorted_batches`)."""
    return PASS_COST_TOKENS_CUDA if device.type == "cuda" else PASS_COST_TOKENS


def length_sorted_batches(lengths: Sequence[int], batch_size: int,
                          pass_cost: int = PASS_COST_TOKENS) -> list[list[int]]:
    """Row indices in batches of similar length, at most `batch_size` each, longest first.

    Where the batches end is chosen to pad least plus pay least for passes: each batch costs its rows
    times its longest row, plus `pass_cost` (see `pass_cost_tokens`). So a short text does not pad to a
    long QA window, and a handful of rows of mixed lengths is not split into passes that each cost more
    to start than the padding they save. Exact, by dynamic programming over the sorted rows
    (O(rows * batch_size)).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    longest = [lengths[row] for row in order]
    cost = [0.0] + [float("inf")] * len(order)  # cost[j]: the cheapest batching of the first j rows
    start = [0] * (len(order) + 1)  # where the last batch of that batching starts
    for end in range(1, len(order) + 1):
        for first in range(max(0, end - batch_size), end):
            candidate = cost[first] + (end - first) * longest[first] + pass_cost
            if candidate <= cost[end]:  # on a tie the later start: full batches first, the remainder last
                cost[end], start[end] = candidate, first
    batches, end = [], len(order)
    while end > 0:
        batches.append(order[start[end]:end])
        end = start[end]
    return batches[::-1]


def feature_row(features: dict[str, list], row: int) -> dict[str, list]:
    return {name: values[row] for name, values in features.items()}


def pad_rows(tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, list]],
             device: torch.device) -> dict[str, torch.Tensor]:
    """Feature rows padded into one batch of model inputs on `device` (targets and extras left out)."""
    names = [n for n in tokenizer.model_input_names if n in rows[0]]
    batch = tokenizer.pad([{n: row[n] for n in names} for row in rows], return_tensors="pt")
    return {name: to_device(tensor, device) for name, tensor in batch.items()}


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host tensor made for one pass, on `device`. Not blocking on CUDA, where a blocking copy first
    waits for the device to finish all it was given, so the host could not queue this pass while the last
    one runs (elsewhere blocking: on MPS a non-blocking copy can free its temporary source too early)."""
    return tensor.to(device, dtype, non_blocking=torch.device(device).type == "cuda")


def store_outputs(kind: TaskKind, outputs: dict[str, torch.Tensor], rows: Sequence[int], lengths: Sequence[int],
                  results: list[dict[str, np.ndarray]]) -> None:
    """Copy a batch's outputs into per-row results; token-level outputs (QA) lose their padding."""
    for name, tensor in outputs.items():
        values = tensor.float().cpu().numpy()
        for position, row in enumerate(rows):
            results[row][name] = values[position][:lengths[row]] if kind.token_level else values[position]


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
