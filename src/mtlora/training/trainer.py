"""Training one task with the Hugging Face Trainer: LoRA adapter, head-only baseline, or full fine-tuning.

The Trainer brings checkpointing, resumption (with RNG and data-order state), bf16 autocast, progress
bars, and multi-GPU through `accelerate launch` / `torchrun` with no change here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import datasets
from torch import nn
from transformers import (
    AutoConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

import mtlora
from mtlora import atomic
from mtlora.backbone import (
    default_device,
    load_tokenizer,
    no_save_progress_bars,
    readable_tokens,
    resolve_backbone,
    use_bf16,
)
from mtlora.config import ProjectConfig, TaskConfig, TrainSettings
from mtlora.data import TaskData, load_task_data
from mtlora.errors import ConfigError, DataError, MtloraError, TaskProblems, TrainingInterrupted
from mtlora.modeling import (
    BASELINE_FILE,
    BASELINE_RECORD,
    Method,
    TaskModel,
    build_task_model,
    count_trainable,
    save_baseline,
)
from mtlora.registry import Manifest, ParameterCounts, Registry, share_of
from mtlora.registry.store import sha256_file
from mtlora.tasks import Example
from mtlora.tasks.base import INPUT_ROLES, Encoded
from mtlora.training.callbacks import LossRecord, RunClock, StopOnSignal, ThisRunsCadence, whole_run_loss
from mtlora.training.runs import RUN_MARKER, prepare_run_dir, resume_point, run_signature, signature_in
from mtlora.training.sampler import ShuffledLengthBatches
from mtlora.training.saved_rank import RankTruncation, check_truncatable, truncate_rank

EXAMPLE_INPUTS_KEPT = 64
EXAMPLE_CHARS_KEPT = 500


@dataclass
class TrainOutcome:
    task: str
    method: Method | Literal["token_head"]  # token_head: the router's linear head over token embeddings
    trainable: int
    total: int
    time_s: float
    steps: int
    samples_per_s: float
    train_loss: float
    resumed_from: str | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)
    saved_to: Path | None = None
    truncation: RankTruncation | None = None  # the adapter was saved at a lower rank than it trained at
    warning: str | None = None  # e.g. the loss went back up: the stored model may be no better than chance
    data_signature: str = ""  # of the training examples (`TaskData.train_signature`)
    run_signature: str = ""  # of everything that decides the result (`runs.run_signature`)
    kept: bool = False  # not trained: the stored result was up to date (`stored_result`)
    processes: int = 1  # that trained it together (torchrun / accelerate launch), each on batch_size rows


@dataclass
class _Run:
    """What one training run works on, made ready before its Trainer exists."""

    data: TaskData
    data_signature: str  # of the training examples (`TaskData.train_signature`)
    tokenizer: PreTrainedTokenizerBase
    built: TaskModel
    encoded: Encoded
    train_set: datasets.Dataset
    saved_rank: int | None


def train_task(
    project: ProjectConfig,
    task: TaskConfig,
    method: Method = "lora",
    *,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    keep: bool = False,
    data: TaskData | None = None,
) -> TrainOutcome:
    """Train `task` with `method` and store the result.

    `lora` goes to the registry as a PEFT adapter with its manifest; `head_only` is stored as the task's
    baseline; `full` is returned in memory only (benchmarks compare against it).
    A run interrupted by Ctrl-C or a crash resumes from its latest checkpoint when called again,
    unless `fresh` is set or the settings changed. With `keep` (and not `fresh`), a stored result that
    is up to date (`stored_result`) is returned instead of training: run again after an interruption, a
    training trains only what it had not stored yet. `data`: the task's data, read already.
    """
    # Every declared split is read, though training uses one: a bad validation or test file fails now,
    # not at `evaluate` after the training it would have voided (and so when the result is kept, too).
    data = load_task_data(project, task) if data is None else data
    if keep and not fresh and (kept := _kept(project, task, method, data, log)):
        return kept
    registry = Registry(project.registry)
    run = _set_up(project, task, method, data)
    run_dir = registry.run_path(task.name, method)
    # A mixture's data holds every epoch of the run already.
    settings = task.training.model_copy(update={"epochs": 1.0}) if data.epochs_drawn else task.training
    args = _training_arguments(settings, method, run_dir, progress, project.backbone)
    # Under `accelerate launch` / `torchrun` every process runs this function: only the first one
    # touches the run folder, the registry and the console; the others wait for it.
    main_process = args.process_index == 0
    log = log if main_process else _silent
    _warn_of_cut_texts(task, run, log)
    signature = run_signature(project, task, method, run.data_signature, args.bf16, args.world_size)
    with args.main_process_first(local=False):
        if main_process:
            prepare_run_dir(run_dir, signature, fresh, log)
    outcome = _fit(task, method, run, args, run_dir, progress, log)
    outcome.run_signature = signature
    if main_process:
        _store(registry, project, task, run, outcome, log)
        _remove_run_dir(run_dir)
    args.distributed_state.wait_for_everyone()
    return outcome


def _kept(project: ProjectConfig, task: TaskConfig, method: Method, data: TaskData,
          log: Callable[[str], None]) -> TrainOutcome | None:
    """The result the registry holds, when it is up to date (`stored_result`), said once."""
    kept = stored_result(project, task, method, data)
    if kept is not None and int(os.environ.get("RANK", "0")) == 0:  # under torchrun: the first process
        log(f"[{task.name}] {method} is up to date (trained with these settings and training data); kept. "
            "--fresh trains it again")
        registry = Registry(project.registry)
        if method == "lora":
            _take_routing_hints(registry, task)
        # What a run left there (no checkpoint, or one of other settings: neither is resumed) is of no use.
        _remove_run_dir(registry.run_path(task.name, method))
    return kept


def _take_routing_hints(registry: Registry, task: TaskConfig) -> None:
    """A kept adapter's manifest takes the task's routing hints, which change no training step (so they
    did not stop it being kept) but route for an engine built from the registry alone."""
    hints = task.routing.model_dump(mode="json")
    if registry.manifest(task.name).routing != hints:
        registry.update(task.name, routing=hints)


def _set_up(project: ProjectConfig, task: TaskConfig, method: Method, data: TaskData) -> _Run:
    """The task's tokenizer and model, and its training examples encoded."""
    data_signature = data.train_signature()
    kind = data.kind
    tokenizer = kind.prepare_tokenizer(load_tokenizer(project.backbone))
    built = build_task_model(project.backbone, kind, method, task.lora, task.training.seed, tokenizer)
    check_max_length(task, project.backbone, cast(PretrainedConfig, built.model.config))
    saved_rank = kind.saved_rank if task.lora.saved_rank == "auto" else task.lora.saved_rank
    if method == "lora":
        check_truncatable(built.model, saved_rank)  # type: ignore[arg-type]  # before hours of training
    settings = task.training
    encoded = kind.encode(tokenizer, data.train, settings.max_length, settings.doc_stride, with_targets=True)
    return _Run(data=data, data_signature=data_signature, tokenizer=tokenizer, built=built, encoded=encoded,
                train_set=datasets.Dataset.from_dict(encoded.features), saved_rank=saved_rank)


