"""One backbone in memory, many task adapters, and mixed-task batches in one encoder pass.

How a call with inputs of several tasks runs: on CPU the rows of every task are padded together into
batches of similar length, and each pass gives each row its own adapter's LoRA (`folding.mixed_lora`:
two thin GEMMs a layer for all adapters at once, no weights copied). On CUDA, or with a fold cache, each
task's rows get passes of their own with its LoRA folded into the weights (`folding.folded_lora`).
bench/infer_speed.py measures which is faster where.
Either way each task's head then runs on its rows. A head is the task model transformers builds for
the kind (so every architecture's own head code is reused), with its encoder swapped for a stand-in
that hands over the rows already computed.

Seq2seq adapters live on one shared encoder-decoder of their own (`seq2seq.py`); their rows in a call
are answered there, in the same call.

    >>> engine = Engine.from_config("examples/demo/mtlora.yaml")
    >>> engine.predict("my parcel never arrived")            # routed (semantic by default)
    >>> engine.predict_batch(["great film", ("a", "b")], task=["sentiment", "paraphrase"])
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.utils import ModelOutput

from mtlora.backbone import (
    default_device,
    linear_weights_in_bf16,
    load_pretrained,
    load_tokenizer,
    name_pad_token,
    quiet_loading,
    resolve_backbone,
    use_bf16,
)
from mtlora.batching import autocast, feature_row, length_sorted_batches, pad_rows, store_outputs
from mtlora.config import ROUTER_ADAPTER, Precision, ProjectConfig, RouterSettings, checked_inference, load_config
from mtlora.engine.folding import (
    FOLD_MIN_TOKENS,
    FoldCache,
    SharedAcrossRows,
    check_plain_lora,
    check_plain_lora_files,
    folded_lora,
    lora_layers,
    mixed_lora,
)
from mtlora.engine.inputs import NAMED_AND_ROUTED, Input, KnownTasks, engine_request, naming_input
from mtlora.engine.job import Job
from mtlora.engine.peft_adapters import delete_adapter, load_weights, undone_on_failure, with_adapter
from mtlora.engine.seq2seq import Seq2SeqAdapters
from mtlora.errors import (
    AdapterNotFoundError,
    AdapterNotServableError,
    BaseModelMismatchError,
    InputError,
    RegistryError,
    UnknownTaskError,
)
from mtlora.modeling import check_base, export_merged, kind_from_manifest
from mtlora.registry import Manifest, Registry
from mtlora.routing import Request, Route, Router, build_router, router_class
from mtlora.routing.base import ANSWERED_BY, SHAPE_NAMES
from mtlora.routing.explicit import ExplicitRouter
from mtlora.routing.token_head import ROUTING_MAX_TOKENS, mean_token_embeddings
from mtlora.tasks import Prediction, TaskKind
from mtlora.tasks.seq2seq import Seq2SeqTask

PEFT_PREFIX = "base_model.model."
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
        return type(self.output)(**{**self.output, "pooler_output": self.pooler(self.output.last_hidden_state)})


@dataclass
class _Task:
    manifest: Manifest
    kind: TaskKind
    head: nn.Module | None = None  # encoder kinds; seq2seq adapters live in `Engine._seq2seq`
    stand_in: _ComputedEncoder | None = None


class Engine:
    """The adapters of a registry on one shared backbone, answering inputs of any of their tasks.

    Args:
        backbone: the base model the adapters were trained on (hub id, folder, or "embedded").
        registry: the adapter registry (or its folder).
        tasks: the adapters to load (default: all; the learned router loads when first used).
        router: the router used when a call names no task: a name in `mtlora.routing.ROUTERS`.
        router_settings: thresholds and default task for routing.
        precision: "auto" (bf16 where the hardware has it), "fp32" or "bf16".
        batch_size: feature rows per encoder pass.
        mixed_batches: the rows of every adapter in a call share each pass, each row with its own LoRA
            (True), or each adapter gets passes of its own with its LoRA folded into the weights (False).
            "auto": shared passes on CPU unless `fold_cache` is set, per-adapter passes on CUDA.
        fold_cache: adapters whose folded weights stay in memory between calls (per-adapter passes only).
        routing_hints: each task's routing hints (keywords, patterns, priority, examples) as its project
            file gives them now (`from_config` passes them); a task left out routes by the hints stored
            in its manifest when it was trained.
        project_tasks: the project file's tasks, trained or not (`from_config` passes them): a text whose
            prefix names one not trained yet is told to train it.
    """

    def __init__(
        self,
        backbone: str,
        registry: Registry | str | Path,
        tasks: Sequence[str] | None = None,
        *,
        router: str | None = None,
        router_settings: RouterSettings | None = None,
        precision: Precision = "auto",
        device: torch.device | str | None = None,
        batch_size: int = 32,
        mixed_batches: bool | Literal["auto"] = "auto",
        fold_cache: int = 0,
        routing_hints: Mapping[str, Mapping[str, Any]] | None = None,
        project_tasks: Sequence[str] = (),
    ):
        # The project file checks these; a caller in Python gets the same answer, not a silent default.
        inference = checked_inference(precision=precision, batch_size=batch_size, mixed_batches=mixed_batches,
                                      fold_cache=fold_cache)
        self.backbone = backbone
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.device = torch.device(device) if device is not None else default_device()
        self.bf16 = use_bf16(inference.precision, self.device)
        self.batch_size = inference.batch_size
        cuda = self.device.type == "cuda"
        # Measured (bench/infer_speed.py): on CPU shared passes beat per-adapter folded ones, and cached folds
        # beat both; on an H100 per-adapter passes beat shared ones, in bf16 and fp32.
        mixed = inference.mixed_batches
        self.mixed_batches = (not cuda and not inference.fold_cache) if mixed == "auto" else mixed
        # A GPU waits on kernel launches and Python, not on a fold's few microseconds of memory traffic: it
        # folds whatever a pass's tokens, and each adapter once per call, keeping the folds for the
        # adapter's later passes and dropping them after its last (+25% against folding every pass, in an
        # A/B on an H100). A CPU pays for a fold in memory traffic: a small pass runs unmerged
        # (`FOLD_MIN_TOKENS`), and a fold goes into one scratch weight, so a pass never holds a folded copy.
        self._fold_min_tokens = 0 if cuda else FOLD_MIN_TOKENS
        self._fold_per_block = cuda
        self.tokenizer = load_tokenizer(backbone)
        self.router_settings = router_settings or RouterSettings()
        self.default_router = router_class(router or self.router_settings.strategy).name  # a typo fails here
        self._routing_hints = dict(routing_hints or {})
        self._project_tasks = frozenset(project_tasks)
        self._routers: dict[str, Router] = {}
        self._tasks: dict[str, _Task] = {}
        self._lora_layers: list[LoraLinear] | None = None  # found again after adapters come or go
        self._folded_adapter: str | None = None
        self._stacks: dict[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None  # for one call's shared passes
        self._fold_cache = FoldCache(inference.fold_cache) if inference.fold_cache else None
        self._seq2seq = Seq2SeqAdapters(backbone, self.device, self.bf16, self.batch_size)
        # One call at a time: the heads' stand-ins hold per-call state, and one batched pass already
        # uses every core. Concurrent callers queue here; the server batches them into one call.
        self._lock = threading.RLock()
        with quiet_loading():
            base = load_pretrained(AutoModel, resolve_backbone(backbone))
        self.hidden_size = int(base.config.hidden_size)
        if self.bf16:
            linear_weights_in_bf16(base)
        self._encoder: nn.Module = base.to(self.device).eval()
        self._shift_right: Callable[[torch.Tensor], torch.Tensor] | None = (
            getattr(base, "_shift_right", None) if base.config.is_encoder_decoder else None)
        names = tasks if tasks is not None else [n for n in self.registry.names() if n != ROUTER_ADAPTER]
        for name in names:
            self.add(name)

    @classmethod
    def from_config(cls, config: ProjectConfig | str | Path, tasks: Sequence[str] | None = None,
                    **kwargs: Any) -> Engine:
        project = config if isinstance(config, ProjectConfig) else load_config(config)
        kwargs.setdefault("router_settings", project.router)
        kwargs.setdefault("routing_hints", {task.name: task.routing.model_dump(mode="json") for task in project.tasks})
        kwargs.setdefault("project_tasks", [task.name for task in project.tasks])
        for setting, value in project.inference.model_dump().items():
            kwargs.setdefault(setting, value)
        return cls(project.backbone, Registry(project.registry), tasks, **kwargs)

    # ---- adapters ---------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """The task adapters loaded (the learned router is not one of them)."""
        return [name for name in self._tasks if name != ROUTER_ADAPTER]

    def manifest(self, task: str) -> Manifest:
        return self._task(task).manifest

    def routing_hints(self, task: str) -> Mapping[str, Any]:
        """`task`'s routing hints: the project file's, else those its manifest kept from training."""
        return self._routing_hints.get(task, self.manifest(task).routing)

    def add(self, name: str) -> None:
        """Load adapter `name` from the registry into the running engine (the backbone stays loaded)."""
        with self._lock:
            if name in self._tasks:
                return
            task, put_in = self._prepared(name)
            put_in()
            self._tasks[name] = task
            self._routers.clear()  # routers hold the task list they were built for

    def reload(self, name: str) -> None:
        """Load adapter `name` again from the registry (retrained, say) in place of the loaded one.

        Everything that can fail on a damaged or mismatched adapter runs before the loaded one is taken
        out, which then keeps serving; and the task stays listed while it is swapped, so a caller never
        finds it missing.
        """
        with self._lock:
            if name not in self._tasks:
                self.add(name)
                return
            task, put_in = self._prepared(name)
            self._unload(name, self._tasks[name])
            try:
                put_in()
            except BaseException:
                del self._tasks[name]
                raise
            self._tasks[name] = task

    def _prepared(self, name: str) -> tuple[_Task, Callable[[], None]]:
        """Adapter `name` read, checked and its head built, with the engine as it was; and the step that
        puts its LoRA into the shared model."""
        if name not in self.registry:  # the registry would list the learned router among the tasks
            raise AdapterNotFoundError(str(self.registry.root), name,
                                       [other for other in self.registry.names() if other != ROUTER_ADAPTER])
        manifest = self.registry.verified(name)
        check_base(manifest, self.backbone)
        kind = kind_from_manifest(manifest)
        if isinstance(kind, Seq2SeqTask):
            task, put_in = _Task(manifest, kind), self._seq2seq.prepared(self.registry, name, kind)
        else:
            folder = self.registry.path(name)
            config = LoraConfig.from_pretrained(str(folder))
            state = load_file(folder / SAFETENSORS_WEIGHTS_NAME)
            head, stand_in = self._build_head(kind, manifest, state)
            base_prefix = head.base_model_prefix
            encoder_state, head_state = _split_state(state, base_prefix, name)
            check_plain_lora_files(name, config, encoder_state)
            self._load_head(head, head_state, name)
            task = _Task(manifest, kind, head, stand_in)

            def put_in() -> None:
                self._add_lora(name, config, encoder_state, base_prefix)
        # The files were checked, then read: a save in between (a retrain finishing) would pair this
        # manifest with another adapter's weights. Each save writes a new creation time.
        if self.registry.manifest(name).created_at != manifest.created_at:
            raise RegistryError(f"adapter '{name}' was saved again while it was being loaded; load it again")
        return task, put_in

    def remove(self, name: str) -> None:
        """Unload adapter `name`; the other adapters and the backbone stay as they are."""
        with self._lock:
            task = self._task(name)
            del self._tasks[name]
            self._unload(name, task)
            self._seq2seq.release_if_unused()

    def _unload(self, name: str, task: _Task) -> None:
        self._routers.clear()  # routers hold the task list they were built for
        self._forget_folds()
        if isinstance(task.kind, Seq2SeqTask):
            self._seq2seq.remove(name)
            return
        self._drop_lora(name)

    def _drop_lora(self, name: str) -> None:
        assert isinstance(self._encoder, PeftModel)
        if not delete_adapter(self._encoder, name):
            self._encoder = self._encoder.unload()  # the last: the bare encoder serves on (semantic routing)

    def merge(self, name: str, folder: str | Path, overwrite: bool = False) -> Path:
        """Write task `name` as a plain transformers model with its LoRA merged in (`export_merged`)."""
        return export_merged(self.registry, self.backbone, name, folder, overwrite)

    def _task(self, name: str) -> _Task:
        if name not in self._tasks:
            raise UnknownTaskError("task", name, self.tasks, where=" loaded in the engine")
        return self._tasks[name]

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

    def _load_head(self, head: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
        missing, unexpected = head.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BaseModelMismatchError(
                f"adapter '{name}': its head does not fit the task model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); retrain it with this version of mtlora"
            )

    def _add_lora(self, name: str, config: LoraConfig, state: dict[str, torch.Tensor], base_prefix: str) -> None:
        if not isinstance(config.target_modules, str):
            # Full module paths of the task model ("bert.encoder...") name the same layers in the bare encoder.
            config.target_modules = {m.removeprefix(base_prefix + ".") for m in config.target_modules}
        config.modules_to_save = None  # heads live apart, in `_Task.head`
        config.task_type = None
        config.inference_mode = True
        self._encoder = with_adapter(self._encoder, name, config)
        self._forget_folds()
        with undone_on_failure(lambda: self._drop_lora(name)):
            check_plain_lora(self._encoder, name)
            load_weights(self._encoder, name, state, name)
        if self.bf16:  # in the dtype of the linear weights they fold into, not cast again on every pass
            for layer in lora_layers(self._encoder):
                if name in layer.lora_A:
                    layer.lora_A[name].to(torch.bfloat16)
                    layer.lora_B[name].to(torch.bfloat16)
        self._encoder.eval()

    # ---- answering --------------------------------------------------------------------------------

    def predict(self, inputs: Input | list[Input], task: str | Sequence[str | None] | None = None,
                router: str | None = None) -> Prediction | list[Prediction]:
        """Answer one input (a text, a `(text, text_pair)` tuple, or a `{question, context}` dict) or a list.

        `task` names the adapter (one for all inputs, or one per input); without it the input is
        routed. A result holds the task that answered, how it was routed, and the kind's answer.
        """
        if isinstance(inputs, list):
            return self.predict_batch(inputs, task, router)
        return self.predict_batch([inputs], task if isinstance(task, str | None) else list(task), router)[0]

    def predict_batch(self, inputs: Sequence[Input], task: str | Sequence[str | None] | None = None,
                      router: str | None = None) -> list[Prediction]:
        if isinstance(task, str) and router is not None:
            raise InputError(NAMED_AND_ROUTED.format(task=task, router=router))
        tasks = [task] * len(inputs) if isinstance(task, str | None) else list(task)
        if len(tasks) != len(inputs):
            raise InputError(f"{len(inputs)} inputs but {len(tasks)} task names; give one per input or one for all")
        known, requests = self._known_tasks(), []
        for index, (item, name) in enumerate(zip(inputs, tasks, strict=True)):
            with naming_input(index, len(inputs)):
                requests.append(engine_request(item, name, known))
        with self._lock:
            routes = self.route(requests, router)
            return self._answer(requests, routes)

    def route(self, requests: Sequence[Request], router: str | None = None) -> list[Route]:
        """Where each request goes: its named task, else the router's choice among the tasks that fit."""
        with self._lock:
            candidates = [self._candidates(r) for r in requests]
            routes: list[Route | None] = [None] * len(requests)
            for i, request in enumerate(requests):
                if request.task is not None:
                    with naming_input(i, len(requests)):
                        routes[i] = self._explicit(request, candidates[i])
                    continue
                # A task may take only some texts of its shape (a multitask adapter: those with its tokens).
                candidates[i] = [name for name in candidates[i] if self._tasks[name].kind.routable(request.text)]
                if len(candidates[i]) == 1 and request.shape != "text":
                    # Two texts, or a question with its context, already say which kind of task the caller
                    # means. A plain text fits every text task, so its shape says nothing: the router still
                    # judges whether it belongs to the one text task loaded.
                    routes[i] = Route(candidates[i][0], "shape", 1.0, {candidates[i][0]: 1.0},
                                      f"the only task that takes {SHAPE_NAMES[request.shape]}")
                elif not candidates[i]:
                    routes[i] = Route(None, "shape", 0.0, reason=f"no loaded task takes {SHAPE_NAMES[request.shape]}")
            open_rows = [i for i, r in enumerate(routes) if r is None]
            if open_rows:
                chosen = self._router(router or self.default_router)
                decided = chosen.route([requests[i] for i in open_rows], [candidates[i] for i in open_rows])
                for i, route in zip(open_rows, decided, strict=True):
                    routes[i] = route
            return [r for r in routes if r is not None]

    def run_adapter(self, name: str, inputs: Sequence[Input]) -> list[Prediction]:
        """Answer `inputs` with adapter `name` directly (no routing); the learned router uses this."""
        known = self._known_tasks()
        requests = [engine_request(item, name, known) for item in inputs]
        with self._lock:
            return self._answer(requests, [Route(name, ExplicitRouter.name, 1.0) for _ in requests])

    def embed(self, texts: Sequence[str], reading: str = "encoder") -> torch.Tensor:
        """Mean-pooled, normalised embeddings of `texts`, (texts, hidden): of the backbone's last layer with
        every adapter off (`encoder`), or of its token embeddings, which no adapter changes (`embeddings`)."""
        if reading not in ("encoder", "embeddings"):
            raise InputError(f"reading '{reading}' is not one of: encoder, embeddings (router.features: cascade "
                             "reads one, then the other)")
        table = self._encoder.get_input_embeddings().weight
        if not texts:
            return torch.empty(0, table.shape[1] if reading == "embeddings" else self.hidden_size)
        if reading == "embeddings":
            with torch.inference_mode():
                return mean_token_embeddings(self.tokenizer, table, texts)
        tokens = self.tokenizer(list(texts), truncation=True, max_length=ROUTING_MAX_TOKENS)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        embeddings = torch.empty(len(texts), self.hidden_size)
        with self._lock, torch.inference_mode(), autocast(self.device, self.bf16):
            for rows in length_sorted_batches(lengths, self.batch_size):
                batch = pad_rows(self.tokenizer, [feature_row(tokens, i) for i in rows], self.device)
                with self._folded(NO_ADAPTER):
                    hidden = self._encoder_stack()(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                embeddings[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return embeddings

    def request(self, item: Input, task: str | None = None) -> Request:
        """An input as the routers see it: its text(s), its shape, and the task it names, if any. An empty
        text is refused here, before routing, whether or not a task is named."""
        return engine_request(item, task, self._known_tasks())

    # ---- internals --------------------------------------------------------------------------------

    def _known_tasks(self) -> KnownTasks:
        return KnownTasks({name: task.kind for name, task in self._tasks.items()}, self.registry,
                          self._project_tasks)

    def _candidates(self, request: Request) -> list[str]:
        return [name for name in self.tasks if self._tasks[name].kind.input_shape in ANSWERED_BY[request.shape]]

    def _explicit(self, request: Request, candidates: list[str]) -> Route:
        if request.task == ROUTER_ADAPTER:  # the learned router calls `run_adapter`, which routes nothing
            raise InputError(f"'{ROUTER_ADAPTER}' is the learned router's adapter, not a task to answer with; "
                             "to route an input, use router='learned' (CLI: --router learned)")
        task = self._task(request.task or "")
        if request.task not in candidates:
            wanted, given = SHAPE_NAMES[task.kind.input_shape], SHAPE_NAMES[request.shape]
            others = f", or name a task that takes {given}: {', '.join(candidates)}" if candidates else ""
            raise InputError(f"task '{request.task}' ({task.kind.name}) takes {wanted}, but {given} was given "
                             f"(give it {wanted}{others})")
        return Route(request.task, ExplicitRouter.name, 1.0, {request.task or "": 1.0})

    def _router(self, name: str) -> Router:
        if name not in self._routers:
            self._routers[name] = build_router(name, self, self.router_settings)
        return self._routers[name]

    def _answer(self, requests: Sequence[Request], routes: Sequence[Route]) -> list[Prediction]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, route in enumerate(routes):
            if route.task is not None:
                groups[route.task].append(i)
        jobs = [self._job(name, [requests[i] for i in rows]) for name, rows in groups.items()]
        self._forward([job for job in jobs if job.task not in self._seq2seq])
        self._seq2seq.run([job for job in jobs if job.task in self._seq2seq])
        results: list[Prediction] = [_unroutable(route) for route in routes]
        for job, rows in zip(jobs, groups.values(), strict=True):
            predictions = self._task(job.task).kind.decode(job.results, job.encoded, job.examples)
            for i, prediction in zip(rows, predictions, strict=True):
                route = routes[i]
                results[i] = {"task": job.task, "routed_by": route.router, "route_confidence": route.confidence,
                              **({"route_reason": route.reason} if route.reason else {}),
                              **({"route_reading": route.reading} if route.reading else {}), **prediction}
        return results

    def _job(self, name: str, requests: list[Request]) -> Job:
        task = self._task(name)
        examples = [task.kind.input_example(r.text, r.text_pair) for r in requests]
        manifest = task.manifest
        if isinstance(task.kind, Seq2SeqTask):
            return self._seq2seq.job(name, examples, manifest.max_length)
        encoded = task.kind.encode(self.tokenizer, examples, manifest.max_length, manifest.doc_stride,
                                   with_targets=False)
        return Job(name, examples, encoded)

    def _forward(self, jobs: list[Job]) -> None:
        """Every feature row of every job through the encoder, then each job's rows through its head."""
        rows = [(j, f) for j, job in enumerate(jobs) for f in range(len(job.encoded))]
        lengths = [jobs[j].lengths[f] for j, f in rows]
        with torch.inference_mode(), autocast(self.device, self.bf16):
            if self.mixed_batches:
                self._stacks = {}  # each layer's adapters stacked once for all of the call's passes
                try:
                    for batch in length_sorted_batches(lengths, self.batch_size):
                        self._run_batch(jobs, [rows[i] for i in batch])
                    return
                except SharedAcrossRows as shared:
                    logger.warning("%s feeds its adapted layers %s, which no row can adapt alone: from now on "
                                   "each adapter's rows run in passes of their own (mixed_batches: false)",
                                   self._encoder_stack().config.model_type, shared)
                    self.mixed_batches = False
                finally:
                    self._stacks = None
            for first, job in zip(_offsets(jobs), jobs, strict=True):
                with self._folded(job.task):
                    for batch in length_sorted_batches(job.lengths, self.batch_size):
                        self._run_batch(jobs, [rows[first + i] for i in batch])

    def _run_batch(self, jobs: list[Job], picked: list[tuple[int, int]]) -> None:
        """Feature rows (job, feature) padded into one encoder pass, then each job's rows through its head."""
        inputs = pad_rows(self.tokenizer, [feature_row(jobs[j].encoded.features, f) for j, f in picked], self.device)
        encoded = self._encode(inputs, [jobs[j].task for j, _ in picked])
        positions: dict[int, list[int]] = defaultdict(list)
        for position, (j, _) in enumerate(picked):
            positions[j].append(position)
        for j, where in positions.items():
            job, task = jobs[j], self._tasks[jobs[j].task]
            assert task.head is not None and task.stand_in is not None
            index = torch.tensor(where, device=self.device)
            task.stand_in.output = _rows(encoded, index)
            output = task.head(**{name: tensor[index] for name, tensor in inputs.items()})
            features = [picked[p][1] for p in where]
            store_outputs(task.kind, task.kind.outputs_of(output), features, job.lengths, job.results)
            task.stand_in.output = None

    def _encoder_stack(self) -> nn.Module:
        """The part of the backbone that reads the input: all of an encoder, the encoder of an encoder-decoder."""
        base = self._encoder.get_base_model() if isinstance(self._encoder, PeftModel) else self._encoder
        return base.get_encoder() if base.config.is_encoder_decoder else base

    def _encode(self, inputs: dict[str, torch.Tensor], adapters: list[str]) -> ModelOutput:
        if self._shift_right is not None and "decoder_input_ids" not in inputs:
            # T5's encoder kinds (T5ForSequenceClassification...) decode the input shifted right; T5Model,
            # unlike BartModel, does not make that decoder input itself.
            inputs = {**inputs, "decoder_input_ids": self._shift_right(inputs["input_ids"]), "use_cache": False}
        if isinstance(self._encoder, PeftModel) and len(set(adapters)) > 1:
            with mixed_lora(self._layers(), adapters, self._stacks):
                return self._encoder(**inputs)
        with self._folded(adapters[0]):  # NO_ADAPTER is in no layer: base weights
            return self._encoder(**inputs)

    @contextlib.contextmanager
    def _folded(self, adapter: str) -> Iterator[None]:
        """Within the block the encoder runs with `adapter`'s LoRA folded in (`folding.py`). Inside a block
        that already runs `adapter`, nothing more to do."""
        if not isinstance(self._encoder, PeftModel) or self._folded_adapter == adapter:
            yield
            return
        # Rows without an adapter (semantic routing) have nothing to fold: they take no place in the cache.
        if self._fold_cache and adapter != NO_ADAPTER:
            kept = self._fold_cache.folded(adapter)
        else:
            kept = {} if self._fold_per_block else None
        self._folded_adapter = adapter
        try:
            with folded_lora(self._layers(), adapter, kept, self._fold_min_tokens):
                yield
        finally:
            self._folded_adapter = None

    def _layers(self) -> list[LoraLinear]:
        if self._lora_layers is None:
            self._lora_layers = lora_layers(self._encoder)
        return self._lora_layers

    def _forget_folds(self) -> None:
        """Adapters came or went: the LoRA layers may have changed, and with them any folded weights."""
        self._lora_layers = None
        if self._fold_cache is not None:
            self._fold_cache.clear()


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
    """Where each job's feature rows start in the engine's flat list of rows."""
    starts, total = [], 0
    for job in jobs:
        starts.append(total)
        total += len(job.encoded)
    return starts


def _rows(output: ModelOutput, index: torch.Tensor) -> ModelOutput:
    return type(output)(**{k: v[index] for k, v in output.items() if isinstance(v, torch.Tensor)})


def _unroutable(route: Route) -> Prediction:
    return {"task": None, "routed_by": route.router, "route_confidence": route.confidence, "unroutable": True,
            "reason": route.reason, "scores": route.scores,
            **({"route_reading": route.reading} if route.reading else {})}
