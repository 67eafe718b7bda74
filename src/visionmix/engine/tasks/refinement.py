"""BPR patch refinement: (image patch, coarse-mask patch) -> 2-class logits of the ground-truth patch.

The model (``bpr:BACKBONE``, :mod:`visionmix.models.refiner`) takes one 4-channel tensor per patch: RGB normalised
with ImageNet's mean / std and the coarse mask mapped to {-1, +1}, resized to the run's ``img_size`` (128 in the
official hrnet18s_128) exactly as :func:`visionmix.bpr.extract_patches` prepares patches at inference, so training
and ``visionmix bpr refine`` see the same inputs. Items come from ``bpr-patches:DIR``
(:mod:`visionmix.data.bpr_patches`).

* Loss: cross-entropy over the two classes at the input size (the official ``CrossEntropyLoss``).
* Augmentation (the official ``RandomFlip`` + ``PhotoMetricDistortion``): a horizontal flip of image and masks with
  the recipe's ``hflip`` probability, and photometric jitter of the image with mmseg's ranges, each with
  probability 0.5: brightness +-32 (additive, 0-255), contrast x[0.5, 1.5], saturation x[0.5, 1.5], hue +-18 of
  cv2's 180 (0.1 of the circle). visionmix differs in two details: the jitter is applied to the patch before the
  resize to ``img_size`` (so the resize is the inference one), and saturation is torchvision's blend with the grey
  image rather than a scale of the HSV saturation.
* Metrics (%, pooled over all val pixels): ``iou`` of the predicted foreground (softmax[:, 1] > 0.5) with the
  ground truth (the main metric), ``coarse_iou`` of the coarse-mask patch with the ground truth (what the refiner
  has to beat) and ``pixel_acc``.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from ...bpr import extract_patches
from ...errors import ConfigError, VisionmixError
from ...sizes import Size, hw
from ..config import TrainConfig
from .base import StepOutput, Task, write_json

__all__ = ['Refinement', 'PatchTransform', 'photometric_distortion', 'evaluate_refinement']

BRIGHTNESS_DELTA = 32.0  # mmseg PhotoMetricDistortion defaults
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18 / 180  # cv2 hue units (0-180) as a fraction of the circle


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def photometric_distortion(image: np.ndarray) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` ranges on a uint8 (H, W, 3) RGB patch, drawn from torch's RNG (which the
    training loop seeds per epoch); returns uint8."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if torch.rand(()) < 0.5:
        x = (x + _uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)).clamp_(0, 255)
    contrast_first = torch.rand(()) < 0.5  # mmseg applies contrast before or after the HSV steps, at random
    contrast = _uniform(*CONTRAST_RANGE) if torch.rand(()) < 0.5 else None
    if contrast is not None and contrast_first:
        x = (x * contrast).clamp_(0, 255)
    x = x / 255
    if torch.rand(()) < 0.5:
        x = TF.adjust_saturation(x, _uniform(*SATURATION_RANGE)).clamp_(0, 1)
    if torch.rand(()) < 0.5:
        x = TF.adjust_hue(x, _uniform(-HUE_DELTA, HUE_DELTA))
    x = x * 255
    if contrast is not None and not contrast_first:
        x = (x * contrast).clamp_(0, 255)
    return x.round().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


class PatchTransform:
    """Raw patch ``(image, coarse, gt)`` -> ``(input (4, S, S), target (S, S) int64)``.

    Args:
        out_size: The network's input side ``S``.
        hflip: Probability of a horizontal flip (training).
        photometric: Apply :func:`photometric_distortion` (training).
    """

    def __init__(self, out_size: int, hflip: float = 0.0, photometric: bool = False) -> None:
        self.out_size, self.hflip, self.photometric = out_size, hflip, photometric

    def __call__(self, sample: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        image, coarse, gt = sample
        if self.hflip and torch.rand(()) < self.hflip:
            image, coarse, gt = image[:, ::-1], coarse[:, ::-1], gt[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image)
        side = coarse.shape[0]
        # the inference preprocessing itself: one box covering the whole patch
        img_p, mask_p = extract_patches(np.ascontiguousarray(image), np.ascontiguousarray(coarse),
                                        [[0, 0, side, side]], self.out_size)
        target = torch.from_numpy(np.ascontiguousarray(gt)).float()[None, None]
        target = F.interpolate(target, size=(self.out_size, self.out_size), mode='nearest')[0, 0].long()
        return torch.cat([img_p[0], mask_p[0]]), target

    def __repr__(self) -> str:
        return f'{type(self).__name__}(out_size={self.out_size}, hflip={self.hflip}, photometric={self.photometric})'


def _counts(logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pixel counts: predicted & true foreground, predicted | true, coarse & true, coarse | true, correct, total."""
    pred, true, coarse = logits.argmax(1) == 1, targets == 1, inputs[:, 3] > 0
    return torch.tensor([(pred & true).sum(), (pred | true).sum(), (coarse & true).sum(), (coarse | true).sum(),
                         (pred == true).sum(), true.numel()], dtype=torch.float64)