def ready_data(project: ProjectConfig, tasks: Sequence[TaskConfig]) -> dict[str, TaskData]:
    """Every task's data, read and checked against the backbone before the first task trains: a wrong
    path, column or setting in the last task would otherwise surface after hours spent on the others. The
    problems of every task are reported together (`TaskProblems`), where a run would meet one at a time."""
    backbone = AutoConfig.from_pretrained(resolve_backbone(project.backbone))
    data: dict[str, TaskData] = {}
    problems: dict[str, MtloraError] = {}
    for task in tasks:
        try:
            check_max_length(task, project.backbone, backbone)
            use_bf16(task.training.precision, default_device(), project.backbone)  # refuses what cannot run
            data[task.name] = load_task_data(project, task)
            kind = data[task.name].kind
            kind.check_tokenizer(kind.prepare_tokenizer(load_tokenizer(project.backbone)), f"tasks.{task.name}")
        except (ConfigError, DataError) as problem:
            # A multitask adapter meets its parts' problems again, which their own tasks already name.
            if str(problem) not in map(str, problems.values()):
                problems[task.name] = problem
    if len(problems) == 1:
        raise next(iter(problems.values()))
    if problems:
        raise TaskProblems(problems)
    return data


def check_max_length(task: TaskConfig, backbone: str, config: PretrainedConfig) -> None:
    """Refuse a `training.max_length` longer than the backbone reads: training and inference would
    fail on the first input that long (a tensor size mismatch deep in the model), or never meet one
    in training and fail when serving."""
    limit = readable_tokens(config)
    if limit is not None and task.training.max_length > limit:
        raise ConfigError(f"tasks.{task.name}.training.max_length", [
            f"{task.training.max_length} tokens, but backbone '{backbone}' reads at most {limit} (its position "
            f"embeddings); set max_length: {limit} or less (extractive QA windows longer contexts)"])
    decoder = getattr(config, "decoder", None)  # an encoder-decoder warm-started from an encoder: BERT's positions
    if task.seq2seq is None or not isinstance(decoder, PretrainedConfig) or not (limit := readable_tokens(decoder)):
        return
    # The decoder reads a start token before the target, or before each token it writes.
    for setting, tokens in (("max_target_length", task.seq2seq.max_target_length),
                            ("decoding.max_new_tokens", task.seq2seq.decoding.max_new_tokens)):
        if tokens + 1 > limit:
            raise ConfigError(f"tasks.{task.name}.seq2seq.{setting}", [
                f"{tokens} tokens, but the decoder of backbone '{backbone}' reads at most {limit}, its start token "
                f"included; set {setting.split('.')[-1]}: {limit - 1} or less"])


