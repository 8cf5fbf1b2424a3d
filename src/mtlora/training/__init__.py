"""Training task adapters (and the baselines they are compared with)."""

from mtlora.training.trainer import TrainingInterrupted, TrainOutcome, stored_result, train_task

__all__ = ["TrainOutcome", "TrainingInterrupted", "stored_result", "train_task"]
