"""Training, evaluation, prediction and fair comparison of registered models (``visionmix train|eval|predict|
compare``): one loop (:mod:`.trainer`) serves every task (:mod:`.tasks`). Nothing in :mod:`visionmix.layers` or
:mod:`visionmix.models` imports this package.

The entry points live in their modules (``visionmix.engine.train.train``, ``visionmix.engine.compare.compare``, ...);
this package exports only the types they share, so no name here hides a module.
"""
from .building import TrainError
from .config import ConfigError, TrainConfig, load_config, parse_overrides
from .trainer import RunResult, Trainer

__all__ = ['ConfigError', 'TrainConfig', 'load_config', 'parse_overrides', 'RunResult', 'TrainError', 'Trainer']