def _warn_of_cut_texts(task: TaskConfig, run: _Run, log: Callable[[str], None]) -> None:
    if cut := sum(run.encoded.truncated):  # e.g. a long prompt can leave no room for the message itself
        total, max_length = len(run.data.train), task.training.max_length
        log(f"[{task.name}] {cut} of {total} training inputs ({cut / total:.1%}) run "
            f"past max_length {max_length} tokens and are cut to it; raise training.max_length to keep them whole")
    if cut := sum(run.encoded.targets_cut):  # the adapter then learns to stop where the cut is
        total = len(run.encoded.targets_cut)
        log(f"[{task.name}] {cut} of {total} training targets ({cut / total:.1%}) run past "
            "seq2seq.max_target_length tokens and are cut to it; raise it to keep them whole")


def _fit(task: TaskConfig, method: Method, run: _Run, args: TrainingArguments, run_dir: Path, progress: bool,
         log: Callable[[str], None]) -> TrainOutcome:
    """Train from the run folder's latest checkpoint, if any. Ctrl-C saves a checkpoint and raises
    `TrainingInterrupted`."""
    resume = resume_point(run_dir)
    stopper, clock = StopOnSignal(), RunClock(resume)
    trainer = _trainer(run, args, [stopper, clock, ThisRunsCadence(), LossRecord()], progress)
    drawn = f" (the mix of {run.data.epochs_drawn:g} epochs, in one pass)" if run.data.epochs_drawn else ""
    log(f"[{task.name}] training {method}: {len(run.data.train)} examples{drawn}, "
        f"{_describe_parameters(run.built)}, precision {'bf16' if args.bf16 else 'fp32'}{_describe_batch(args)}")
    with stopper.installed(), no_save_progress_bars(), ThisRunsCadence.unwarned():
        try:
            result = trainer.train(resume_from_checkpoint=resume)
        except BaseException as error:  # a second Ctrl-C, a peer gone, any failure
            _drop_distributed_wrapper(trainer, error)
            raise
        _drop_distributed_wrapper(trainer)
    if stopper.requested:
        raise TrainingInterrupted(
            f"[{task.name}] interrupted at step {trainer.state.global_step}; checkpoint saved in {run_dir}. "
            "Run the same command again, without --fresh (fresh=True in Python), to resume."
        )
    outcome = _outcome(task, method, run, trainer, result.metrics, clock, resume)
    if outcome.warning:
        log(f"[{task.name}] warning: {outcome.warning}")
    return outcome


def _drop_distributed_wrapper(trainer: Trainer, error: BaseException | None = None) -> None:
    """Let go of the DistributedDataParallel wrapper a torchrun process trains through, while the process
    group is open. Freed later, with the traceback of a stopped or failed run after the command closed the
    group (`cli.leave_process_group`), its reducer would drop the group's last reference and destroy it
    holding the GIL, joining gloo's threads, one of which may be waiting for the GIL to free a finished
    collective's tensors: the process would hang at exit (1 interrupted two-process run in 20 here)."""
    if trainer.args.world_size > 1:
        if error is not None:
            traceback.clear_frames(error.__traceback__)  # Trainer.train's frames hold the wrapper as a local
        trainer.model_wrapped = trainer.model  # type: ignore[assignment]  # set: the run trained it
        trainer.accelerator.free_memory()  # its references to the wrapper, and a collection for any cycle


