"""Training task adapters (and the baselines they are compared with)."""

from mtlora.training.trainer import TrainingInterrupted, TrainOutcome, check_max_length, stored_result, train_task

__all__ = ["TrainOutcome", "TrainingInterrupted", "check_max_length", "stored_result", "train_task"]
