"""The engine's shared encoder passes replayed as CUDA graphs.

On a GPU a small encoder's pass waits on the host, not the device: MiniLM's eager pass launches some
300 kernels, and a shared pass's LoRA (`folding.mixed_lora`) three more per adapted layer, so the engine
served 0.65x the bare encoder's requests on an H200 (bench/infer_speed.py). A CUDA graph replays a
captured pass's kernels at the cost of one launch.

A graph fixes its shapes and the tensors it reads, so each graph here serves passes of up to
`batch_size` rows padded to one length (a multiple of `LENGTH_STEP` tokens): a few graphs serve every
length. Which adapter each row uses is one of its inputs (an index per row, -1 for none), from which
the graph computes the rows' masks itself: every adapted layer runs every adapter in its stack on every
row, each row's LoRA masked to its own adapter's block (as `mixed_lora` does for the adapters a pass
reads), so one graph serves every mix of adapters. A graph's spare rows keep what the last pass left
there; their outputs are never read. So a replay computes `batch_size` rows and every adapter's LoRA
whatever the pass holds: on a GPU that costs less than the launches it saves.

A capture waits for the device and empties PyTorch's cache of free GPU memory (`torch.cuda.graph`
does): the first pass of each length after adapters come or go pays for one. A graph's first pass with
adapters, and its first without, are also run eagerly, the engine's own way, on the pass's real rows
(`PassGraphs.run`): where a row differs (a backbone whose forward decides something on the host from
the data, which a graph freezes; a mask gone wrong), the engine turns its graphs off and runs eagerly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from peft.tuners.lora import layer as lora
from torch import nn
from transformers import PretrainedConfig, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import ModelOutput

from mtlora.engine.folding import RowMaskedForward, StackedLora, Stacks

LENGTH_STEP = 32  # tokens: a pass is padded up to a multiple, so that a few graphs serve every length

Outputs = dict[str, torch.Tensor]
# Captures a pass (a function of static inputs) and gives back what replays it, with the static outputs
# each replay writes into.
Capture = Callable[[Callable[[], Outputs]], tuple[Callable[[], None], Outputs]]


class GraphMismatch(RuntimeError):
    """A graph's replay differs from the eager pass on the same rows (`eager`: that pass's outputs)."""

    def __init__(self, message: str, eager: ModelOutput):
        super().__init__(message)
        self.eager = eager


def cuda_graph_capture() -> Capture:
    """Captures as CUDA graphs that share one memory pool (they never run at the same time)."""
    pool = torch.cuda.graph_pool_handle()
    return lambda forward: _cuda_capture(forward, pool)


def _cuda_capture(forward: Callable[[], Outputs], pool: Any) -> tuple[Callable[[], None], Outputs]:
    """`forward` captured as a CUDA graph, after warm-up runs on a side stream (PyTorch's recipe)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = forward()
    return graph.replay, outputs


@dataclass
class _Graph:
    inputs: dict[str, torch.Tensor]  # (batch_size, length) each
    adapters: torch.Tensor  # (batch_size,) each row's adapter index, -1 for none
    replay: Callable[[], None]
    outputs: Outputs


class PassGraphs:
    """The graphs of one encoder with one set of stacks: made as passes of new lengths come, until the
    adapters change (the engine then makes a new `PassGraphs`)."""

    def __init__(self, model: nn.Module, config: PretrainedConfig, layers: Sequence[lora.Linear], stacks: Stacks,
                 batch_size: int, padding: dict[str, int], capture: Capture, tolerance: float):
        """`padding`: what each input is padded with (`pad_values`); `tolerance`: how far, relative to
        its norm, each row of a graph's first outputs may be from the eager pass's (in bf16 the padding and
        the row count change the kernels' sums a little)."""
        self.model, self.config, self.stacks, self.batch_size = model, config, stacks, batch_size
        self.padding, self._capture, self.tolerance = padding, capture, tolerance
        self._layers = [layer for layer in layers if layer.lora_A]
        names = sorted({name for stack in stacks.values() for name in stack.names})
        self.index = {name: position for position, name in enumerate(names)}
        # Layers mostly hold the same adapters at the same ranks: one mask serves them all.
        signatures = {layer: (stack.names, stack.blocks, stack.scalings) for layer, stack in stacks.items()}
        distinct: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, signature in signatures.items():
            if signature not in distinct:
                distinct[signature] = _columns(stacks[layer], self.index)
        self._columns = {layer: distinct[signature] for layer, signature in signatures.items()}
        self._graphs: dict[tuple[int, tuple[str, ...]], _Graph] = {}
        self._checked: set[tuple[tuple[int, tuple[str, ...]], bool]] = set()  # (graph, with adapters)
        self.max_length = int(getattr(config, "max_position_embeddings", 0) or 0)
        self._output_type: type[ModelOutput] | None = None

    @staticmethod
    def servable(layers: Sequence[lora.Linear], stacks: Stacks) -> bool:
        """Whether every adapted layer's LoRA is in a stack (not GPT-2's Conv1D, which PEFT computes)."""
        return all(layer in stacks for layer in layers if layer.lora_A)

    def fits(self, inputs: dict[str, torch.Tensor]) -> bool:
        """Whether a graph can run the pass: rows no more than the graphs hold, inputs it knows how to pad,
        and a padded length the model can read."""
        rows, length = inputs["input_ids"].shape
        return rows <= self.batch_size and {"input_ids", "attention_mask"} <= set(inputs) <= set(self.padding) and (
            not self.max_length or _padded(length) <= self.max_length)

    def run(self, inputs: dict[str, torch.Tensor], adapters: Sequence[str],
            eager: Callable[[], ModelOutput]) -> ModelOutput:
        """The pass's outputs for `inputs` (a pass `fits`), row i with adapter `adapters[i]` (a name no
        layer has, such as PEFT's "__base__", for the base weights); its graph captured first if it is
        new. A graph's first pass with adapters, and its first without, are checked against `eager()`,
        the same pass run eagerly: `GraphMismatch` where they differ."""
        key = _key(inputs)
        if key not in self._graphs:
            self._graphs[key] = self._captured(*key)
        replayed = self._replayed(self._graphs[key], inputs, adapters)
        # Rows without an adapter leave every mask 0: a pass of only those would not check the LoRA.
        checked = (key, any(name in self.index for name in adapters))
        if checked not in self._checked:
            _check(replayed, eager(), self.tolerance)
            self._checked.add(checked)
        return replayed

    def _replayed(self, graph: _Graph, inputs: dict[str, torch.Tensor], adapters: Sequence[str]) -> ModelOutput:
        rows, length = inputs["input_ids"].shape
        for name, tensor in inputs.items():
            static = graph.inputs[name][:rows]
            static[:, length:].fill_(self.padding[name])
            static[:, :length].copy_(tensor)
        row_adapters = torch.tensor([self.index.get(name, -1) for name in adapters])
        graph.adapters[:rows].copy_(row_adapters, non_blocking=True)
        graph.replay()
        assert self._output_type is not None
        # Copies, not views: the next replay writes over the static outputs while heads may still read these.
        return self._output_type(**{name: (tensor[:rows, :length] if tensor.dim() == 3 else tensor[:rows]).clone()
                                    for name, tensor in graph.outputs.items()})

    def _captured(self, length: int, names: tuple[str, ...]) -> _Graph:
        device = next(self.model.parameters()).device
        inputs = {name: torch.full((self.batch_size, length), self.padding[name], dtype=torch.long, device=device)
                  for name in names}
        inputs["attention_mask"][:, 0] = 1  # spare rows attend to one token, so their softmax stays finite
        adapters = torch.full((self.batch_size,), -1, dtype=torch.long, device=device)

        def forward() -> Outputs:
            # The mask made here, on the device: a 2D mask makes the model check on the host whether any
            # token is padding, which a graph cannot capture.
            mask = _attention_mask(self.config, inputs["attention_mask"])
            with _every_adapter(self._layers, self.stacks, self._columns, adapters):
                output = self.model(**{**inputs, "attention_mask": mask})
            self._output_type = type(output)
            return _tensors(output)

        replay, outputs = self._capture(forward)
        return _Graph(inputs, adapters, replay, outputs)


def pad_values(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """What each model input a graph takes is padded with, as the tokenizer pads."""
    return {"input_ids": int(tokenizer.pad_token_id), "attention_mask": 0,
            "token_type_ids": int(tokenizer.pad_token_type_id)}


def _key(inputs: dict[str, torch.Tensor]) -> tuple[int, tuple[str, ...]]:
    return _padded(inputs["input_ids"].shape[1]), tuple(sorted(inputs))


def _check(replayed: ModelOutput, eager: ModelOutput, tolerance: float) -> None:
    """`GraphMismatch` unless each row of each output is within `tolerance` of the eager one, relative to
    its norm: per row, so that one row given the wrong LoRA is not diluted among the others."""
    for name, expected in _tensors(eager).items():
        expected = expected.float().flatten(1)
        gaps = (replayed[name].float().flatten(1) - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-12)
        gap = float(gaps.max())
        if not gap <= tolerance:
            raise GraphMismatch(f"a row of a replayed pass's {name} is {gap:.3g} of its norm from the eager "
                                f"pass's (at most {tolerance:g} allowed)", eager)


def _padded(length: int) -> int:
    return -(-length // LENGTH_STEP) * LENGTH_STEP


def _tensors(output: ModelOutput) -> Outputs:
    return {name: value for name, value in output.items() if isinstance(value, torch.Tensor)}


def _attention_mask(config: PretrainedConfig, mask: torch.Tensor) -> torch.Tensor:
    """The model's own 4D attention mask for a 2D padding mask, built without asking whether any row pads."""
    shape_only = torch.empty(*mask.shape, 0, device=mask.device)  # the mask reads only the batch's shape and dtype
    built = create_bidirectional_mask(config=config, inputs_embeds=shape_only, attention_mask=mask,
                                      allow_is_bidirectional_skip=False)
    assert built is not None
    return built


def _columns(stack: StackedLora, index: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which adapter (by `index`) owns each of the stack's rank columns, and that adapter's scaling."""
    ranks = torch.tensor([stop - start for start, stop in stack.blocks])
    owner = torch.tensor([index[name] for name in stack.names]).repeat_interleave(ranks)
    scaling = torch.tensor(stack.scalings).repeat_interleave(ranks)
    device = stack.lora_a.device
    return owner.to(device), scaling.to(device, stack.lora_a.dtype)


@contextlib.contextmanager
def _every_adapter(layers: Sequence[lora.Linear], stacks: Stacks,
                   columns: dict[lora.Linear, tuple[torch.Tensor, torch.Tensor]],
                   row_adapters: torch.Tensor) -> Iterator[None]:
    """Within the block each adapted layer runs its whole stack on every row, row i's LoRA masked to the
    block of adapter `row_adapters[i]`: masks computed on the device, one per distinct set of columns."""
    masks: dict[int, torch.Tensor] = {}
    for layer in layers:
        stack = stacks[layer]
        owner, scaling = columns[layer]
        if id(owner) not in masks:
            masks[id(owner)] = (row_adapters[:, None] == owner[None, :]) * scaling[None, :]
        # A stacked layer's base is an nn.Linear (folding's `_stackable`).
        layer.forward = RowMaskedForward(  # type: ignore[method-assign]
            cast(nn.Linear, layer.get_base_layer()), stack.lora_a, stack.lora_b, masks[id(owner)])
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
