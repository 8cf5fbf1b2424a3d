"""The engine's encoder adapters: their LoRA on one shared encoder, each task's head apart, run in shared passes.

A head is the task model transformers builds for the kind (so every architecture's own head code is
reused), with its encoder swapped for a stand-in that hands over the rows the shared encoder already
computed.

How a call with inputs of several tasks runs: the rows of every task are padded together into
batches of similar length, and each pass gives each row its own adapter's LoRA (`folding.mixed_lora`:
two thin GEMMs a layer for all adapters at once, from stacks the adapters' weights are views of, so
nothing is copied). With a fold cache (or `mixed_batches: false`), each task's rows get passes of their
own with its LoRA folded into the weights (`folding.folded_lora`). bench/infer_speed.py measures both.
On CUDA, shared passes replay as CUDA graphs (`graphs.py`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from mtlora.backbone import linear_weights_in_bf16, load_pretrained, name_pad_token, quiet_loading, resolve_backbone
from mtlora.batching import (
    autocast,
    feature_row,
    length_sorted_batches,
    pad_rows,
    pass_cost_tokens,
    store_outputs,
    to_device,
)
from mtlora.engine.folding import (
    FOLD_MIN_TOKENS,
    FoldCache,
    SharedAcrossRows,
    Stacks,
    check_plain_lora,
    check_plain_lora_files,
    current_stacks,
    folded_lora,
    lora_layers,
    mixed_lora,
    stack_lora,
)
from mtlora.engine.graphs import Capture, GraphMismatch, PassGraphs, cuda_graph_capture, pad_values
from mtlora.engine.job import Job
from mtlora.engine.peft_adapters import delete_adapter, load_weights, undone_on_failure, with_adapter
from mtlora.errors import AdapterNotServableError, BaseModelMismatchError
from mtlora.registry import Manifest, Registry
from mtlora.tasks import Example, TaskKind

PEFT_PREFIX = "base_model.model."
# How far each row of a graph's first outputs may be from the eager pass's, relative to its norm: in fp32
# the two differ in rounding only; in bf16 by up to a few percent, where padding and the row count change
# the kernels' sums (1.1% at most for MiniLM on this project's CPU). One row given another adapter's LoRA,
# even a weak one (scaled by 0.1), was 7% off.
GRAPH_TOLERANCE, GRAPH_TOLERANCE_BF16 = 1e-3, 5e-2
NO_ADAPTER = "__base__"  # PEFT's name for "this row without any LoRA"
logger = logging.getLogger(__name__)


class _ComputedEncoder(nn.Module):
    """Stands in for a task model's encoder and returns the rows the shared encoder already computed."""

    def __init__(self, pooler: nn.Module | None = None) -> None:
        super().__init__()
        self.output: ModelOutput | None = None
        # A checkpoint saved without a pooler (from BertForMaskedLM) leaves each adapter to train one of its
        # own; the shared encoder's is then random, and this task pools with its own instead.
        self.pooler = pooler

    def forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        assert self.output is not None, "the shared encoder runs before any head"
        if self.pooler is None:
            return self.output
        # A ModelOutput subclass declares its fields; the base class, all mypy is told here, has none.
        hidden = self.output.last_hidden_state  # type: ignore[attr-defined]
        return type(self.output)(**{**self.output, "pooler_output": self.pooler(hidden)})


# A head's outputs on a pass's rows of one job, still on the device: (job, kind, outputs, the job's feature rows).
_HeadOutput = tuple[Job, TaskKind, dict[str, torch.Tensor], list[int]]


@dataclass
class _Adapter:
    kind: TaskKind
    head: nn.Module
    stand_in: _ComputedEncoder


