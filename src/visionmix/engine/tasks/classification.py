"""Image -> class: timm's transforms, Mixup / CutMix, (soft-target / label-smoothing) cross-entropy, top-1 / top-5."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ...errors import ConfigError
from ..building import TrainError
from ..config import TrainConfig
from ..metrics import evaluate
from .base import StepOutput, Task

__all__ = ['Classification', 'classification_transforms']


def classification_transforms(cfg: TrainConfig, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
    """timm's train / eval transforms (RandAugment, random erasing, ... from the recipe)."""
    from timm.data import create_transform

    train_tf = create_transform(
        dcfg['input_size'], is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, vflip=0.,
        auto_augment=cfg.auto_augment or None, interpolation=cfg.interpolation, mean=dcfg['mean'], std=dcfg['std'],
        re_prob=cfg.reprob, re_mode='pixel', re_count=1)
    eval_tf = create_transform(dcfg['input_size'], is_training=False, interpolation=cfg.interpolation,
                               mean=dcfg['mean'], std=dcfg['std'], crop_pct=1.0)
    return train_tf, eval_tf


class Classification(Task):
    """Image -> class logits (B, K)."""

    name, metric, metric_label, val_metrics = 'classification', 'top1', 'top-1', ('top1', 'top5')
    dataset_hint = 'a classification dataset'

    def __init__(self, cfg: TrainConfig, info: Any) -> None:
        super().__init__(cfg, info)
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                           num_classes=info.num_classes) if self.mixes else None
        if self.mixes:
            self.criterion: nn.Module = SoftTargetCrossEntropy()  # the smoothing is in Mixup's soft targets
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    @property
    def mixes(self) -> bool:
        return self.cfg.mixup > 0 or self.cfg.cutmix > 0

    def expected_output(self, img_size: int) -> tuple[int, ...]:
        return 1, self.num_classes

    def transforms(self, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        return classification_transforms(self.cfg, dcfg)

    def drop_last(self, num_train: int, per_rank_batch: int) -> bool:
        if self.mixes and per_rank_batch % 2:  # timm's Mixup flips the batch and pairs it with itself
            raise ConfigError(f'mixup / cutmix need an even batch size per process, got {per_rank_batch}')
        return self.mixes and num_train >= per_rank_batch

    def train_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        hard = targets
        if self.mixup is not None:
            inputs, targets = self.mixup(inputs, targets)
        output = model(inputs)
        if not isinstance(output, torch.Tensor):  # e.g. torchvision's aux-logits tuples in train mode
            raise TrainError(f'in training mode the model returns {type(output).__name__}, not one logits tensor '
                              f'(turn its auxiliary outputs off, e.g. aux_logits=False)')
        loss = self.criterion(output.float(), targets)
        correct = (output.detach().argmax(1) == hard).sum().item()
        return StepOutput(loss, correct, hard.shape[0])

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        return evaluate(model, loader, self.num_classes, device=device, channels_last=channels_last, full=full)
