"""The callbacks a training run adds to the HF Trainer: stopping cleanly on a signal, keeping this run's
checkpoint and logging cadence on resume, recording how many steps each logged loss averages, and
timing the whole run across resumes."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class StopOnSignal(TrainerCallback):
    """First Ctrl-C (or SIGTERM, which `docker stop` and job schedulers send before killing): save a
    checkpoint at the end of the current step and stop. A second Ctrl-C: stop now. A second SIGTERM
    changes nothing: a scheduler that signals every process of a torchrun job reaches each worker twice,
    directly and through the launcher, and kills what is left when its grace period ends anyway."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.heard: int | None = None  # the first signal this process received
        self.requested = False  # the run stops after this step: agreed in `on_step_end`, alike in every process

    def _handle(self, signum: int, frame: Any) -> None:
        if self.heard is None:
            self.heard = signum
            print("\nInterrupt received: saving a checkpoint after this step (Ctrl-C again to abort).")
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C keeps its default.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        heard = self.heard is not None
        # Under torchrun each process hears a signal at its own moment, maybe a step apart. They stop
        # together, after the first step any of them had heard it by: one stopping alone would leave the
        # others waiting forever in the next step's collectives. Only the agreed value decides, so that a
        # signal landing during the reduce is sent at the next step rather than overwritten.
        agreed = _in_any_process(heard, args.device) if args.world_size > 1 else heard  # every process calls it
        self.requested = self.requested or agreed
        if self.requested:
            control.should_save = True
            control.should_log = True  # the checkpoint's loss record then reaches its last step
            control.should_training_stop = True


def _in_any_process(flag: bool, device: torch.device) -> bool:
    tensor = torch.tensor(int(flag), device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


class ThisRunsCadence(TrainerCallback):
    """A resumed HF Trainer takes its checkpoint and logging steps from the checkpoint's state, not from its
    arguments: this puts this run's `checkpoint_every` and `log_every` back, so that changing them resumes
    with them instead of silently keeping the old ones."""

    MISMATCH = "Warning: The following arguments do not match"  # HF's, naming logging/eval/save steps only

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        state.compute_steps(args, state.max_steps)

    @classmethod
    @contextlib.contextmanager
    def unwarned(cls) -> Iterator[None]:
        """Without HF's warning that the steps differ from the checkpoint's: it reads as if the new ones
        were not taken, where this callback takes them."""
        def not_mismatch(record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith(cls.MISMATCH)

        hf_logger = logging.getLogger("transformers.trainer_utils")
        hf_logger.addFilter(not_mismatch)
        try:
            yield
        finally:
            hf_logger.removeFilter(not_mismatch)


class LossRecord(TrainerCallback):
    """Each logged loss records how many steps it averages, which after a resume neither its step nor the
    log before it tells; and the last step's loss is logged too. `whole_run_loss` then covers every step."""

    STEPS = "loss_steps"  # in each `log_history` entry that has a loss, kept in the checkpoints

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.since = state.global_step  # a resumed run's losses average the steps since its checkpoint

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if logs and "loss" in logs:  # the Trainer appended this entry to `log_history` just before
            state.log_history[-1][self.STEPS] = state.global_step - self.since
            self.since = state.global_step


class RunClock(TrainerCallback):
    """Training time over the whole run, across resumes: each checkpoint records the time spent until it."""

    FILE = "mtlora_elapsed.json"

    def __init__(self, resume: str | None):
        recorded = Path(resume) / self.FILE if resume else None
        self.before = json.loads(recorded.read_text())["elapsed_s"] if recorded and recorded.is_file() else 0.0
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.started

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # TrainingArguments fills in an output_dir left None; its annotation keeps the None.
        folder = Path(cast(str, args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / self.FILE).write_text(json.dumps({"elapsed_s": self.elapsed()}))


def whole_run_loss(logged: list[dict[str, Any]], unlogged: float) -> float:
    """The mean training loss of every step, from the logged losses, each weighted by the steps it
    averages. Not the Trainer's `train_loss`, which after a resume covers only that call's steps, and
    which transformers before 5.19 divides by every step of the run. A checkpoint of an mtlora before
    `loss_steps` counts from the log before; `unlogged` answers for a run that logged no loss at all."""
    total, counted, previous = 0.0, 0, 0
    for entry in logged:
        steps = entry.get(LossRecord.STEPS, entry["step"] - previous)
        total, counted, previous = total + entry["loss"] * steps, counted + steps, entry["step"]
    return total / counted if counted else unlogged
