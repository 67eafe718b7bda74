"""What differs between training a classifier and a segmentation model; the loop in :mod:`.train` is shared.

A :class:`Task` supplies the loss, the transforms (a segmentation transform moves image and mask together), the
running training metric and the validation metrics. The task comes from the model card: family ``'segmentation'``
is :class:`Segmentation`, every other family :class:`Classification`; the dataset must be of the same kind.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from ..registry import model_card
from .config import ConfigError, TrainConfig
from .losses import segmentation_loss
from .metrics import evaluate, evaluate_segmentation, seg_predict

__all__ = ['Task', 'Classification', 'Segmentation', 'model_task', 'get_task', 'build_transforms']


def model_task(name: str) -> str:
    """``'segmentation'`` for models of the segmentation family, else ``'classification'``."""
    return 'segmentation' if model_card(name).family == 'segmentation' else 'classification'


def build_transforms(cfg: TrainConfig, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
    """timm's train / eval transforms for classification (RandAugment, random erasing, ... from the recipe)."""
    from timm.data import create_transform

    train_tf = create_transform(
        dcfg['input_size'], is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, vflip=0.,
        auto_augment=cfg.auto_augment or None, interpolation=cfg.interpolation, mean=dcfg['mean'], std=dcfg['std'],
        re_prob=cfg.reprob, re_mode='pixel', re_count=1)
    eval_tf = create_transform(dcfg['input_size'], is_training=False, interpolation=cfg.interpolation,
                               mean=dcfg['mean'], std=dcfg['std'], crop_pct=1.0)
    return train_tf, eval_tf


class Task:
    """The task-specific parts of a run.

    Attributes:
        name: ``'classification'`` or ``'segmentation'``.
        metric: The main validation metric (%, higher is better); it picks ``best.safetensors``.
        metric_label: How the metric is printed.
        val_metrics: Metric columns reported per epoch (``val_<name>`` in metrics.csv), the main one first.
    """

    name = ''
    metric = ''
    metric_label = ''
    val_metrics: tuple[str, ...] = ()

    def check_config(self, cfg: TrainConfig) -> list[str]:
        """Raise :class:`ConfigError` for options the task cannot honour; return notes on options it ignores."""
        return []

    def output_shape(self, num_classes: int, img_size: int) -> tuple[int, ...]:
        """What the model must return for one ``img_size`` image."""
        raise NotImplementedError

    def criterion(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def transforms(self, cfg: TrainConfig, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        raise NotImplementedError

    def train_counts(self, output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        """Numerator and denominator of the running training metric for one batch (summed over the epoch)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        raise NotImplementedError


class Classification(Task):
    """Image -> class: timm's transforms, (soft-target / label-smoothing) cross-entropy, top-1 / top-5."""

    name, metric, metric_label, val_metrics = 'classification', 'top1', 'top-1', ('top1', 'top5')

    def output_shape(self, num_classes: int, img_size: int) -> tuple[int, ...]:
        return 1, num_classes

    def criterion(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if cfg.mixup > 0 or cfg.cutmix > 0:
            return SoftTargetCrossEntropy()  # the smoothing is in Mixup's soft targets
        if cfg.smoothing > 0:
            return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        return nn.CrossEntropyLoss()

    def transforms(self, cfg: TrainConfig, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        return build_transforms(cfg, dcfg)

    def train_counts(self, output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        return (output.argmax(1) == target).sum().item(), target.shape[0]

    def evaluate(self, model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        return evaluate(model, loader, num_classes, device=device, channels_last=channels_last, full=full)


class JointTransform:
    """Applies a ``torchvision.transforms.v2`` pipeline to an image and its mask together (masks resample with
    nearest); returns a float image tensor (3, H, W) and an int64 class-index mask (H, W)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import pil_to_tensor

        img, target = self.transform(tv_tensors.Image(pil_to_tensor(image)), tv_tensors.Mask(torch.from_numpy(mask)))
        return img.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor).long()

    def image(self, image: Image.Image) -> torch.Tensor:
        """The image alone (prediction, no mask)."""
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import pil_to_tensor

        return self.transform(tv_tensors.Image(pil_to_tensor(image))).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transform})'


def segmentation_transforms(img_size: int, mean: Any, std: Any, interpolation: str = 'bicubic',
                            cfg: TrainConfig | None = None) -> tuple[JointTransform | None, JointTransform]:
    """Train (with ``cfg``: random resized crop and horizontal flip from the recipe) and eval (resize) transforms."""
    from torchvision.transforms import v2

    interp = v2.InterpolationMode(interpolation)
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]  # images only
    eval_tf = JointTransform(v2.Compose([v2.Resize((img_size, img_size), interpolation=interp, antialias=True),
                                         *tail]))
    if cfg is None:
        return None, eval_tf
    train_tf = JointTransform(v2.Compose([
        v2.RandomResizedCrop((img_size, img_size), scale=cfg.scale, ratio=cfg.ratio, interpolation=interp,
                             antialias=True),
        v2.RandomHorizontalFlip(cfg.hflip), *tail]))
    return train_tf, eval_tf


class Segmentation(Task):
    """Image -> per-pixel logits (B, K, H, W): BCE + Dice for K = 1 (threshold 0.5), CE + Dice for K > 1; Dice and
    IoU; flips and random resized crops that move image and mask together."""

    name, metric, metric_label, val_metrics = 'segmentation', 'dice', 'Dice', ('dice', 'iou')

    def check_config(self, cfg: TrainConfig) -> list[str]:
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ConfigError('mixup / cutmix mix class labels and are classification-only; set mixup=0 and '
                              'cutmix=0 for a segmentation model')
        ignored = [f'{k}={getattr(cfg, k)}' for k in ('auto_augment', 'reprob', 'smoothing') if getattr(cfg, k)]
        if ignored:  # on in the default recipe, so a note rather than an error
            return [f'segmentation ignores the classification-only option(s) {", ".join(ignored)} (its augmentation '
                    f'is random resized crop + horizontal flip of image and mask together)']
        return []

    def output_shape(self, num_classes: int, img_size: int) -> tuple[int, ...]:
        return 1, num_classes, img_size, img_size

    def criterion(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        return segmentation_loss(num_classes)

    def transforms(self, cfg: TrainConfig, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        return segmentation_transforms(cfg.img_size, dcfg['mean'], dcfg['std'], dcfg['interpolation'], cfg)

    def train_counts(self, output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        # Pixel Dice pooled over the epoch and the foreground classes: 2 TP / (|pred| + |target|).
        pred = seg_predict(output)
        fg_pred, fg_true = pred > 0, target > 0
        tp = (fg_pred & (pred == target)).sum().item()
        return 2 * tp, fg_pred.sum().item() + fg_true.sum().item()

    def evaluate(self, model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        return evaluate_segmentation(model, loader, num_classes, device=device, channels_last=channels_last,
                                     full=full)


_TASKS: dict[str, Task] = {'classification': Classification(), 'segmentation': Segmentation()}


def get_task(name: str) -> Task:
    return _TASKS[name]