def _trainer(run: _Run, args: TrainingArguments, callbacks: list[TrainerCallback], progress: bool) -> Trainer:
    trainer = _LengthBatchedTrainer(
        [len(ids) for ids in run.encoded.features["input_ids"]],
        model=run.built.model,
        args=args,
        train_dataset=run.train_set,
        data_collator=run.data.kind.collator(run.tokenizer, run.built.model),
        # Under DataParallel (several GPUs, one process) the Trainer multiplies a `compute_loss_func` loss by the
        # number of GPUs, meant for losses each replica computed, where this one reads the gathered logits.
        compute_loss_func=run.data.kind.loss_func() if args.n_gpu <= 1 else None,
        callbacks=callbacks,
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer


def _outcome(task: TaskConfig, method: Method, run: _Run, trainer: Trainer, metrics: dict[str, float],
             clock: RunClock, resume: str | None) -> TrainOutcome:
    """The finished run's record, with its model in eval mode."""
    # transformers types every logged value as a float; "step" is an int.
    logged = cast(list[dict[str, Any]], [entry for entry in trainer.state.log_history if "loss" in entry])
    losses = [(entry["step"], entry["loss"]) for entry in logged]
    # A log of fewer steps than the cadence (the last step's, the first after a resume) is too noisy to judge by.
    full = [(entry["step"], entry["loss"]) for entry in logged
            if entry.get(LossRecord.STEPS, task.training.log_every) >= task.training.log_every]
    run.built.model.eval()
    trainable, total = count_trainable(run.built.model), run.built.base_parameters
    return TrainOutcome(
        task=task.name,
        method=method,
        trainable=trainable,
        total=total,
        time_s=clock.elapsed(),
        steps=trainer.state.global_step,
        samples_per_s=float(metrics.get("train_samples_per_second", 0.0)),
        train_loss=whole_run_loss(logged, unlogged=float(metrics.get("train_loss", float("nan")))),
        resumed_from=resume,
        losses=losses,
        model=run.built.model,
        warning=loss_warning(full),
        data_signature=run.data_signature,
        processes=trainer.args.world_size,
    )


def _describe_batch(args: TrainingArguments) -> str:
    """The rows of one optimizer step, where it is not `batch_size` alone."""
    if args.gradient_accumulation_steps == 1 and args.world_size == 1:
        return ""
    parts = [f"batch_size {args.per_device_train_batch_size}"]
    if args.gradient_accumulation_steps > 1:
        parts.append(f"grad_accum {args.gradient_accumulation_steps}")
    if args.world_size > 1:
        parts.append(f"{args.world_size} processes")
    rows = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return f", {rows} rows a step ({' x '.join(parts)})"


def _remove_run_dir(run_dir: Path) -> None:
    """The run's checkpoints, of no more use once its result is stored, and the folders that leaves empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    atomic.remove_empty(run_dir.parent, run_dir.parent.parent)  # the task's runs, then `.runs`


def _training_arguments(settings: TrainSettings, method: str, run_dir: Path, progress: bool,
                        backbone: str) -> TrainingArguments:
    device = default_device()
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.lr_for(method),
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # transformers 5 reads a value below 1 as a share of all steps
        lr_scheduler_type="linear",
        bf16=use_bf16(settings.precision, device, backbone),
        use_cpu=device.type == "cpu",  # transformers refuses bf16 on CPU unless told it is the CPU on purpose
        seed=settings.seed,
        data_seed=settings.seed,
        save_strategy="steps",
        save_steps=settings.checkpoint_every,
        save_total_limit=2,
        logging_steps=settings.log_every,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
    )


def _store(registry: Registry, project: ProjectConfig, task: TaskConfig, run: _Run, outcome: TrainOutcome,
           log: Callable[[str], None]) -> None:
    """A LoRA adapter goes to the registry (cut to the saved rank), a head-only model to the task's
    baseline; a full fine-tune is kept in memory only."""
    if outcome.method == "lora":
        outcome.truncation = truncate_rank(run.built.model, run.saved_rank)  # type: ignore[arg-type]
        if outcome.truncation:
            log(f"[{task.name}] {outcome.truncation.describe()}")
        outcome.saved_to = _save_adapter(registry, project, task, run.built, outcome, run.data.train, run.tokenizer)
    elif outcome.method == "head_only":
        outcome.saved_to = _save_head_baseline(registry, project, task, run.built, outcome)


def loss_warning(losses: list[tuple[int, float]]) -> str | None:
    """Say so when the training loss shows the saved adapter is likely no better than its untrained
    start: the loss fell and then climbed back to where it started (the run diverged), or, over a run
    long enough to tell, it never fell (the steps are too noisy or too large to learn from)."""
    if len(losses) < 4:
        return None
    first, lowest, last = losses[0][1], min(loss for _, loss in losses), losses[-1][1]
    if lowest < 0.7 * first and last > 0.9 * first:
        return (f"the loss fell to {lowest:.3f} and then rose back to {last:.3f} (it started at {first:.3f}): "
                "training diverged. Lower training.lr or raise training.batch_size, then train with --fresh")
    quarter = len(losses) // 4
    if quarter >= 2:
        start = sum(loss for _, loss in losses[:quarter]) / quarter
        end = sum(loss for _, loss in losses[-quarter:]) / quarter
        if end > 0.95 * start:
            return (f"the loss did not fall ({start:.3f} over the first quarter of the run, {end:.3f} over the "
                    "last): the adapter has likely learned nothing. Lower training.lr or raise "
                    "training.batch_size (or train longer), then train with --fresh")
    return None


def _silent(message: str) -> None:
    del message


def _describe_parameters(built: TaskModel) -> str:
    trainable, total = count_trainable(built.model), built.base_parameters
    return f"{trainable:,} trainable parameters, {share_of(trainable, total)} of the {total:,} full fine-tuning trains"


def stored_result(project: ProjectConfig, task: TaskConfig, method: Method,
                  data: TaskData | None = None) -> TrainOutcome | None:
    """The result of training `task` with `method` that the registry holds, when training it again would
    give the same (training is seeded): its run signature (`runs.run_signature`) is the one the task would
    train with now, and no later run of it was interrupted (that one resumes instead). None otherwise, or
    when its files do not check out. `data`: the task's data, when the caller has read it already."""
    registry = Registry(project.registry)
    try:
        if method == "lora":
            manifest = registry.verified(task.name)
            record, trainable, total = manifest.training, manifest.parameters.trainable, manifest.parameters.total
            saved_to = registry.path(task.name)
        elif method == "head_only":
            saved_to = registry.baseline_path(task.name)
            record = json.loads((saved_to / BASELINE_RECORD).read_text(encoding="utf-8"))
            trainable, total = record["trainable"], record["total"]
            if sha256_file(saved_to / BASELINE_FILE) != record.get("weights_sha256"):
                return None
        else:
            return None
    except (MtloraError, OSError, ValueError, KeyError, TypeError):
        return None
    if not record.get("run_signature") or record.get("method") != method:
        return None
    data_signature = (load_task_data(project, task) if data is None else data).train_signature()
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # as the Trainer will count them
    bf16 = use_bf16(task.training.precision, default_device(), project.backbone)
    try:
        signature = run_signature(project, task, method, data_signature, bf16, processes)
    except OSError:  # a hub backbone whose files are not in the local cache yet: training fetches them
        return None
    run_dir = registry.run_path(task.name, method)
    if record["run_signature"] != signature or (signature_in(run_dir / RUN_MARKER) == signature
                                                and get_last_checkpoint(str(run_dir))):
        return None
    return TrainOutcome(task=task.name, method=method, trainable=trainable, total=total, time_s=record["time_s"],
                        steps=record["steps"], samples_per_s=record["samples_per_s"], train_loss=record["train_loss"],
                        resumed_from=None, losses=[tuple(point) for point in record["losses"]], saved_to=saved_to,
                        warning=record["warning"], data_signature=data_signature, run_signature=record["run_signature"],
                        kept=True, processes=record.get("processes", processes))


class _LengthBatchedTrainer(Trainer):
    """The HF Trainer with batches of similar length in random order (see `sampler.py`)."""

    def __init__(self, lengths: list[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.lengths = lengths
        # The Trainer takes a model whose forward has **kwargs (every transformers 5 head) to normalise its
        # loss by `num_items_in_batch`, and then neither divides it by the gradient accumulation steps nor
        # leaves it alone across processes (it multiplies it by their number). The heads mtlora trains
        # (sequence classification, QA, T5, BART, encoder-decoder) ignore `num_items_in_batch` and return a
        # mean: with grad_accum: k each step's gradient, and every logged loss, came out k times too large
        # (and clipping at max_grad_norm bit k times as often). Told so, the Trainer averages the micro-batches,
        # the step's mean over rows. A kind whose rows have targets of many tokens (seq2seq) gives a `loss_func`
        # instead, which the Trainer hands the step's target token count.
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset: Any = None) -> ShuffledLengthBatches:
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return ShuffledLengthBatches(self.lengths, batch, seed=self.args.data_seed or self.args.seed)


def _save_adapter(registry: Registry, project: ProjectConfig, task: TaskConfig, built: TaskModel,
                  outcome: TrainOutcome, train: list[Example], tokenizer: PreTrainedTokenizerBase) -> Path:
    """The PEFT adapter and its manifest; plus the tokenizer when the task added tokens to it."""
    kind = built.kind
    manifest = Manifest(
        name=task.name,
        kind=task.kind,
        labels=kind.labels,
        fields=kind.fields,
        label_map=kind.label_map,
        kind_options=kind.options,
        base_model=project.backbone,
        base_fingerprint=built.fingerprint,
        model_kwargs=kind.model_kwargs(),
        modules_to_save=built.head_modules,
        lora=task.lora.model_dump(mode="json"),
        max_length=task.training.max_length,
        doc_stride=task.training.doc_stride,
        parameters=ParameterCounts(trainable=outcome.trainable, total=outcome.total,
                                   stored=count_trainable(built.model)),
        training=_training_record(project, task, outcome),
        routing=task.routing.model_dump(mode="json"),
        example_inputs=_example_inputs(train, task.training.seed),
        mtlora_version=mtlora.__version__,
    )
    own_tokenizer = len(tokenizer) != len(load_tokenizer(project.backbone))  # the kind added task tokens

    def save(folder: Path) -> None:
        # Task tokens' rows are saved by `trainable_token_indices`; PEFT would save the whole resized
        # embedding matrix too (tens of MB), which a base resized to the tokenizer's length does not need.
        built.model.save_pretrained(folder, save_embedding_layers=False)  # type: ignore[operator]  # a PeftModel
        if own_tokenizer:
            tokenizer.save_pretrained(folder)

    return registry.save(task.name, save, manifest)


def _save_head_baseline(registry: Registry, project: ProjectConfig, task: TaskConfig, built: TaskModel,
                        outcome: TrainOutcome) -> Path:
    target = registry.baseline_path(task.name)
    with registry.staged(target) as folder:
        save_baseline(built.model, built.head_modules, folder)
        record = {"trainable": outcome.trainable, "total": outcome.total,
                  "base_fingerprint": built.fingerprint, **_training_record(project, task, outcome)}
        record["weights_sha256"] = sha256_file(folder / BASELINE_FILE)
        (folder / BASELINE_RECORD).write_text(json.dumps(record, indent=2))
    return target


def _training_record(project: ProjectConfig, task: TaskConfig, outcome: TrainOutcome) -> dict[str, Any]:
    return {
        "method": outcome.method,
        "data_signature": outcome.data_signature,
        "run_signature": outcome.run_signature,
        "time_s": round(outcome.time_s, 2),
        "steps": outcome.steps,
        "samples_per_s": round(outcome.samples_per_s, 2),
        "train_loss": outcome.train_loss,
        "losses": outcome.losses,
        "warning": outcome.warning,
        "saved_rank": dataclasses.asdict(outcome.truncation) if outcome.truncation else None,
        "settings": task.training.model_dump(mode="json"),
        # batch_size is per process: several processes take that many rows each, so each step takes more
        # rows (at the same lr) and an epoch fewer steps than the settings alone say.
        "processes": outcome.processes,
        "effective_batch_size": task.training.batch_size * task.training.grad_accum * outcome.processes,
    }


def _example_inputs(train: list[Example], seed: int) -> list[dict[str, str]]:
    """A seeded sample of training inputs, kept for semantic routing (no labels; long texts such as QA
    contexts and articles shortened, since routing embeds at most the first 128 tokens)."""
    picked = random.Random(seed).sample(train, min(EXAMPLE_INPUTS_KEPT, len(train)))
    return [{k: e[k][:EXAMPLE_CHARS_KEPT] for k in INPUT_ROLES if k in e} for e in picked]
