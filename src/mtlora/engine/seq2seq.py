"""The engine's seq2seq adapters: one encoder-decoder holds them all, and a call runs their rows together.

Rows of adapters that answer the same way (same kind, same labels or decoding settings) go into one
`generate` (or one scoring pass) with PEFT's per-row `adapter_names`.

PEFT cannot mix rows of adapters that train task-token rows (`trainable_token_indices`), so the engine
takes those rows over: each adapter numbers its tokens from the end of the base vocabulary (two
adapters' tokens would share an id), so each token gets its own spare row of the shared input
embedding, holding the trained values, and the adapter's inputs are renumbered to it.

PEFT also cannot mix rows of adapters that saved whole blocks (`modules_to_save`: the cross-attention
of an encoder-decoder warm-started from an encoder-only checkpoint). Those adapters run one after
the other within a call: one pass per adapter, never one per request. T5 and BART adapters mix.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from mtlora.backbone import load_task_model, load_tokenizer, resize_input_embeddings
from mtlora.errors import BaseModelMismatchError
from mtlora.modeling import adapter_tokenizer
from mtlora.registry import Registry
from mtlora.tasks import Encoded, Example
from mtlora.tasks.seq2seq import Seq2SeqTask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKEN_VALUES = "trainable_tokens_delta"  # PEFT's name for the trained rows (values, not differences)
SPARE_TOKEN_ROWS = 64  # task tokens all adapters of one engine may add together


@dataclass
class _Adapter:
    kind: Seq2SeqTask
    tokenizer: PreTrainedTokenizerBase
    token_rows: dict[int, int]  # the adapter's id of a task token -> its row in the shared embedding
    mixes: bool  # PEFT can run its rows in a batch with other adapters' rows


@dataclass
class Seq2SeqJob:
    """One adapter's inputs in a call, encoded, and each feature's outputs once run."""

    task: str
    examples: list[Example]
    encoded: Encoded
    results: list[dict[str, Any]] = field(default_factory=list)


class Seq2SeqAdapters:
    def __init__(self, backbone: str, device: torch.device, bf16: bool, batch_size: int):
        self.backbone, self.device, self.bf16, self.batch_size = backbone, device, bf16, batch_size
        self.tokenizer = load_tokenizer(backbone)  # pads and decodes: task tokens never appear in outputs
        self.model: PeftModel | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._next_row = 0
        self._end_row = 0

    def add(self, registry: Registry, name: str, kind: Seq2SeqTask) -> None:
        folder = registry.path(name)
        config = LoraConfig.from_pretrained(str(folder))
        token_ids = _token_ids(config.trainable_token_indices)
        config.trainable_token_indices = None
        config.inference_mode = True
        state = load_file(str(folder / ADAPTER_WEIGHTS))
        token_values = [state.pop(k) for k in [k for k in state if k.endswith(TOKEN_VALUES)]]
        model = self._shared_model()
        if self.model is None:
            self.model = get_peft_model(model, config, adapter_name=name)
        else:
            self.model.add_adapter(name, config)
        result = set_peft_model_state_dict(self.model, state, adapter_name=name)
        if result.unexpected_keys:
            raise BaseModelMismatchError(f"adapter '{name}' has weights the seq2seq backbone has no place for: "
                                         f"{result.unexpected_keys[:3]}")
        rows = self._place_tokens(name, token_ids, torch.cat(token_values) if token_values else None)
        self.model.eval()
        self._adapters[name] = _Adapter(kind, adapter_tokenizer(registry, name, self.backbone), rows,
                                        mixes=not config.modules_to_save)

    def remove(self, name: str) -> None:
        """Drop the adapter; its task-token rows stay allocated (an engine adds few over its life)."""
        del self._adapters[name]
        assert self.model is not None
        if name in self.model.active_adapters and self._adapters:
            self.model.set_adapter(next(iter(self._adapters)))
        self.model.delete_adapter(name)

    def job(self, name: str, examples: list[Example], max_length: int) -> Seq2SeqJob:
        adapter = self._adapters[name]
        encoded = adapter.kind.encode(adapter.tokenizer, examples, max_length, 0, with_targets=False)
        if adapter.token_rows:
            renumber = adapter.token_rows
            encoded.features["input_ids"] = [[renumber.get(t, t) for t in ids] for ids in encoded.features["input_ids"]]
        return Seq2SeqJob(name, examples, encoded)

    def run(self, jobs: Sequence[Seq2SeqJob]) -> None:
        """Fill every job's results; jobs that answer the same way share batches (one pass, many adapters)."""
        groups: dict[str, list[Seq2SeqJob]] = defaultdict(list)
        for job in jobs:
            groups[self._adapters[job.task].kind.batch_key()].append(job)
        for group in groups.values():
            if all(self._adapters[job.task].mixes for job in group):
                self._run_together(group)
            else:
                for job in group:
                    self._run_together([job])

    def _run_together(self, jobs: list[Seq2SeqJob]) -> None:
        assert self.model is not None
        features = {name: [row for job in jobs for row in job.encoded.features[name]]
                    for name in ("input_ids", "attention_mask")}
        names = [job.task for job in jobs for _ in range(len(job.encoded))]
        merged = Encoded(features=features, example_index=list(range(len(names))),
                         extras=[extra for job in jobs for extra in job.encoded.extras],
                         truncated=[flag for job in jobs for flag in job.encoded.truncated])
        kind = self._adapters[jobs[0].task].kind
        if len(jobs) == 1:
            self.model.set_adapter(jobs[0].task)  # one adapter: its plain forward, no per-row dispatch
            results = kind.run(self.model, self.tokenizer, merged, self.batch_size, self.bf16)
        else:
            results = kind.run(self.model, self.tokenizer, merged, self.batch_size, self.bf16, adapter_names=names)
        start = 0
        for job in jobs:
            job.results = results[start:start + len(job.encoded)]
            start += len(job.encoded)

    def _shared_model(self) -> torch.nn.Module:
        if self.model is not None:
            return self.model
        model = load_task_model(self.backbone, AutoModelForSeq2SeqLM, seed=0).model
        self._next_row = model.get_input_embeddings().num_embeddings
        self._end_row = self._next_row + SPARE_TOKEN_ROWS
        resize_input_embeddings(model, self._end_row)
        return model.to(self.device).eval()

    def _place_tokens(self, name: str, token_ids: list[int], values: torch.Tensor | None) -> dict[int, int]:
        if not token_ids:
            return {}
        if values is None or len(values) != len(token_ids):
            raise BaseModelMismatchError(f"adapter '{name}' names task tokens {token_ids} but has no trained rows")
        if self._next_row + len(token_ids) > self._end_row:
            raise BaseModelMismatchError(f"the engine has room for {SPARE_TOKEN_ROWS} task tokens and they are "
                                         f"taken; adapter '{name}' needs {len(token_ids)} more: start a new engine")
        assert self.model is not None
        embedding = self.model.get_input_embeddings()
        rows = {token: self._next_row + i for i, token in enumerate(token_ids)}
        with torch.no_grad():
            embedding.weight[list(rows.values())] = values.to(embedding.weight)
        self._next_row += len(token_ids)
        return rows


def _token_ids(indices: list[int] | dict[str, list[int]] | None) -> list[int]:
    if indices is None:
        return []
    if isinstance(indices, dict):  # {embedding module name: ids}: mtlora writes only the input embedding
        return [i for ids in indices.values() for i in ids]
    return list(indices)