@torch.no_grad()
def evaluate_refinement(model: nn.Module, loader: Any, device: torch.device | str = 'cpu',
                        channels_last: bool = False) -> dict[str, Any]:
    """Mean cross-entropy and the patch metrics (%) of ``model`` over ``loader`` (see the module docstring)."""
    was_training = model.training
    model.eval()
    totals, loss_sum, count = torch.zeros(6, dtype=torch.float64), 0.0, 0
    try:
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            logits = model(inputs).float()
            loss_sum += float(F.cross_entropy(logits, targets)) * len(inputs)
            totals += _counts(logits.cpu(), inputs.cpu(), targets.cpu())
            count += len(inputs)
    finally:
        model.train(was_training)
    inter, union, c_inter, c_union, correct, pixels = totals.tolist()
    return dict(loss=loss_sum / count if count else float('nan'), iou=100 * inter / max(union, 1),
                coarse_iou=100 * c_inter / max(c_union, 1), pixel_acc=100 * correct / max(pixels, 1),
                num_patches=count)


class Refinement(Task):
    """BPR patch refinement (``bpr:BACKBONE`` on ``bpr-patches:DIR``); main metric: foreground IoU of the patches."""

    name, metric, metric_label = 'refinement', 'iou', 'patch IoU'
    val_metrics = ('iou', 'coarse_iou', 'pixel_acc')
    dataset_hint = 'a BPR patch dataset (bpr-patches:DIR, written by `visionmix bpr extract`)'

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> list[str]:
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ConfigError('mixup / cutmix mix class labels and are classification-only; set mixup=0 and '
                              'cutmix=0 for a bpr refiner')
        height, width = hw(cfg.img_size)
        if height != width:
            raise ConfigError(f'a bpr refiner sees square patches; give one --img-size such as 128, got '
                              f'{height}x{width}')
        ignored = [f'{k}={getattr(cfg, k)}' for k in ('auto_augment', 'reprob', 'smoothing') if getattr(cfg, k)]
        if ignored:
            return [f'refinement ignores the option(s) {", ".join(ignored)} (its augmentation is the official flip + '
                    f'photometric distortion)']
        return []

    def model_kwargs(self) -> dict[str, Any]:
        return dict(num_classes=2)

    def expected_output(self, img_size: Size) -> tuple[int, ...]:
        return 1, 2, *hw(img_size)

    def probe(self, model: nn.Module, img_size: Size) -> Any:
        device = next(model.parameters(), torch.empty(0)).device
        return model(torch.zeros(1, 4, *hw(img_size), device=device))

    def transforms(self, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        side = hw(self.cfg.img_size)[0]
        return PatchTransform(side, self.cfg.hflip, photometric=True), PatchTransform(side)

    def train_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        logits = model(inputs)
        loss = F.cross_entropy(logits.float(), targets)
        counts = _counts(logits.detach(), inputs, targets)
        return StepOutput(loss, float(counts[0]), float(counts[1]))  # running foreground IoU

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        return evaluate_refinement(model, loader, device, channels_last)

    @classmethod
    def eval_report(cls, model: nn.Module, trained: dict[str, Any], val_ds: Any, batch_size: int,
                    out_dir: Path) -> dict[str, Any]:
        """Patch IoU, coarse IoU and pixel accuracy on the val patches (``eval.json``)."""
        val_ds.transform = PatchTransform(hw(trained['img_size'])[0])
        metrics = evaluate_refinement(model, DataLoader(val_ds, batch_size=batch_size))
        result = dict(checkpoint=trained['checkpoint'], model=trained['model'], model_kwargs=trained['model_kwargs'],
                      dataset=trained['eval_dataset'], split='val', task=cls.name, img_size=trained['img_size'],
                      **metrics, units='% of pixels pooled over the val patches')
        write_json(out_dir / 'eval.json', result)
        return dict(result, files=[str(out_dir / 'eval.json')])

    @classmethod
    def predict_images(cls, model: nn.Module, trained: dict[str, Any], images: list[tuple[Path, Image.Image]],
                       output: Path, topk: int = 5, min_score: float | None = None,
                       ) -> list[dict[str, Any]]:
        """A refiner needs coarse masks as well as images: ``visionmix bpr refine`` is its prediction command."""
        raise VisionmixError(f'{trained["checkpoint"]} is a BPR refiner: it refines coarse instance masks, use '
                             f'`visionmix bpr refine --checkpoint RUN --coarse RESULTS.json IMAGES...`')
