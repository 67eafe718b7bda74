"""What a task is to the training loop: the parts of a run that differ between classification, segmentation,
detection and refinement. The loop itself (:mod:`visionmix.engine.trainer`) never changes for a new task.

A task is built once per run (``Task(cfg, info)``) and supplies:

* the check of the recipe (options it cannot honour) and of the model it trains (:meth:`Task.output_error`);
* the transforms and, where batches are not plain tensors, a collate function;
* one training step (:meth:`Task.train_step`: forward + loss + the counts of its running metric);
* the validation metrics (:meth:`Task.evaluate`), the main one of which picks ``best.safetensors``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from ...checkpoint import atomic_write
from ...data import DatasetInfo
from ...sizes import Size, hw
from ..config import TrainConfig

__all__ = ['Task', 'StepOutput', 'write_json']


@dataclass
class StepOutput:
    """One training step's loss (to backpropagate) and the numerator / denominator of the running metric."""

    loss: torch.Tensor
    metric_num: float
    metric_den: float


class Task:
    """The task-specific parts of one run.

    Attributes:
        name: Registry name of the task (``'classification'``, ``'segmentation'``, ...).
        metric: The main validation metric (%, higher is better); it picks ``best.safetensors``.
        metric_label: How the metric is printed.
        val_metrics: Metric columns reported per epoch (``val_<name>`` in metrics.csv), the main one first.
        dataset_hint: The dataset specs this task trains on, for error messages.
    """

    name: ClassVar[str] = ''
    metric: ClassVar[str] = ''
    metric_label: ClassVar[str] = ''
    val_metrics: ClassVar[tuple[str, ...]] = ()
    dataset_hint: ClassVar[str] = ''

    def __init__(self, cfg: TrainConfig, info: DatasetInfo) -> None:
        self.cfg, self.info = cfg, info

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> list[str]:
        """Raise :class:`~visionmix.errors.ConfigError` for options the task cannot honour; return notes on options
        it ignores."""
        return []

    # ----------------------------------------------------------------------------------------------- the model
    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the task adds when it builds the model (e.g. its number of outputs)."""
        return dict(num_classes=self.num_classes)

    def expected_output(self, img_size: Size) -> tuple[int, ...] | None:
        """The output shape for one ``img_size`` image in eval mode, checked before training (None: no check)."""
        return None

    def probe(self, model: nn.Module, img_size: Size) -> Any:
        """Run ``model`` (eval mode, no grad) on one zeros image, as the size check does."""
        device = next(model.parameters(), torch.empty(0)).device
        return model(torch.zeros(1, 3, *hw(img_size), device=device))

    def output_error(self, model: nn.Module, img_size: Size) -> str | None:
        """None if the model maps one ``img_size`` image to what the task expects, else why not (one line)."""
        out = self.probe(model, img_size)
        expected = self.expected_output(img_size)
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if expected is not None and shape != expected:
            return f'it returns {shape} for one image, expected {expected}'
        return None

    # ------------------------------------------------------------------------------------------------ the data
    def transforms(self, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        """(train, eval) transforms for the datasets' ``transform`` attribute."""
        raise NotImplementedError

    collate_fn: Callable | None = None
    # whether a batch's inputs are one tensor the model takes (torch's update_bn recomputes BN statistics with it)
    tensor_inputs: ClassVar[bool] = True

    def drop_last(self, num_train: int, per_rank_batch: int) -> bool:
        """Whether the training loader drops a last incomplete batch."""
        return False

    def to_device(self, batch: Any, device: torch.device, channels_last: bool) -> tuple[Any, Any]:
        """Move one batch ``(inputs, targets)`` to ``device``."""
        images, targets = batch
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(device)

    def batch_size_of(self, inputs: Any) -> int:
        return inputs.shape[0]

    # -------------------------------------------------------------------------------------------- the training
    def train_step(self, model: nn.Module, inputs: Any, targets: Any) -> StepOutput:
        """Forward, loss and the running metric's counts for one batch (the loop backpropagates)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        """Validation metrics: the mean ``loss`` and every name in :attr:`val_metrics`."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ a trained checkpoint (eval)
    # ``trained`` is what :func:`visionmix.engine.evaluate.load_trained` read from the checkpoint: model name and
    # kwargs, classes, img_size, mean, std, interpolation, checkpoint path.

    @classmethod
    def eval_report(cls, model: nn.Module, trained: dict[str, Any], val_ds: Any, batch_size: int,
                    out_dir: Path) -> dict[str, Any]:
        """Full metrics of a trained model on ``val_ds``; writes ``eval.json`` (and plots) to ``out_dir`` and returns
        the result with ``files`` listing what it wrote."""
        raise NotImplementedError

    @classmethod
    def predict_images(cls, model: nn.Module, trained: dict[str, Any], images: list[tuple[Path, Image.Image]],
                       output: Path, topk: int = 5, min_score: float | None = None,
                       ) -> list[dict[str, Any]]:
        """Predictions for already-read RGB images; writes per-image outputs (masks, overlays) to ``output``.
        ``topk`` is for classifiers, ``min_score`` for detectors (the lowest score drawn and listed; None: the task's
        default); a task ignores what it has no use for."""
        raise NotImplementedError


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (readers never see half a file)."""
    text = json.dumps(data, indent=2)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
