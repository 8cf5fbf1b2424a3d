"""LoRA folded into the weights for one forward pass, without touching the stored weights.

Unmerged LoRA runs three GEMMs per layer (W·x, A·x, B·(A·x)); on a CPU the two thin ones cost far
more than their FLOPs (bench: +6% fp32, +80% bf16 for one adapter). When every row of a batch uses the
same adapter, each layer can instead run one GEMM with W + scaling·B·A, computed in one fused `addmm`.
W is never modified, so nothing drifts the way repeated merge/unmerge would. Below about
`FOLD_MIN_TOKENS` tokens the thin GEMMs cost less than the fold, so small blocks run unmerged.

Folding reads and writes every adapted weight, which costs as much as a short pass (about a fifth of
the engine's time in a loaded server, where each call holds ~8 rows per adapter). So a block folds each
layer once, on its first pass, and keeps that folded copy until it ends: the several length-sorted
batches of one adapter in a call pay for one fold. A `FoldCache` keeps the copies of the most recently
used adapters between blocks too, for callers that can spend the memory (one copy of the adapted
weights per adapter) to fold nothing at all once warm.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from peft.tuners.lora import layer as lora
from torch import nn
from torch.nn import functional

from mtlora.errors import RegistryError

# Where folding a BERT layer's six adapted weights starts to cost less than running them unmerged: 256-512
# tokens on this project's CPU in fp32 and bf16 alike (MiniLM sizes, r=8).
FOLD_MIN_TOKENS = 256


def lora_layers(model: nn.Module) -> list[lora.Linear]:
    """The LoRA linear layers of `model`. Walking the module tree costs ~2 ms, so callers keep the list."""
    return [m for m in model.modules() if type(m) is lora.Linear]


def check_plain_lora(model: nn.Module, adapter: str) -> None:
    """Refuse an adapter whose layers use a LoRA variant (DoRA...): its maths is not W + scaling·B·A, so
    it cannot be folded, and PEFT refuses it in mixed batches."""
    variants = {type(layer.lora_variant[adapter]).__name__ for layer in lora_layers(model)
                if adapter in layer.lora_variant}
    if variants:
        raise RegistryError(
            f"adapter '{adapter}' uses a LoRA variant ({', '.join(sorted(variants))}) that the engine cannot serve "
            "alongside other adapters; export it alone with `mtlora merge`, or retrain it as plain LoRA"
        )


@contextlib.contextmanager
def folded_lora(layers: Sequence[lora.Linear], adapter: str, folded: dict[int, torch.Tensor] | None = None,
                fold: bool = True, buffers: dict[int, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, `layers` compute with `adapter`'s LoRA (an adapter a layer does not have, such
    as PEFT's "__base__", leaves that layer's base weights alone).

    `folded` holds folded weights by position in `layers`: those it has are used as they are. Those it
    lacks are folded on first use and added to it, or with `fold=False` (a block of few tokens) the
    layer runs unmerged.

    `buffers`, when given, holds a tensor per position that folds are written into, kept from block to
    block (the first fold at a position allocates it). Folding into fresh tensors cost 2-3x the fold
    itself (all 36 MiniLM layers: 14 against 5.4 ms in fp32, 7.3 against 4.5 ms in bf16), the allocator
    handing back and faulting in the pages every time; and as a block holds all its folds at once
    anyway, kept buffers add nothing to peak memory.
    """
    folded = {} if folded is None else folded
    for position, layer in enumerate(layers):
        # An instance attribute shadows the class's forward.
        layer.forward = _FoldedForward(layer, adapter, folded, position, fold, buffers)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


class FoldCache:
    """Folded weights of the `adapters` most recently used adapters, kept between fold blocks."""

    def __init__(self, adapters: int):
        self.adapters = adapters
        self._folded: OrderedDict[str, dict[int, torch.Tensor]] = OrderedDict()

    def folded(self, adapter: str) -> dict[int, torch.Tensor]:
        """The store of `adapter`'s folded weights (empty when new), evicting the least recently used."""
        if adapter in self._folded:
            self._folded.move_to_end(adapter)
        else:
            self._folded[adapter] = {}
            while len(self._folded) > self.adapters:
                self._folded.popitem(last=False)
        return self._folded[adapter]

    def clear(self) -> None:
        """Forget every folded weight: adapters or the layers they fold into have changed."""
        self._folded.clear()


class _FoldedForward:
    def __init__(self, layer: lora.Linear, adapter: str, folded: dict[int, torch.Tensor], position: int,
                 fold: bool, buffers: dict[int, torch.Tensor] | None):
        self.layer, self.adapter, self.folded, self.position, self.fold = layer, adapter, folded, position, fold
        self.buffers = buffers

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        layer, adapter = self.layer, self.adapter
        base = layer.get_base_layer()
        if adapter not in layer.lora_A:
            return base(x)
        if not isinstance(base, nn.Linear):  # GPT-2's Conv1D holds its weight transposed: PEFT computes it
            return lora.Linear.forward(layer, x, *args, adapter_names=[adapter] * len(x), **kwargs)
        weight = self.folded.get(self.position)
        if weight is None:
            dtype = base.weight.dtype  # bf16 when the engine holds its linear weights in bf16
            lora_a, lora_b = layer.lora_A[adapter].weight.to(dtype), layer.lora_B[adapter].weight.to(dtype)
            if not self.fold:
                result = functional.linear(x, base.weight, base.bias)
                return result.add_(functional.linear(functional.linear(x, lora_a), lora_b),
                                   alpha=layer.scaling[adapter])
            buffer = self.buffers.get(self.position) if self.buffers is not None else None
            weight = self.folded[self.position] = torch.addmm(base.weight, lora_b, lora_a,
                                                              alpha=layer.scaling[adapter], out=buffer)
            if self.buffers is not None:
                self.buffers[self.position] = weight
        return functional.linear(x, weight, base.bias)
