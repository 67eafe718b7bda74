"""Validation metrics with torchmetrics (reduced across ranks when a process group is up): top-1 / top-5 for
classification, Dice and IoU for segmentation."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score,
                                         MulticlassJaccardIndex)

from .losses import segmentation_loss

__all__ = ['evaluate', 'evaluate_segmentation', 'seg_predict', 'THRESHOLD']

THRESHOLD = 0.5  # one output map: foreground where sigmoid(logit) > 0.5, as the official UNeXt evaluation


def _sweep(model: nn.Module, loader: DataLoader, device: torch.device | str, channels_last: bool,
           update: Callable[[torch.Tensor, torch.Tensor], float]) -> tuple[float, int]:
    """Run ``model`` (eval mode, restored after) over ``loader``; ``update(logits, targets)`` feeds the metrics and
    returns the batch's summed loss. Returns the mean loss and the image count, both summed across ranks."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batch_loss = update(model(images).float(), targets)
        loss_sum += torch.tensor([batch_loss, len(targets)], dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
    model.train(was_training)
    return (loss_sum[0] / loss_sum[1].clamp(min=1)).item(), int(loss_sum[1])


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str = 'cpu',
             channels_last: bool = False, full: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy; with ``full``, per-class accuracy and the confusion
    matrix too."""
    top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average='micro').to(device)
    top5 = MulticlassAccuracy(num_classes=num_classes, top_k=min(5, num_classes), average='micro').to(device)
    per_class = MulticlassAccuracy(num_classes=num_classes, average=None).to(device) if full else None
    confusion = MulticlassConfusionMatrix(num_classes=num_classes).to(device) if full else None

    def update(logits: torch.Tensor, targets: torch.Tensor) -> float:
        for metric in (top1, top5, per_class, confusion):
            if metric is not None:
                metric.update(logits, targets)
        return F.cross_entropy(logits, targets, reduction='sum').item()

    loss, num_images = _sweep(model, loader, device, channels_last, update)
    out: dict[str, Any] = dict(top1=100 * top1.compute().item(), top5=100 * top5.compute().item(), loss=loss,
                               num_images=num_images)
    if full:
        out['per_class'] = [100 * v for v in per_class.compute().tolist()]
        out['confusion'] = confusion.compute().tolist()
    return out


def seg_predict(logits: torch.Tensor) -> torch.Tensor:
    """Class indices (B, H, W) from logits (B, K, H, W): ``sigmoid > THRESHOLD`` for K = 1, else argmax."""
    return (logits[:, 0].sigmoid() > THRESHOLD).long() if logits.shape[1] == 1 else logits.argmax(1)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str = 'cpu',
                          channels_last: bool = False, full: bool = False) -> dict[str, Any]:
    """Dice, IoU, mIoU and pixel accuracy (%) of the predicted masks and the mean loss (BCE / CE + Dice).

    Every count is pooled over all pixels of the split (TP, FP, FN summed, then Dice = 2TP / (2TP + FP + FN) = pixel
    F1, IoU = TP / (TP + FP + FN)). ``dice`` and ``iou`` average over the foreground classes (the one class of a
    binary model, classes 1..K-1 of a K-class one); ``miou`` is the semantic-segmentation mIoU, over every class
    background included (for a binary model: background and foreground); ``pixel_acc`` is the share of pixels whose
    class is right. A class absent from both prediction and target scores 0. With ``full``, the per-class values
    (``per_class_iou_all`` includes the background).
    """
    pixel_classes = max(2, num_classes)  # binary: background 0 / foreground 1
    dice = MulticlassF1Score(num_classes=pixel_classes, average='none').to(device)
    iou = MulticlassJaccardIndex(num_classes=pixel_classes, average='none').to(device)
    accuracy = MulticlassAccuracy(num_classes=pixel_classes, average='micro').to(device)
    criterion = segmentation_loss(num_classes)

    def update(logits: torch.Tensor, targets: torch.Tensor) -> float:
        preds = seg_predict(logits)
        for metric in (dice, iou, accuracy):
            metric.update(preds, targets)
        return criterion(logits, targets).item() * len(targets)

    loss, num_images = _sweep(model, loader, device, channels_last, update)
    all_iou = 100 * iou.compute()
    per_dice, per_iou = 100 * dice.compute()[1:], all_iou[1:]  # foreground classes
    out: dict[str, Any] = dict(dice=per_dice.mean().item(), iou=per_iou.mean().item(), miou=all_iou.mean().item(),
                               pixel_acc=100 * accuracy.compute().item(), loss=loss, num_images=num_images)
    if full:
        out['per_class_dice'], out['per_class_iou'] = per_dice.tolist(), per_iou.tolist()
        out['per_class_iou_all'] = all_iou.tolist()
    return out
