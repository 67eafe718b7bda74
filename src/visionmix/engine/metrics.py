"""Validation metrics with torchmetrics (reduced across ranks when a process group is up)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

__all__ = ['evaluate']


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str = 'cpu',
             channels_last: bool = False, full: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy; with ``full``, per-class accuracy and the confusion
    matrix too."""
    was_training = model.training
    model.eval()
    top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average='micro').to(device)
    top5 = MulticlassAccuracy(num_classes=num_classes, top_k=min(5, num_classes), average='micro').to(device)
    per_class = MulticlassAccuracy(num_classes=num_classes, average=None).to(device) if full else None
    confusion = MulticlassConfusionMatrix(num_classes=num_classes).to(device) if full else None
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        loss_sum += torch.tensor([F.cross_entropy(logits, targets, reduction='sum').item(), len(targets)],
                                 dtype=torch.float64, device=device)
        top1.update(logits, targets)
        top5.update(logits, targets)
        if full:
            per_class.update(logits, targets)
            confusion.update(logits, targets)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
    model.train(was_training)
    out: dict[str, Any] = dict(top1=100 * top1.compute().item(), top5=100 * top5.compute().item(),
                               loss=(loss_sum[0] / loss_sum[1].clamp(min=1)).item(), num_images=int(loss_sum[1]))
    if full:
        out['per_class'] = [100 * v for v in per_class.compute().tolist()]
        out['confusion'] = confusion.compute().tolist()
    return out
