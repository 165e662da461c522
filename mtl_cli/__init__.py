"""mtl: a Hydra-driven runner for multi-task NLP training."""

__version__ = "0.1.0"
