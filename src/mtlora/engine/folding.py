"""The engine's own LoRA forward for a pass: folded into the weights when every row uses one adapter
(`folded_lora`), stacked when rows use several (`mixed_lora`). Neither changes a stored weight: the
stacks (`stack_lora`) hold the adapters' LoRA matrices, which their weights then view, as they were.

Unmerged LoRA runs three GEMMs per layer (W·x, A·x, B·(A·x)); on a CPU the two thin ones cost far
more than their FLOPs (+6-15% fp32, +30-90% bf16 on MiniLM's layers). When every row of a batch uses the
same adapter, each layer can instead run one GEMM with W + scaling·B·A, computed in one fused `addmm`.
W is never modified, so nothing drifts the way repeated merge/unmerge would. Below about
`FOLD_MIN_TOKENS` tokens the thin GEMMs cost less than the fold, so small passes run unmerged.

Each layer folds just before its own product, into one scratch buffer that every layer reuses, so
folding holds no copy of the adapted weights: at rest the engine holds the backbone and the adapters,
nothing else. (Folding every layer once per call and keeping the copies for the call's later passes
held a copy of every adapted weight, half of MiniLM in fp32. It was faster in bf16, where a fold costs
more next to the cheaper GEMMs: by 2.5% in alternating A/Bs on this project's CPU and up to 10% in
bench runs; in fp32 within this machine's drift.) On CUDA, where a pass waits on launches rather than on
a fold's memory traffic, the engine gives each block a store of its own instead (`folded`): each layer
folds once for all of the block's passes, and the folded copies go with the block. A `FoldCache` keeps
the folded weights of the most recently used adapters between calls, for callers that can spend that
memory (one copy of the adapted weights per adapter) to fold nothing at all once warm.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from peft import LoraConfig
from peft.tuners.lora import layer as lora
from torch import nn
from torch.nn import functional

from mtlora.batching import to_device
from mtlora.errors import AdapterNotServableError

# Where folding MiniLM's adapted weights starts to cost less than running them unmerged: about 200-250
# tokens a pass on this project's CPU in fp32 and bf16 alike; in whole-engine A/Bs 128, 256 and 512 tied.
FOLD_MIN_TOKENS = 256


class SharedAcrossRows(Exception):
    """An adapted layer met an input that every row of the batch shares, so no row can have a LoRA of its own:
    DeBERTa projects its relative-position embeddings, one tensor for the whole batch, with its adapted
    query and key layers. Such a backbone can only run one adapter per pass."""


def lora_layers(model: nn.Module) -> list[lora.Linear]:
    """The LoRA linear layers of `model`. Walking the module tree costs ~2 ms, so callers keep the list."""
    return [m for m in model.modules() if type(m) is lora.Linear]


def check_plain_lora(model: nn.Module, adapter: str) -> None:
    """Refuse an adapter the engine cannot serve beside others: one whose layers use a LoRA variant
    (DoRA...), whose maths is not W + scaling·B·A, so it can be neither folded nor stacked; and one with
    LoRA on a layer other than a linear one (an embedding), which PEFT would apply to every row of a pass."""
    adapted = [(name, layer) for name, layer in model.named_modules()
               if isinstance(layer, lora.LoraLayer) and adapter in layer.r]
    _refuse_unservable(adapter, {type(layer.lora_variant[adapter]).__name__ for _, layer in adapted
                                 if adapter in layer.lora_variant},
                       [name for name, layer in adapted if type(layer) is not lora.Linear])


def check_plain_lora_files(adapter: str, config: LoraConfig, state: dict[str, torch.Tensor]) -> None:
    """What `check_plain_lora` refuses, as far as an adapter's config and weights show it before it is
    put into a model: so that a reload refused for it leaves the loaded copy serving."""
    embeddings = sorted({key.split(".lora_embedding_")[0] for key in state if ".lora_embedding_" in key})
    _refuse_unservable(adapter, {"DoRA"} if config.use_dora else set(), embeddings)


def _refuse_unservable(adapter: str, variants: set[str], other_layers: list[str]) -> None:
    if variants:
        raise AdapterNotServableError(
            f"adapter '{adapter}' uses a LoRA variant ({', '.join(sorted(variants))}) that the engine cannot serve "
            "alongside other adapters; export it alone with `mtlora merge`, or retrain it as plain LoRA"
        )
    if other_layers:
        raise AdapterNotServableError(
            f"adapter '{adapter}' puts LoRA on layers other than linear ones ({', '.join(other_layers[:3])}), which "
            "the engine cannot keep to its own rows; export it alone with `mtlora merge`, or retrain it with "
            "lora.target_modules naming linear layers only"
        )


@contextlib.contextmanager
def folded_lora(layers: Sequence[lora.Linear], adapter: str, folded: dict[int, torch.Tensor] | None = None,
                min_tokens: int = 0) -> Iterator[None]:
    """Within the block, `layers` compute with `adapter`'s LoRA (an adapter a layer does not have, such
    as PEFT's "__base__", leaves that layer's base weights alone).

    Each pass, each layer folds its LoRA into a scratch weight just before its product; a pass of
    fewer than `min_tokens` tokens runs unmerged instead. The block holds one scratch buffer, the size
    of the largest adapted weight, and lets it go at its end. `folded` (a fold cache's store, by
    position in `layers`) keeps each layer's folded weight instead, made on first use.
    """
    scratch: dict[torch.dtype, torch.Tensor] = {}
    for position, layer in enumerate(layers):
        # An instance attribute shadows the class's forward.
        layer.forward = _FoldedForward(  # type: ignore[method-assign]
            layer, adapter, folded, position, min_tokens, scratch)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@dataclass(frozen=True)
class StackedLora:
    """One layer's adapters with their LoRA matrices in one buffer each: the A matrices one above the
    other, the B matrices side by side, in the dtype of the weight they meet. The adapters' own weights
    are views of these buffers (`stack_lora`), so a stack is no second copy of them."""

    names: tuple[str, ...]
    lora_a: torch.Tensor  # (total rank, in features)
    lora_b: torch.Tensor  # (out features, total rank)
    blocks: tuple[tuple[int, int], ...]  # each adapter's rows of lora_a, columns of lora_b
    scalings: tuple[float, ...]
    views: tuple[tuple[int, int], ...]  # where each adapter's A and B weights start, while they view the stack

    def viewed_by(self, layer: lora.Linear) -> bool:
        """Whether the layer's adapters are this stack's, each weight still a view of it (nothing gave it
        storage of its own since)."""
        # Plain dict lookups, not ModuleDict's and Module's attribute machinery: this runs for every weight
        # on every call, and on a GPU the host's time is what a call costs (about 1 ms for ten adapters).
        a, b = layer.lora_A._modules, layer.lora_B._modules
        return tuple(a) == self.names and all(
            (a[name]._parameters["weight"].data_ptr(),  # type: ignore[union-attr]  # LoRA's Linears have weights
             b[name]._parameters["weight"].data_ptr()) == view  # type: ignore[union-attr]
            for name, view in zip(self.names, self.views, strict=True))


Stacks = dict[lora.Linear, StackedLora]  # by layer


def stack_lora(layers: Sequence[lora.Linear]) -> Stacks:
    """Each layer's adapters moved into one stack (`StackedLora`), which their weights then view: a shared
    pass reads every adapter's LoRA in two thin GEMMs a layer without stacking anything. Stacking MiniLM's
    layers costs more than a short pass's thin GEMMs (about 2 ms; on CUDA, where the host's launches are
    the cost, some 370 kernels for four adapters), so it happens when adapters come or go; and holding
    the stacks costs no memory."""
    # Never inference tensors, even under a caller's inference mode: the weights come to view the stacks,
    # and PEFT sets requires_grad on them when an adapter goes.
    with torch.inference_mode(False), torch.no_grad():
        return {layer: _stacked(layer) for layer in layers if _stackable(layer)}


def current_stacks(layers: Sequence[lora.Linear], stacks: Stacks) -> Stacks:
    """`stacks` when every layer's adapters still view them; else the layers stacked again. A few hundred
    pointer comparisons: cheap enough to check once per call."""
    stackable = [layer for layer in layers if _stackable(layer)]
    if len(stackable) == len(stacks) and all(layer in stacks and stacks[layer].viewed_by(layer)
                                             for layer in stackable):
        return stacks
    return stack_lora(layers)


def _stackable(layer: lora.Linear) -> bool:
    # Not GPT-2's Conv1D, which `mixed_lora` leaves to PEFT.
    return bool(layer.lora_A) and isinstance(layer.get_base_layer(), nn.Linear)


def _stacked(layer: lora.Linear) -> StackedLora:
    names = tuple(layer.lora_A)
    # ModuleDict's items and a Module's attributes are untyped to mypy: PEFT's lora_A/lora_B hold nn.Linear
    # layers, on an nn.Linear base (`_stackable`).
    weights_a = [cast(torch.Tensor, layer.lora_A[name].weight) for name in names]
    weights_b = [cast(torch.Tensor, layer.lora_B[name].weight) for name in names]
    dtype = cast(nn.Linear, layer.get_base_layer()).weight.dtype
    lora_a = torch.cat(weights_a).to(dtype)
    lora_b = torch.cat(weights_b, dim=1).to(dtype)
    blocks, views, start = [], [], 0
    for name in names:
        stop = start + cast(torch.Tensor, layer.lora_A[name].weight).shape[0]
        layer.lora_A[name].weight.data = lora_a[start:stop]
        layer.lora_B[name].weight.data = lora_b[:, start:stop]
        blocks.append((start, stop))
        views.append((layer.lora_A[name].weight.data_ptr(),  # type: ignore[operator]
                      layer.lora_B[name].weight.data_ptr()))  # type: ignore[operator]
        start = stop
    return StackedLora(names, lora_a, lora_b, tuple(blocks), tuple(float(layer.scaling[name]) for name in names),
                       tuple(views))


@contextlib.contextmanager
def mixed_lora(layers: Sequence[lora.Linear], adapters: Sequence[str],
               stacks: Stacks) -> Iterator[None]:
    """Within the block, one pass computes row i of the batch with adapter `adapters[i]`'s LoRA (an
    adapter a layer does not have, such as PEFT's "__base__", leaves that row's base weights alone).

    Each layer runs its base product on every row, then the LoRA of every adapter present at once from
    the layer's stack (`stacks`, current as `current_stacks` makes them): the A matrices in one thin
    GEMM, each row's product masked to its own adapter's rank block and scaled by its scaling, then the
    B matrices in a second one, added in place. Two thin GEMMs a layer whatever the number of adapters,
    where PEFT's `adapter_names` gathers and scatters each adapter's rows in every layer; and no base
    weight is folded or copied.
    """
    names = set(adapters)
    masks: dict[tuple, torch.Tensor] = {}  # by the adapters' blocks a layer reads: layers mostly share one
    for layer in layers:
        present = [position for position, name in enumerate(layer.lora_A) if name in names]
        if present and not isinstance(layer.get_base_layer(), nn.Linear):
            # GPT-2's Conv1D holds its weight transposed: PEFT computes it, row by row.
            layer.forward = functools.partial(  # type: ignore[method-assign]
                lora.Linear.forward, layer, adapter_names=list(adapters))
            continue
        if not present:
            # An instance attribute shadows the class's forward.
            layer.forward = layer.get_base_layer().__call__  # type: ignore[method-assign]
            continue
        stack = stacks[layer]
        read, lora_a, lora_b = _read_blocks(stack, present)
        key = tuple((stack.names[p], stack.blocks[p], stack.scalings[p]) for p in read)
        if key not in masks:
            masks[key] = _row_mask(stack, read, adapters)
        # A base other than nn.Linear (Conv1D) went to PEFT above.
        layer.forward = RowMaskedForward(  # type: ignore[method-assign]
            cast(nn.Linear, layer.get_base_layer()), lora_a, lora_b, masks[key])
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _read_blocks(stack: StackedLora, present: list[int]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Which adapters' blocks a pass with the adapters at `present` reads, and those blocks of A and B.

    The stack's columns from the pass's first adapter to its last are a view, free to take, but their
    thin GEMMs also compute the adapters between that the pass does not use (masked to 0): on a CPU,
    when those would more than double the work, the pass's own blocks are gathered instead (a copy of
    each). Not on CUDA, where a pass costs its launches more than its arithmetic."""
    first, last = present[0], present[-1]
    span = stack.blocks[last][1] - stack.blocks[first][0]
    own = sum(stack.blocks[p][1] - stack.blocks[p][0] for p in present)
    if span <= 2 * own or stack.lora_a.device.type == "cuda":
        start, stop = stack.blocks[first][0], stack.blocks[last][1]
        return list(range(first, last + 1)), stack.lora_a[start:stop], stack.lora_b[:, start:stop]
    return (present, torch.cat([stack.lora_a[slice(*stack.blocks[p])] for p in present]),
            torch.cat([stack.lora_b[:, slice(*stack.blocks[p])] for p in present], dim=1))