class EncoderAdapters:
    """The encoder adapters of an engine: LoRA on the shared encoder, each with its task's head."""

    def __init__(self, backbone: str, tokenizer: PreTrainedTokenizerBase, device: torch.device, bf16: bool,
                 batch_size: int, mixed_batches: bool | Literal["auto"], fold_cache: int, cuda_graphs: bool = True):
        self.backbone, self.tokenizer, self.device, self.bf16 = backbone, tokenizer, device, bf16
        self.batch_size = batch_size
        self.pass_cost = pass_cost_tokens(device)
        cuda = device.type == "cuda"
        # Measured (bench/infer_speed.py, bench/batch_cuts.py): shared passes beat per-adapter folded ones
        # on CPU, and on an H100 by 26-39% once rows there share a pass unless it would pad more than a
        # pass costs (`pass_cost_tokens`); cached folds are faster still on CPU, for their memory.
        self.mixed_batches = not fold_cache if mixed_batches == "auto" else mixed_batches
        # A GPU waits on kernel launches and Python, not on a fold's few microseconds of memory traffic: it
        # folds whatever a pass's tokens, and each adapter once per call, keeping the folds for the
        # adapter's later passes and dropping them after its last (+25% against folding every pass, in an
        # A/B on an H100). A CPU pays for a fold in memory traffic: a small pass runs unmerged
        # (`FOLD_MIN_TOKENS`), and a fold goes into one scratch weight, so a pass never holds a folded copy.
        self._fold_min_tokens = 0 if cuda else FOLD_MIN_TOKENS
        self._fold_per_block = cuda
        self.fold_cache = FoldCache(fold_cache) if fold_cache else None
        self._adapters: dict[str, _Adapter] = {}
        self._lora_layers: list[LoraLinear] | None = None  # found again after adapters come or go
        self._folded_adapter: str | None = None
        # Each layer's LoRA in one stack, which the adapters' weights view: made when adapters come or go.
        self._stacks: Stacks = {}
        with quiet_loading():
            base = load_pretrained(AutoModel, resolve_backbone(backbone))
        self.hidden_size = int(base.config.hidden_size)
        if bf16:
            linear_weights_in_bf16(base)
        self.model: nn.Module = base.to(device).eval()  # PEFT-wrapped while it holds adapters
        self._shift_right: Callable[[torch.Tensor], torch.Tensor] | None = (
            getattr(base, "_shift_right", None) if base.config.is_encoder_decoder else None)
        # Shared passes replayed as CUDA graphs (`graphs.py`): made for the adapters loaded, again when they change.
        self.cuda_graphs = cuda_graphs and cuda and not base.config.is_encoder_decoder
        self.graph_capture: Callable[[], Capture] = cuda_graph_capture
        self._graphs: PassGraphs | None = None

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    # ---- adapters ---------------------------------------------------------------------------------

    def prepared(self, registry: Registry, name: str, kind: TaskKind, manifest: Manifest) -> Callable[[], None]:
        """Adapter `name` read, checked and its head built, with the engine as it was; and the step that puts
        its LoRA into the shared encoder."""
        folder = registry.path(name)
        config = LoraConfig.from_pretrained(str(folder))
        state = load_file(folder / SAFETENSORS_WEIGHTS_NAME)
        head, stand_in = self._build_head(kind, manifest, state)
        base_prefix = cast(str, head.base_model_prefix)  # a transformers model's class attribute
        encoder_state, head_state = _split_state(state, base_prefix, name)
        check_plain_lora_files(name, config, encoder_state)
        _load_head(head, head_state, name)
        adapter = _Adapter(kind, head, stand_in)

        def put_in() -> None:
            self._add_lora(name, config, encoder_state, base_prefix)
            self._adapters[name] = adapter
        return put_in

    def remove(self, name: str) -> None:
        del self._adapters[name]
        self._forget_folds()
        self._drop_lora(name)
        self._restack()

    def _build_head(self, kind: TaskKind, manifest: Manifest,
                    state: dict[str, torch.Tensor]) -> tuple[nn.Module, _ComputedEncoder]:
        config = AutoConfig.from_pretrained(resolve_backbone(self.backbone), **manifest.head_kwargs())
        name_pad_token(config, self.tokenizer)
        with torch.device("meta"):
            head = kind.auto_class.from_config(config, dtype=torch.float32)  # not the checkpoint's (load_pretrained)
        prefix = head.base_model_prefix
        own_pooler = any(_is_own_pooler(key, prefix) for key in state)
        pooler = getattr(getattr(head, prefix), "pooler", None) if own_pooler else None
        if isinstance(pooler, nn.Linear):  # ALBERT's: a bare layer, its activation elsewhere in the model
            raise AdapterNotServableError(
                f"adapter '{manifest.name}' trained a pooler of its own ({config.model_type}'s checkpoint has none), "
                "which the engine cannot run for this model; load it alone with mtlora.load_predictor")
        stand_in = _ComputedEncoder(pooler)
        setattr(head, head.base_model_prefix, stand_in)
        head.to_empty(device=self.device)
        return head.eval(), stand_in

    def _add_lora(self, name: str, config: LoraConfig, state: dict[str, torch.Tensor], base_prefix: str) -> None:
        if not isinstance(config.target_modules, str):
            # Full module paths of the task model ("bert.encoder...") name the same layers in the bare encoder.
            # PEFT annotates a list or None, and holds a set once the config is made.
            config.target_modules = {  # type: ignore[assignment]
                m.removeprefix(base_prefix + ".") for m in config.target_modules}  # type: ignore[union-attr]
        config.modules_to_save = None  # heads live apart, in `_Adapter.head`
        config.task_type = None
        config.inference_mode = True
        self.model = with_adapter(self.model, name, config)
        self._forget_folds()
        with undone_on_failure(lambda: self._undo_add(name)):
            check_plain_lora(self.model, name)
            load_weights(self.model, name, state, name)
            if self.bf16:  # in the dtype of the linear weights they fold into, not cast again on every pass
                for layer in lora_layers(self.model):
                    if name in layer.lora_A:
                        layer.lora_A[name].to(torch.bfloat16)
                        layer.lora_B[name].to(torch.bfloat16)
            self.model.eval()
            self._restack()

    def _undo_add(self, name: str) -> None:
        self._drop_lora(name)
        self._forget_folds()
        self._restack()

    def _drop_lora(self, name: str) -> None:
        assert isinstance(self.model, PeftModel)
        if not delete_adapter(self.model, name):
            self.model = self.model.unload()  # the last: the bare encoder serves on (semantic routing)

    # ---- running ----------------------------------------------------------------------------------

    def job(self, name: str, examples: list[Example], max_length: int, doc_stride: int) -> Job:
        kind = self._adapters[name].kind
        return Job(name, examples, kind.encode(self.tokenizer, examples, max_length, doc_stride, with_targets=False))

    def run(self, jobs: list[Job]) -> None:
        """Every feature row of every job through the encoder, then each job's rows through its head.

        The heads' outputs come to the host after the call's last pass: on CUDA a copy to the host waits
        for the device to finish all it was given, so copying after each pass would keep the host from
        queueing the next pass while the device runs this one.
        """
        if self.mixed_batches and isinstance(self.model, PeftModel):
            self._stacks = current_stacks(self._layers(), self._stacks)
        with torch.inference_mode(), autocast(self.device, self.bf16):
            outputs = self._run_passes(jobs)
        for job, kind, output, features in outputs:
            store_outputs(kind, output, features, job.lengths, job.results)

    def _run_passes(self, jobs: list[Job]) -> list[_HeadOutput]:
        rows = [(j, f) for j, job in enumerate(jobs) for f in range(len(job.encoded))]
        if self.mixed_batches:
            lengths = [jobs[j].lengths[f] for j, f in rows]
            try:
                return [output for batch in length_sorted_batches(lengths, self.batch_size, self.pass_cost)
                        for output in self._run_batch(jobs, [rows[i] for i in batch])]
            except SharedAcrossRows as shared:
                logger.warning("%s feeds its adapted layers %s, which no row can adapt alone: from now on "
                               "each adapter's rows run in passes of their own (mixed_batches: false)",
                               self._encoder_stack().config.model_type, shared)
                self.mixed_batches = False
        outputs = []
        for first, job in zip(_offsets(jobs), jobs, strict=True):
            with self._folded(job.task):
                for batch in length_sorted_batches(job.lengths, self.batch_size, self.pass_cost):
                    outputs += self._run_batch(jobs, [rows[first + i] for i in batch])
        return outputs

    def bare_hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The last hidden states of the part of the backbone that reads the input, with every adapter off."""
        def eager() -> ModelOutput:
            with self._folded(NO_ADAPTER):
                return self._encoder_stack()(**batch)
        return self._replayed_or(  # type: ignore[attr-defined]  # the base ModelOutput declares no fields
            eager, batch, [NO_ADAPTER] * len(batch["input_ids"])).last_hidden_state

    def _run_batch(self, jobs: list[Job], picked: list[tuple[int, int]]) -> list[_HeadOutput]:
        """Feature rows (job, feature) padded into one encoder pass, then each job's rows through its head."""
        inputs = pad_rows(self.tokenizer, [feature_row(jobs[j].encoded.features, f) for j, f in picked], self.device)
        encoded = self._encode(inputs, [jobs[j].task for j, _ in picked])
        positions: dict[int, list[int]] = defaultdict(list)
        for position, (j, _) in enumerate(picked):
            positions[j].append(position)
        outputs = []
        for j, where in positions.items():
            job, adapter = jobs[j], self._adapters[jobs[j].task]
            if len(where) == len(picked):  # the pass is this job's alone (per-adapter passes): nothing to pick
                head_inputs, adapter.stand_in.output = inputs, _rows(encoded)
            else:
                index = to_device(torch.tensor(where), self.device)
                head_inputs = {name: tensor[index] for name, tensor in inputs.items()}
                adapter.stand_in.output = _rows(encoded, index)
            output = adapter.kind.outputs_of(adapter.head(**head_inputs))
            adapter.stand_in.output = None
            outputs.append((job, adapter.kind, output, [picked[p][1] for p in where]))
        return outputs

    def _encoder_stack(self) -> PreTrainedModel:
        """The part of the backbone that reads the input: all of an encoder, the encoder of an encoder-decoder."""
        # A transformers model, bare or in PEFT's wrapper: `self.model` is typed as the nn.Module both are.
        base = cast(PreTrainedModel, self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model)
        return base.get_encoder() if base.config.is_encoder_decoder else base

    def _encode(self, inputs: dict[str, torch.Tensor], adapters: list[str]) -> ModelOutput:
        if self._shift_right is not None and "decoder_input_ids" not in inputs:
            # T5's encoder kinds (T5ForSequenceClassification...) decode the input shifted right; T5Model,
            # unlike BartModel, does not make that decoder input itself.
            # The forward's keywords, of which use_cache is not a tensor.
            inputs = {**inputs, "decoder_input_ids": self._shift_right(inputs["input_ids"]),
                      "use_cache": False}  # type: ignore[dict-item]
        return self._replayed_or(lambda: self._eager_encode(inputs, adapters), inputs, adapters)

    def _eager_encode(self, inputs: dict[str, torch.Tensor], adapters: list[str]) -> ModelOutput:
        if isinstance(self.model, PeftModel) and len(set(adapters)) > 1:
            with mixed_lora(self._layers(), adapters, self._stacks):
                return self.model(**inputs)
        with self._folded(adapters[0]):  # NO_ADAPTER is in no layer: base weights
            return self.model(**inputs)

    def _replayed_or(self, eager: Callable[[], ModelOutput], inputs: dict[str, torch.Tensor],
                     adapters: list[str]) -> ModelOutput:
        """A pass's outputs, replayed from a CUDA graph where one serves it, else `eager()`."""
        graphs = self._pass_graphs(inputs)
        if graphs is None:
            return eager()
        try:
            return graphs.run(inputs, adapters, eager)
        except SharedAcrossRows:
            # DeBERTa: no pass can give rows adapters of their own; `_run_passes` says so and runs per adapter.
            self.cuda_graphs, self._graphs = False, None
            return eager()
        except GraphMismatch as mismatch:
            self._graphs_off(f"{mismatch}. The eager pass answers")
            return mismatch.eager
        except Exception as failure:  # a capture or replay can fail in many ways; an eager pass still answers
            self._graphs_off(f"a pass failed as a CUDA graph ({type(failure).__name__}: {failure})")
            return eager()

    def _pass_graphs(self, inputs: dict[str, torch.Tensor]) -> PassGraphs | None:
        """The CUDA graphs that run a pass of `inputs`, for the adapters loaded now; None where a pass runs
        eagerly: not CUDA, graphs off or failed, per-adapter passes (`mixed_batches: false`, whose folds
        a graph would not see), or a pass no graph fits."""
        if not (self.cuda_graphs and self.mixed_batches):
            return None
        layers = self._layers() if isinstance(self.model, PeftModel) else []
        if self._graphs is None or self._graphs.stacks is not self._stacks:
            if not PassGraphs.servable(layers, self._stacks):
                return None
            self._graphs = PassGraphs(self.model, self._encoder_stack().config, layers, self._stacks, self.batch_size,
                                      pad_values(self.tokenizer), self.graph_capture(),
                                      tolerance=GRAPH_TOLERANCE_BF16 if self.bf16 else GRAPH_TOLERANCE)
        return self._graphs if self._graphs.fits(inputs) else None

    def _graphs_off(self, reason: str) -> None:
        logger.warning("CUDA graphs are off for this engine: %s; its passes run eagerly from now on, as "
                       "with inference.cuda_graphs: false, which skips the attempt", reason)
        self.cuda_graphs, self._graphs = False, None

    @contextlib.contextmanager
    def _folded(self, adapter: str) -> Iterator[None]:
        """Within the block the encoder runs with `adapter`'s LoRA folded in (`folding.py`). Inside a block
        that already runs `adapter`, nothing more to do."""
        if not isinstance(self.model, PeftModel) or self._folded_adapter == adapter:
            yield
            return
        # Rows without an adapter (semantic routing) have nothing to fold: they take no place in the cache.
        kept: dict[int, torch.Tensor] | None
        if self.fold_cache and adapter != NO_ADAPTER:
            kept = self.fold_cache.folded(adapter)
        else:
            kept = {} if self._fold_per_block else None
        self._folded_adapter = adapter
        try:
            with folded_lora(self._layers(), adapter, kept, self._fold_min_tokens):
                yield
        finally:
            self._folded_adapter = None

    def _restack(self) -> None:
        """Every adapter's LoRA into its layers' stacks (`folding.stack_lora`), the old stacks let go."""
        self._stacks = stack_lora(self._layers()) if isinstance(self.model, PeftModel) else {}

    def _layers(self) -> list[LoraLinear]:
        if self._lora_layers is None:
            self._lora_layers = lora_layers(self.model)
        return self._lora_layers

    def _forget_folds(self) -> None:
        """Adapters came or went: the LoRA layers may have changed, and with them any folded weights and graphs."""
        self._lora_layers = None
        self._graphs = None
        if self.fold_cache is not None:
            self.fold_cache.clear()


