"""Training task adapters (and the baselines they are compared with)."""

from mtlora.training.trainer import TrainingInterrupted, TrainOutcome, ready_data, stored_result, train_task

__all__ = ["TrainOutcome", "TrainingInterrupted", "ready_data", "stored_result", "train_task"]