def _row_mask(stack: StackedLora, read: list[int], adapters: Sequence[str]) -> torch.Tensor:
    """(rows, the columns of the adapters' blocks at `read`): each row's own adapter's block holds that
    adapter's scaling, every other column 0."""
    ranks = torch.tensor([stack.blocks[p][1] - stack.blocks[p][0] for p in read])
    column_owner = torch.tensor(read).repeat_interleave(ranks)
    column_scaling = torch.tensor([stack.scalings[p] for p in read]).repeat_interleave(ranks)
    row_owner = torch.tensor([stack.names.index(name) if name in stack.names else -1 for name in adapters])
    mask = (row_owner[:, None] == column_owner[None, :]) * column_scaling[None, :]
    return to_device(mask, stack.lora_a.device, stack.lora_a.dtype)


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
    def __init__(self, layer: lora.Linear, adapter: str, folded: dict[int, torch.Tensor] | None, position: int,
                 min_tokens: int, scratch: dict[torch.dtype, torch.Tensor]):
        self.layer, self.adapter, self.folded, self.position = layer, adapter, folded, position
        self.min_tokens, self.scratch = min_tokens, scratch

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        layer, adapter = self.layer, self.adapter
        base = layer.get_base_layer()
        if adapter not in layer.lora_A:
            return base(x)
        if not isinstance(base, nn.Linear):  # GPT-2's Conv1D holds its weight transposed: PEFT computes it
            return lora.Linear.forward(layer, x, *args, adapter_names=[adapter] * len(x), **kwargs)
        if self.folded is not None:
            if self.position not in self.folded:
                self.folded[self.position] = self._fold(base.weight)
            return functional.linear(x, self.folded[self.position], base.bias)
        if x.numel() < self.min_tokens * x.shape[-1]:
            lora_a, lora_b = self._lora_weights(base.weight.dtype)
            result = functional.linear(x, base.weight, base.bias)
            return result.add_(functional.linear(functional.linear(x, lora_a), lora_b), alpha=layer.scaling[adapter])
        return functional.linear(x, self._fold(base.weight, out=self._scratch_like(base.weight)), base.bias)

    def _scratch_like(self, weight: torch.Tensor) -> torch.Tensor:
        """Room for a fold of `weight`, in the block's one scratch buffer (grown to the largest weight)."""
        flat = self.scratch.get(weight.dtype)
        if flat is None or flat.numel() < weight.numel():
            flat = self.scratch[weight.dtype] = torch.empty(weight.numel(), dtype=weight.dtype, device=weight.device)
        return flat[: weight.numel()].view(weight.shape)

    def _lora_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # In the dtype of the weight they meet: bf16 when the engine holds its linear weights in bf16.
        return (self.layer.lora_A[self.adapter].weight.to(dtype),  # type: ignore[return-value]  # LoRA's Linears
                self.layer.lora_B[self.adapter].weight.to(dtype))

    def _fold(self, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        lora_a, lora_b = self._lora_weights(weight.dtype)
        return torch.addmm(weight, lora_b, lora_a, alpha=self.layer.scaling[self.adapter], out=out)


class RowMaskedForward:
    """A layer's base product on every row plus the LoRA of the adapters in `lora_a`/`lora_b`, each row's
    rank columns scaled by its row of `mask` (its own adapter's scaling, 0 for the others)."""

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, mask: torch.Tensor):
        self.base, self.lora_a, self.lora_b, self.mask = base, lora_a, lora_b, mask

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.base
        if len(x) != len(self.mask):
            raise SharedAcrossRows(f"an input of shape {tuple(x.shape)} in a pass of {len(self.mask)} rows")
        rows = x.reshape(-1, x.shape[-1])  # (batch * tokens, features); a pooler's input has no token axis
        result = functional.linear(rows, base.weight, base.bias)
        projected = functional.linear(rows, self.lora_a).view(len(x), -1, len(self.lora_a))
        projected.mul_(self.mask[:, None, :])
        result.addmm_(projected.view(len(rows), -1), self.lora_b.t())
        return result.view(*x.shape[:-1], -1)
