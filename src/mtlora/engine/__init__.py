"""Inference."""

from mtlora.engine.inference import forward_features, predict_examples
from mtlora.engine.predictor import TaskPredictor

__all__ = ["TaskPredictor", "forward_features", "predict_examples"]
