"""Inference: one adapter (`TaskPredictor`) or many on one backbone (`Engine`)."""

from mtlora.engine.engine import Engine
from mtlora.engine.predictor import TaskPredictor, predict_examples

__all__ = ["Engine", "TaskPredictor", "predict_examples"]
