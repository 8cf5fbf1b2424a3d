"""Training task adapters (and the baselines they are compared with)."""

from mtlora.training.trainer import TrainingInterrupted, TrainOutcome, train_task

__all__ = ["TrainOutcome", "TrainingInterrupted", "train_task"]
