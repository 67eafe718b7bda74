"""Tasks the one training loop serves; a new task is one module here and one :func:`register_task` line.

The task of a run comes from the model card (``card.task``); the dataset must serve the same task.
"""
from __future__ import annotations

from ...data import dataset_specs, dataset_task
from ...errors import ConfigError
from ...registry import model_card
from ..building import TrainError
from .base import StepOutput, Task
from .classification import Classification, classification_transforms
from .instance import Instance
from .refinement import Refinement
from .segmentation import JointTransform, Segmentation, segmentation_transforms

__all__ = ['Task', 'StepOutput', 'Classification', 'Segmentation', 'JointTransform', 'register_task', 'get_task',
           'model_task', 'resolve_task', 'classification_transforms', 'segmentation_transforms', 'TASKS']

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Make a :class:`Task` subclass the task of every model whose card names ``cls.name``."""
    if cls.name in TASKS:
        raise ValueError(f'task {cls.name!r} is already registered')
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f'unknown task {name!r}; visionmix trains {", ".join(sorted(TASKS))}')
    return TASKS[name]


def model_task(name: str) -> str:
    """The task a registered model is trained for (its card's ``task``)."""
    return model_card(name).task


def resolve_task(model_name: str, dataset: str) -> type[Task]:
    """The task of training ``model_name`` on ``dataset``; a dataset of another task is a one-line error."""
    task, data = model_task(model_name), dataset_task(dataset)
    if task != data:
        hint = ', '.join(dataset_specs(task)) or 'none is registered'
        raise TrainError(f'{model_name} is a {task} model but {dataset!r} is a {data} dataset; give it a {task} '
                          f'dataset ({hint})')
    return get_task(task)


register_task(Classification)
register_task(Segmentation)
register_task(Instance)
register_task(Refinement)
