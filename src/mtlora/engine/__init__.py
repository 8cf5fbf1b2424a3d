"""Inference: one adapter (`TaskPredictor`) or many on one backbone (`Engine`)."""

from mtlora.engine.engine import Engine
from mtlora.engine.inference import forward_features, predict_examples
from mtlora.engine.predictor import TaskPredictor

__all__ = ["Engine", "TaskPredictor", "forward_features", "predict_examples"]