def _load_head(head: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BaseModelMismatchError(
            f"adapter '{name}': its head does not fit the task model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); retrain it with this version of mtlora"
        )


def _split_state(state: dict[str, torch.Tensor], base_prefix: str,
                 name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """PEFT task-model keys -> (LoRA keys for a PEFT-wrapped bare encoder, head keys for the task model)."""
    encoder, head = {}, {}
    for key, tensor in state.items():
        inner = key.removeprefix(PEFT_PREFIX)
        if inner.startswith(base_prefix + ".") and not _is_own_pooler(key, base_prefix):
            if "lora_" not in inner:
                raise AdapterNotServableError(
                    f"adapter '{name}' retrains encoder weights ({inner}) that other tasks share, so it cannot "
                    "join a multi-adapter engine; load it alone with mtlora.load_predictor"
                )
            encoder[PEFT_PREFIX + inner.removeprefix(base_prefix + ".")] = tensor
        else:
            head[inner] = tensor
    return encoder, head


def _is_own_pooler(key: str, base_prefix: str) -> bool:
    """A weight of the backbone's pooler trained in full with the adapter (the checkpoint had none), not
    LoRA on one, nor a pooler of the head's own (DeBERTa's)."""
    return key.removeprefix(PEFT_PREFIX).startswith(f"{base_prefix}.pooler.") and "lora_" not in key


def _offsets(jobs: list[Job]) -> list[int]:
    """Where each job's feature rows start in the flat list of the call's rows."""
    starts, total = [], 0
    for job in jobs:
        starts.append(total)
        total += len(job.encoded)
    return starts


def _rows(output: ModelOutput, index: torch.Tensor | None = None) -> ModelOutput:
    """The output's tensors, of the rows at `index` (every row without one)."""
    return type(output)(**{k: v if index is None else v[index] for k, v in output.items()
                           if isinstance(v, torch.Tensor)})
