"""Segmentation losses: BCE + Dice for one output map (UNeXt's), CE + Dice for several exclusive classes.

Neither timm nor torchvision ships a Dice loss, so the soft Dice is written out here (a few lines each).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['BCEDiceLoss', 'CEDiceLoss', 'segmentation_loss']

SMOOTH = 1e-5  # UNeXt-pytorch losses.py: keeps an empty image's Dice defined


class BCEDiceLoss(nn.Module):
    """``0.5 * BCE-with-logits + (1 - Dice)`` for logits (B, 1, H, W) and a 0/1 target (B, H, W).

    Dice is the soft Dice of ``sigmoid(logits)`` per image, averaged over the batch: the loss of the official UNeXt
    training (its ``BCEDiceLoss``), which the model card names.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, t)
        p, t = logits.sigmoid().flatten(1), t.flatten(1)
        dice = (2 * (p * t).sum(1) + SMOOTH) / (p.sum(1) + t.sum(1) + SMOOTH)
        return 0.5 * bce + (1 - dice.mean())


class CEDiceLoss(nn.Module):
    """``0.5 * cross-entropy + (1 - Dice)`` for logits (B, K, H, W), K > 1, and class indices (B, H, W).

    Dice is the soft Dice of ``softmax(logits)`` per foreground class (1..K-1) pooled over the batch, then averaged
    over classes; pooling over the batch keeps a class that is absent from one image from being pushed to zero
    everywhere (nnU-Net's batch Dice). The 0.5 weight mirrors :class:`BCEDiceLoss`.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        p = logits.softmax(1)[:, 1:]
        t = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(p.dtype)
        dims = (0, 2, 3)
        dice = (2 * (p * t).sum(dims) + SMOOTH) / (p.sum(dims) + t.sum(dims) + SMOOTH)
        return 0.5 * ce + (1 - dice.mean())


def segmentation_loss(num_classes: int) -> nn.Module:
    """BCE + Dice for one output map (binary), CE + Dice for ``num_classes > 1``."""
    return BCEDiceLoss() if num_classes == 1 else CEDiceLoss()
