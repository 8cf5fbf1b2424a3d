"""A run's identity and its folder: the signature of everything that decides its result, and the
checkpoints it resumes from when an interrupted run with the same signature left them."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import mtlora
from mtlora import atomic
from mtlora.backbone import fingerprint_backbone, fingerprint_backbone_setup
from mtlora.config import LEARNING_RATES, NOT_TRAINING_SETTINGS, ProjectConfig, TaskConfig

RUN_MARKER = "run.json"  # in a run folder: the signature of the run its checkpoints belong to


def run_signature(project: ProjectConfig, task: TaskConfig, method: str, data: str, bf16: bool,
                  processes: int) -> str:
    """What a checkpoint must have been trained with to be resumed, and a stored result to be kept: same
    task settings, training examples, base (weights, config and tokenizer), method, precision, number of
    processes, and versions of mtlora and the libraries that train."""
    parts = [what_trains(project.task(name), method) for name in (task.mixture.tasks if task.mixture else [])]
    payload = {"task": what_trains(task, method), "parts": parts, "data": data, "method": method,
               "base": fingerprint_backbone(project.backbone), "setup": fingerprint_backbone_setup(project.backbone),
               "bf16": bf16, "processes": processes,
               "versions": [mtlora.__version__, torch.__version__, transformers.__version__, peft.__version__]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def what_trains(task: TaskConfig, method: str) -> dict[str, Any]:
    """The task's settings less those that cannot change a training step of `method`: routing hints, the
    evaluation splits and batch size, whether a baseline follows, how often to checkpoint and log (a
    resumed run takes the new cadence: `ThisRunsCadence`), the learning rate of the other method, and
    where the training file is (the training examples themselves are in `data`: a project copied or its
    data moved is the same run)."""
    settings = task.model_dump(mode="json", exclude={
        "routing": True, "data": {"validation": True, "test": True, "train": {"path"}},
        "training": set(NOT_TRAINING_SETTINGS | LEARNING_RATES)})
    settings["training"]["lr"] = task.training.lr_for(method)
    return settings


def resume_point(run_dir: Path) -> str | None:
    """The checkpoint to resume from: the latest, unless it was written at the run's last step (a Ctrl-C
    there, or a crash after that step's checkpoint). Resumed from that one, the Trainer steps once more
    before it looks at max_steps, when the last epoch is partial; resumed from the one before, the run
    ends where it would have, on the same weights. A run with no earlier checkpoint starts over."""
    steps = {int(path.name.rsplit("-", 1)[1]): path for path in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if path.name.rsplit("-", 1)[1].isdigit() and path.is_dir()}
    checkpoints = [steps[step] for step in sorted(steps)]
    if checkpoints and _at_its_last_step(checkpoints[-1]):
        checkpoints.pop()
    return str(checkpoints[-1]) if checkpoints else None


def _at_its_last_step(checkpoint: Path) -> bool:
    try:
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
        return 0 < state["max_steps"] <= state["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # left for the Trainer to judge, as before


def prepare_run_dir(run_dir: Path, signature: str, fresh: bool, log: Callable[[str], None]) -> None:
    """Keep the checkpoints of an interrupted run with the same settings and data; clear anything else."""
    marker = run_dir / RUN_MARKER
    if run_dir.is_dir():
        previous = signature_in(marker)
        checkpoint = resume_point(run_dir)
        if checkpoint and not fresh and previous == signature:
            step = checkpoint.rsplit("-", 1)[-1]
            log(f"Resuming from {checkpoint} (step {step}); pass --fresh to start over.")
            return
        if checkpoint:
            reason = "--fresh given" if fresh else "the settings or the training data changed since it was written"
            log(f"Not resuming from {checkpoint}: {reason}. Starting over.")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    atomic.write_json(marker, {"signature": signature})


def signature_in(marker: Path) -> str | None:
    """The signature an earlier run left, or None where there is none to trust (a file a crash cut short)."""
    try:
        return json.loads(marker.read_text()).get("signature")
    except (OSError, ValueError, AttributeError):
        return None
