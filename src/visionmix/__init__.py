"""visionmix: vision backbones as spatial mixing + channel mixing, verified against their papers, on timm.

Importing visionmix registers its model families in timm's registry.
"""
from .checkpoint import read_state_dict, save_checkpoint
from .errors import CheckpointError, ConfigError, DataError, UnknownModelError, VisionmixError
from .registry import ModelCard, create_model, list_models, load_checkpoint, model_card
from . import models  # noqa: F401  (registers every family)
from .profile import compare_speed, count_macs, count_params, profile_model

__version__ = '0.1.0'

__all__ = [
    'VisionmixError', 'CheckpointError', 'ConfigError', 'DataError', 'UnknownModelError', 'ModelCard',
    'create_model', 'list_models', 'load_checkpoint', 'model_card', 'read_state_dict', 'save_checkpoint',
    'profile_model', 'compare_speed', 'count_macs', 'count_params', '__version__',
]
