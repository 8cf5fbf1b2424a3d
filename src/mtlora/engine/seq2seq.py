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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from peft import LoraConfig, PeftModel
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from mtlora.backbone import load_task_model, load_tokenizer, resize_input_embeddings
from mtlora.engine.job import Job
from mtlora.engine.peft_adapters import delete_adapter, load_weights, undone_on_failure, with_adapter
from mtlora.errors import AdapterNotServableError, CorruptAdapterError
from mtlora.modeling import adapter_tokenizer
from mtlora.registry import Registry
from mtlora.tasks import Encoded, Example
from mtlora.tasks.seq2seq import Seq2SeqTask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKEN_VALUES = "trainable_tokens_delta"  # PEFT's name for the trained rows (values, not differences)
SPARE_TOKEN_ROWS = 64  # task tokens all adapters of one engine may add together


@dataclass
class _Adapter:
    kind: Seq2SeqTask
    tokenizer: PreTrainedTokenizerBase
    token_rows: dict[int, int]  # the adapter's id of a task token -> its row in the shared embedding
    mixes: bool  # PEFT can run its rows in a batch with other adapters' rows
    peft_name: str  # its name in the PEFT model, new at each load: PEFT cannot rename or drop its last adapter


class Seq2SeqAdapters:
    def __init__(self, backbone: str, device: torch.device, bf16: bool, batch_size: int):
        self.backbone, self.device, self.bf16, self.batch_size = backbone, device, bf16, batch_size
        self.tokenizer = load_tokenizer(backbone)  # pads and decodes: task tokens never appear in outputs
        self.model: PeftModel | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._free_rows: list[int] = []  # spare rows of the shared input embedding no task token holds
        self._loads = 0
        # PEFT cannot drop its last adapter (nor add one after), so the last one removed waits here,
        # unused, until another joins (a reload's) or the model goes (`release_if_unused`).
        self._retired: list[str] = []

    def prepared(self, registry: Registry, name: str, kind: Seq2SeqTask) -> Callable[[], None]:
        """Adapter `name` read and checked, with the engine as it was; and the step that puts it in."""
        folder = registry.path(name)
        config = LoraConfig.from_pretrained(str(folder))
        token_ids = _token_ids(config.trainable_token_indices)
        config.trainable_token_indices = None
        config.inference_mode = True
        state = load_file(str(folder / SAFETENSORS_WEIGHTS_NAME))
        token_values = [state.pop(k) for k in [k for k in state if k.endswith(TOKEN_VALUES)]]
        values = torch.cat(token_values) if token_values else None
        if token_ids and (values is None or len(values) != len(token_ids)):
            raise CorruptAdapterError(f"adapter '{name}' names task tokens {token_ids} but has no trained rows "
                                      "for them; retrain it")
        tokenizer = adapter_tokenizer(registry, name, self.backbone)
        return lambda: self._put_in(name, kind, tokenizer, config, state, token_ids, values)

    def _put_in(self, name: str, kind: Seq2SeqTask, tokenizer: PreTrainedTokenizerBase, config: LoraConfig,
                state: dict[str, torch.Tensor], token_ids: list[int], values: torch.Tensor | None) -> None:
        self._loads += 1
        peft_name = f"{name}-{self._loads}"
        self.model = with_adapter(self._shared_model() if self.model is None else self.model, peft_name, config)
        with undone_on_failure(lambda: self._drop_new(peft_name)):
            load_weights(self.model, peft_name, state, name, "seq2seq backbone")
            rows = self._place_tokens(name, token_ids, values)
        self.model.eval()
        self._adapters[name] = _Adapter(kind, tokenizer, rows, mixes=not config.modules_to_save, peft_name=peft_name)
        for retired in self._retired:
            self._drop(retired)
        self._retired.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def remove(self, name: str) -> None:
        """Drop the adapter, and free its task-token rows for adapters to come."""
        adapter = self._adapters.pop(name)
        self._free_rows.extend(adapter.token_rows.values())
        self._drop(adapter.peft_name)

    def release_if_unused(self) -> None:
        """With no adapter left, let the seq2seq model go, with the adapter PEFT would not drop: a removal is
        final (a reload puts its adapter in first), and the next adapter added loads the model again."""
        if not self._adapters:
            self.model, self._retired = None, []

    def _drop(self, peft_name: str) -> None:
        assert self.model is not None
        if not delete_adapter(self.model, peft_name, gone=self._retired):
            self._retired.append(peft_name)  # the last: PEFT keeps it until another joins

    def _drop_new(self, peft_name: str) -> None:
        """Take out an adapter that failed to go in, and the model with it if no adapter is left."""
        self._drop(peft_name)
        self.release_if_unused()

    def job(self, name: str, examples: list[Example], max_length: int) -> Job:
        adapter = self._adapters[name]
        encoded = adapter.kind.encode(adapter.tokenizer, examples, max_length, 0, with_targets=False)
        if adapter.token_rows:
            renumber = adapter.token_rows
            encoded.features["input_ids"] = [[renumber.get(t, t) for t in ids] for ids in encoded.features["input_ids"]]
        return Job(name, examples, encoded)

    def run(self, jobs: Sequence[Job]) -> None:
        """Fill every job's results; jobs that answer the same way share batches (one pass, many adapters)."""
        groups: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            groups[self._adapters[job.task].kind.batch_key()].append(job)
        for group in groups.values():
            if all(self._adapters[job.task].mixes for job in group):
                self._run_together(group)
            else:
                for job in group:
                    self._run_together([job])

    def _run_together(self, jobs: list[Job]) -> None:
        assert self.model is not None
        features = {name: [row for job in jobs for row in job.encoded.features[name]]
                    for name in ("input_ids", "attention_mask")}
        names = [self._adapters[job.task].peft_name for job in jobs for _ in range(len(job.encoded))]
        merged = Encoded(features=features, example_index=list(range(len(names))),
                         extras=[extra for job in jobs for extra in job.encoded.extras],
                         truncated=[flag for job in jobs for flag in job.encoded.truncated])
        kind = self._adapters[jobs[0].task].kind
        if len(jobs) == 1:
            self.model.set_adapter(names[0])  # one adapter: its plain forward, no per-row dispatch
            results = kind.run(self.model, self.tokenizer, merged, self.batch_size, self.bf16)
        else:
            results = kind.run(self.model, self.tokenizer, merged, self.batch_size, self.bf16, adapter_names=names)
        start = 0
        for job in jobs:
            job.results = results[start:start + len(job.encoded)]
            start += len(job.encoded)

    def _shared_model(self) -> torch.nn.Module:
        model = load_task_model(self.backbone, AutoModelForSeq2SeqLM, seed=0).model
        first = cast(torch.nn.Embedding, model.get_input_embeddings()).num_embeddings
        self._free_rows = list(range(first + SPARE_TOKEN_ROWS - 1, first - 1, -1))  # popped lowest first
        resize_input_embeddings(model, first + SPARE_TOKEN_ROWS)
        output = model.get_output_embeddings()
        if output is not None and output.weight.shape[0] > first:
            # The output vocabulary grew with the input (T5 and BART tie or resize both): the spare rows
            # are never an answer, as they are not in a standalone adapter's model.
            model.generation_config.suppress_tokens = list(range(first, first + SPARE_TOKEN_ROWS))
        return model.to(self.device).eval()  # type: ignore[arg-type]  # transformers' `to` wrapper drops torch's types

    def _place_tokens(self, name: str, token_ids: list[int], values: torch.Tensor | None) -> dict[int, int]:
        if not token_ids:
            return {}
        assert self.model is not None and values is not None
        if len(token_ids) > len(self._free_rows):
            raise AdapterNotServableError(
                f"adapter '{name}' needs {len(token_ids)} task-token rows and {len(self._free_rows)} of the engine's "
                f"{SPARE_TOKEN_ROWS} are free; unload an adapter with task tokens, or serve it from another engine")
        embedding = self.model.get_input_embeddings()
        rows = dict(zip(token_ids, reversed(self._free_rows[-len(token_ids):]), strict=True))
        with torch.no_grad():
            embedding.weight[list(rows.values())] = values.to(embedding.weight)
        del self._free_rows[-len(token_ids):]  # taken once written
        return rows


def _token_ids(indices: list[int] | dict[str, list[int]] | None) -> list[int]:
    if indices is None:
        return []
    if isinstance(indices, dict):  # {embedding module name: ids}: mtlora writes only the input embedding
        return [i for ids in indices.values() for i in ids]
    return list(indices)
