"""Training, evaluation, prediction and fair comparison of registered models (``visionmix train|eval|predict|
compare``). Nothing in :mod:`visionmix.layers` or :mod:`visionmix.models` imports this package."""
from .config import ConfigError, TrainConfig, load_config, parse_overrides
from .train import RunResult, TrainError, build_model, train

__all__ = ['ConfigError', 'TrainConfig', 'load_config', 'parse_overrides', 'RunResult', 'TrainError', 'build_model',
           'train']
