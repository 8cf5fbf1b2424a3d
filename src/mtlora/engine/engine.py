"""One backbone in memory, many task adapters, and mixed-task batches in one call: the `Engine`.

The engine loads and unloads adapters, reads and routes inputs, and hands each task's rows to the half
that holds its adapter: encoder kinds share one encoder and run their rows in shared passes
(`encoder.py`); seq2seq kinds share one encoder-decoder of their own (`seq2seq.py`). Both answer in
the same call. Reading an input is `inputs.py`'s.

    >>> engine = Engine.from_config("examples/demo/mtlora.yaml")
    >>> engine.predict("my parcel never arrived")            # routed (semantic by default)
    >>> engine.predict_batch(["great film", ("a", "b")], task=["sentiment", "paraphrase"])
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from mtlora.backbone import default_device, load_tokenizer, use_bf16
from mtlora.batching import autocast, feature_row, length_sorted_batches, pad_rows, pass_cost_tokens
from mtlora.config import ROUTER_ADAPTER, Precision, ProjectConfig, RouterSettings, checked_inference, load_config
from mtlora.engine.encoder import EncoderAdapters
from mtlora.engine.inputs import NAMED_AND_ROUTED, Input, KnownTasks, engine_request, naming_input, wrong_shape
from mtlora.engine.job import Job
from mtlora.engine.seq2seq import Seq2SeqAdapters
from mtlora.errors import AdapterNotFoundError, InputError, RegistryError, UnknownTaskError
from mtlora.modeling import check_base, export_merged, kind_from_manifest
from mtlora.registry import Manifest, Registry
from mtlora.routing import LearnedRouter, Request, Route, Router, build_router, router_class
from mtlora.routing.base import ANSWERED_BY, BY_SHAPE, SHAPE_NAMES
from mtlora.routing.explicit import ExplicitRouter
from mtlora.routing.token_head import ROUTING_MAX_TOKENS, mean_token_embeddings
from mtlora.tasks import Prediction, TaskKind
from mtlora.tasks.seq2seq import Seq2SeqTask


@dataclass
class _Task:
    manifest: Manifest
    kind: TaskKind  # its LoRA (and head) live in `Engine._encoders` or, for seq2seq kinds, `Engine._seq2seq`


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
            "auto": shared passes unless `fold_cache` is set.
        fold_cache: adapters whose folded weights stay in memory between calls (per-adapter passes only).
        cuda_graphs: on CUDA, an encoder's shared passes run as CUDA graphs (`engine/graphs.py`).
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
        cuda_graphs: bool = True,
        routing_hints: Mapping[str, Mapping[str, Any]] | None = None,
        project_tasks: Sequence[str] = (),
    ):
        # The project file checks these; a caller in Python gets the same answer, not a silent default.
        inference = checked_inference(precision=precision, batch_size=batch_size, mixed_batches=mixed_batches,
                                      fold_cache=fold_cache, cuda_graphs=cuda_graphs)
        self.backbone = backbone
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.device = torch.device(device) if device is not None else default_device()
        self.bf16 = use_bf16(inference.precision, self.device, backbone)
        self.batch_size = inference.batch_size
        self.tokenizer = load_tokenizer(backbone)
        self.router_settings = router_settings or RouterSettings()
        self.default_router = router_class(router or self.router_settings.strategy).name  # a typo fails here
        self._routing_hints = dict(routing_hints or {})
        self._project_tasks = frozenset(project_tasks)
        self._routers: dict[str, Router] = {}
        # What a router computed from the saved adapters, by router: it outlives the rebuilds that a change
        # of tasks makes, each entry naming the save it was computed from (`SemanticRouter`'s banks).
        self.router_memo: dict[str, Any] = {}
        self._tasks: dict[str, _Task] = {}
        self._encoders = EncoderAdapters(backbone, self.tokenizer, self.device, self.bf16, self.batch_size,
                                         inference.mixed_batches, inference.fold_cache, inference.cuda_graphs)
        self.hidden_size = self._encoders.hidden_size
        self._seq2seq = Seq2SeqAdapters(backbone, self.device, self.bf16, self.batch_size)
        # One call at a time: the heads' stand-ins hold per-call state, and one batched pass already
        # uses every core. Concurrent callers queue here; the server batches them into one call.
        self._lock = threading.RLock()
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
    def mixed_batches(self) -> bool:
        """Whether a call's encoder rows share passes, each with its own LoRA, or run per adapter, folded."""
        return self._encoders.mixed_batches

    @property
    def tasks(self) -> list[str]:
        """The task adapters loaded (the learned router is not one of them)."""
        # From a snapshot, taken whole under the GIL: callers read it without the lock (a server's event loop
        # must not wait out an engine call), while an admin's `remove` may delete from it in another thread.
        return [name for name in list(self._tasks) if name != ROUTER_ADAPTER]

    def manifest(self, task: str) -> Manifest:
        return self._task(task).manifest

    def manifests(self) -> dict[str, Manifest]:
        """Each loaded task's manifest by name, from one snapshot as `tasks` (a task listed and then removed
        in another thread before its manifest was asked for would be an unknown task)."""
        return {name: task.manifest for name, task in dict(self._tasks).items() if name != ROUTER_ADAPTER}

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
            self._unload(name)
            try:
                put_in()
            except BaseException:
                del self._tasks[name]
                raise
            self._tasks[name] = task

    def reload_router(self) -> None:
        """Read the learned router again from the registry, once `mtlora train-router` has retrained it: its
        adapter in place (as `reload` reads a task's) and its head. Without this, a router built once kept
        its adapter for the engine's life (`add` of a loaded adapter does nothing), and paired it with the
        new head whenever a change of tasks rebuilt it. Built at once, so that whoever reloads it is told of a
        router that is damaged, or was never trained."""
        with self._lock:
            if ROUTER_ADAPTER in self._tasks:
                self.reload(ROUTER_ADAPTER)
            self._routers.pop(LearnedRouter.name, None)
            self.router(LearnedRouter.name)

    def _prepared(self, name: str) -> tuple[_Task, Callable[[], None]]:
        """Adapter `name` read, checked and its head built, with the engine as it was; and the step that
        puts its LoRA into the shared model."""
        if name not in self.registry:  # the registry would list the learned router among the tasks
            raise AdapterNotFoundError(str(self.registry.root), name,
                                       [other for other in self.registry.names() if other != ROUTER_ADAPTER])
        manifest = self.registry.verified(name)
        check_base(manifest, self.backbone)
        kind = kind_from_manifest(manifest)
        kind.check_tokenizer(self.tokenizer, f"tasks.{name}")
        if isinstance(kind, Seq2SeqTask):
            put_in = self._seq2seq.prepared(self.registry, name, kind)
        else:
            put_in = self._encoders.prepared(self.registry, name, kind, manifest)
        # The files were checked, then read: a save in between (a retrain finishing) would pair this
        # manifest with another adapter's weights. Each save writes a new creation time.
        if self.registry.manifest(name).created_at != manifest.created_at:
            raise RegistryError(f"adapter '{name}' was saved again while it was being loaded; load it again")
        return _Task(manifest, kind), put_in

    def remove(self, name: str) -> None:
        """Unload adapter `name`; the other adapters and the backbone stay as they are."""
        with self._lock:
            self._task(name)  # an unknown name is refused, listing the loaded tasks
            del self._tasks[name]
            self._unload(name)
            self._seq2seq.release_if_unused()

    def _unload(self, name: str) -> None:
        self._routers.clear()  # routers hold the task list they were built for
        self._half(name).remove(name)

    def merge(self, name: str, folder: str | Path, overwrite: bool = False) -> Path:
        """Write task `name` as a plain transformers model with its LoRA merged in (`export_merged`)."""
        return export_merged(self.registry, self.backbone, name, folder, overwrite)

    def _task(self, name: str) -> _Task:
        if (task := self._tasks.get(name)) is None:  # one read: a `remove` may run between two
            raise UnknownTaskError("task", name, self.tasks, where=" loaded in the engine")
        return task

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

    def route(self, requests: Sequence[Request | Input], router: str | None = None) -> list[Route]:
        """Where each request goes: its named task, else the router's choice among the tasks that fit.
        Inputs are taken as `predict` takes them, or as `request` made them."""
        asked = [self._as_request(item, i, len(requests)) for i, item in enumerate(requests)]
        with self._lock:
            candidates = [self._candidates(r) for r in asked]
            routes: list[Route | None] = [None] * len(asked)
            for i, request in enumerate(asked):
                if request.task is not None:
                    with naming_input(i, len(asked)):
                        routes[i] = self._explicit(request, candidates[i])
                    continue
                # A task may take only some texts of its shape (a multitask adapter: those with its tokens).
                candidates[i] = [name for name in candidates[i] if self._tasks[name].kind.routable(request.text)]
                if (marked := self._marked_by_token(request.text, candidates[i])) is not None:
                    routes[i] = marked
                    continue
                if len(candidates[i]) == 1 and request.shape != "text":
                    # Two texts, or a question with its context, already say which kind of task the caller
                    # means. A plain text fits every text task, so its shape says nothing: the router still
                    # judges whether it belongs to the one text task loaded.
                    routes[i] = Route(candidates[i][0], BY_SHAPE, 1.0, {candidates[i][0]: 1.0},
                                      f"the only task that takes {SHAPE_NAMES[request.shape]}")
                elif not candidates[i]:
                    routes[i] = Route(None, BY_SHAPE, 0.0, reason=f"no loaded task takes {SHAPE_NAMES[request.shape]}")
            open_rows = [i for i, r in enumerate(routes) if r is None]
            if open_rows:
                chosen = self.router(router or self.default_router)
                decided = chosen.route([asked[i] for i in open_rows], [candidates[i] for i in open_rows])
                for i, route in zip(open_rows, decided, strict=True):
                    routes[i] = route
            return [r for r in routes if r is not None]

    def run_adapter(self, name: str, inputs: Sequence[Input]) -> list[Prediction]:
        """Answer `inputs` with adapter `name` directly (no routing); the learned router uses this."""
        known = self._known_tasks()
        requests = [engine_request(item, name, known) for item in inputs]
        with self._lock:
            return self._answer(requests, [ExplicitRouter.named(name) for _ in requests])

    def embed(self, texts: Sequence[str], reading: str = "encoder") -> torch.Tensor:
        """Mean-pooled, normalised embeddings of `texts`, (texts, hidden): of the backbone's last layer with
        every adapter off (`encoder`), or of its token embeddings, which no adapter changes (`embeddings`)."""
        if reading not in ("encoder", "embeddings"):
            raise InputError(f"reading '{reading}' is not one of: encoder, embeddings (router.features: cascade "
                             "reads one, then the other)")
        table = self._encoders.model.get_input_embeddings().weight  # type: ignore[operator]  # a transformers model
        if not texts:
            return torch.empty(0, table.shape[1] if reading == "embeddings" else self.hidden_size)
        if reading == "embeddings":
            with torch.inference_mode():
                return mean_token_embeddings(self.tokenizer, table, texts)
        tokens = self.tokenizer(list(texts), truncation=True, max_length=ROUTING_MAX_TOKENS)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        embeddings = torch.empty(len(texts), self.hidden_size)
        with self._lock, torch.inference_mode(), autocast(self.device, self.bf16):
            for rows in length_sorted_batches(lengths, self.batch_size, pass_cost_tokens(self.device)):
                batch = pad_rows(self.tokenizer, [feature_row(tokens, i) for i in rows], self.device)
                hidden = self._encoders.bare_hidden_states(batch).float()
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
        return KnownTasks({name: task.kind for name, task in dict(self._tasks).items()}, self.registry,  # as `tasks`
                          self._project_tasks)

    def _as_request(self, item: Request | Input, index: int, count: int) -> Request:
        if isinstance(item, Request):
            return item
        with naming_input(index, count):
            return self.request(item)

    def _candidates(self, request: Request) -> list[str]:
        return [name for name in self.tasks if self._tasks[name].kind.input_shape in ANSWERED_BY[request.shape]]

    def _marked_by_token(self, text: str, candidates: list[str]) -> Route | None:
        """A text that starts with a task token (`<mcq>`) goes to the adapter whose token it is, as a
        `<task>` prefix would: the task's own adapter before a multitask adapter that also reads it."""
        marked = [name for name in candidates if self._tasks[name].kind.starts_with_own_token(text)]
        own = [name for name in marked if not self._tasks[name].kind.mixes_tasks] or marked
        if len(own) != 1:
            return None  # no token, or one several adapters of the same standing read: the router judges
        return replace(ExplicitRouter.named(own[0]), reason="the text starts with its task token")

    def _explicit(self, request: Request, candidates: list[str]) -> Route:
        if request.task == ROUTER_ADAPTER:  # the learned router calls `run_adapter`, which routes nothing
            raise InputError(f"'{ROUTER_ADAPTER}' is the learned router's adapter, not a task to answer with; "
                             "to route an input, use router='learned' (CLI: --router learned)")
        task = self._task(request.task or "")
        if request.task not in candidates:
            raise wrong_shape(request.task or "", task.kind, request.shape, candidates)
        return ExplicitRouter.named(request.task or "")

    def router(self, name: str) -> Router:
        """Router `name`, built for the adapters loaded now (and kept until they change)."""
        if name not in self._routers:
            self._routers[name] = build_router(name, self, self.router_settings)
        return self._routers[name]

    def _answer(self, requests: Sequence[Request], routes: Sequence[Route]) -> list[Prediction]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, route in enumerate(routes):
            if route.task is not None:
                groups[route.task].append(i)
        jobs = [self._job(name, [requests[i] for i in rows]) for name, rows in groups.items()]
        self._encoders.run([job for job in jobs if job.task in self._encoders])
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
        if name in self._seq2seq:
            return self._seq2seq.job(name, examples, manifest.max_length)
        return self._encoders.job(name, examples, manifest.max_length, manifest.doc_stride)

    def _half(self, name: str) -> EncoderAdapters | Seq2SeqAdapters:
        """The half of the engine that holds adapter `name`."""
        return self._seq2seq if name in self._seq2seq else self._encoders


def _unroutable(route: Route) -> Prediction:
    return {"task": None, "routed_by": route.router, "route_confidence": route.confidence, "unroutable": True,
            "reason": route.reason, "scores": route.scores,
            **({"route_reading": route.reading} if route.reading else {})}
