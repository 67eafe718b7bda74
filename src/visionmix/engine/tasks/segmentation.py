"""Image -> per-pixel logits (B, K, H, W): BCE + Dice for K = 1 (threshold 0.5), CE + Dice for K > 1; Dice, IoU;
random resized crops and flips that move image and mask together."""
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

from ...errors import ConfigError
from ...sizes import Size, hw
from ..config import TrainConfig
from ..losses import segmentation_loss
from ..metrics import THRESHOLD, evaluate_segmentation, seg_predict
from .base import StepOutput, Task, write_json

__all__ = ['Segmentation', 'JointTransform', 'segmentation_transforms']


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


def segmentation_transforms(img_size: Size, mean: Any, std: Any, interpolation: str = 'bicubic',
                            cfg: TrainConfig | None = None) -> tuple[JointTransform | None, JointTransform]:
    """Train (with ``cfg``: random resized crop and horizontal flip from the recipe) and eval (resize) transforms."""
    from torchvision.transforms import v2

    interp = v2.InterpolationMode(interpolation)
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]  # images only
    eval_tf = JointTransform(v2.Compose([v2.Resize(hw(img_size), interpolation=interp, antialias=True),
                                         *tail]))
    if cfg is None:
        return None, eval_tf
    train_tf = JointTransform(v2.Compose([
        v2.RandomResizedCrop(hw(img_size), scale=cfg.scale, ratio=cfg.ratio, interpolation=interp,
                             antialias=True),
        v2.RandomHorizontalFlip(cfg.hflip), *tail]))
    return train_tf, eval_tf


class Segmentation(Task):
    """Semantic segmentation; the model returns logits at the input size."""

    name, metric, metric_label, val_metrics = 'segmentation', 'dice', 'Dice', ('dice', 'iou')
    dataset_hint = 'a segmentation dataset'

    def __init__(self, cfg: TrainConfig, info: Any) -> None:
        super().__init__(cfg, info)
        self.criterion = segmentation_loss(info.num_classes)
        if info.num_classes > 1:  # several classes: the semantic-segmentation convention, mIoU over all classes
            self.metric, self.metric_label = 'miou', 'mIoU'
            self.val_metrics = ('miou', 'dice', 'iou', 'pixel_acc')

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> list[str]:
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ConfigError('mixup / cutmix mix class labels and are classification-only; set mixup=0 and '
                              'cutmix=0 for a segmentation model')
        ignored = [f'{k}={getattr(cfg, k)}' for k in ('auto_augment', 'reprob', 'smoothing') if getattr(cfg, k)]
        if ignored:  # on in some recipes, so a note rather than an error
            return [f'segmentation ignores the classification-only option(s) {", ".join(ignored)} (its augmentation '
                    f'is random resized crop + horizontal flip of image and mask together)']
        return []

    def expected_output(self, img_size: Size) -> tuple[int, ...]:
        return 1, self.num_classes, *hw(img_size)

    def transforms(self, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        return segmentation_transforms(self.cfg.img_size, dcfg['mean'], dcfg['std'], dcfg['interpolation'], self.cfg)

    def train_step(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> StepOutput:
        output = model(inputs)
        loss = self.criterion(output.float(), targets)
        # Pixel Dice pooled over the epoch and the foreground classes: 2 TP / (|pred| + |target|).
        pred = seg_predict(output.detach())
        fg_pred, fg_true = pred > 0, targets > 0
        tp = (fg_pred & (pred == targets)).sum().item()
        return StepOutput(loss, 2 * tp, fg_pred.sum().item() + fg_true.sum().item())

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        return evaluate_segmentation(model, loader, self.num_classes, device=device, channels_last=channels_last,
                                     full=full)

    @classmethod
    def eval_report(cls, model: nn.Module, trained: dict[str, Any], val_ds: Any, batch_size: int,
                    out_dir: Path) -> dict[str, Any]:
        """Dice and IoU, overall and per foreground class (``eval.json``)."""
        classes = trained['classes']
        _, val_ds.transform = segmentation_transforms(trained['img_size'], trained['mean'], trained['std'],
                                                      trained['interpolation'])
        metrics = evaluate_segmentation(model, DataLoader(val_ds, batch_size=batch_size), len(classes), full=True)
        per_class = {c: dict(dice=d, iou=i) for c, d, i in zip(foreground_classes(classes), metrics['per_class_dice'],
                                                               metrics['per_class_iou'])}
        result = dict(checkpoint=trained['checkpoint'], model=trained['model'], model_kwargs=trained['model_kwargs'],
                      dataset=trained['eval_dataset'], split='val', task=cls.name, img_size=trained['img_size'],
                      num_images=metrics['num_images'], dice=metrics['dice'], iou=metrics['iou'],
                      miou=metrics['miou'], pixel_acc=metrics['pixel_acc'], loss=metrics['loss'],
                      threshold=THRESHOLD if len(classes) == 1 else None, per_class=per_class,
                      iou_per_class=dict(zip(classes if len(classes) > 1 else ['background', *classes],
                                             metrics['per_class_iou_all'])), classes=classes)
        write_json(out_dir / 'eval.json', result)
        return dict(result, files=[str(out_dir / 'eval.json')])

    @classmethod
    @torch.no_grad()
    def predict_images(cls, model: nn.Module, trained: dict[str, Any], images: list[tuple[Path, Image.Image]],
                       output: Path, topk: int = 5, min_score: float | None = None,
                       ) -> list[dict[str, Any]]:
        """``<stem>_mask.png`` per image at the image's own size (binary: 0/255; several classes: a palette PNG of
        class indices) and the share of pixels per foreground class."""
        _, transform = segmentation_transforms(trained['img_size'], trained['mean'], trained['std'],
                                               trained['interpolation'])
        output.mkdir(parents=True, exist_ok=True)
        classes, results, used = trained['classes'], [], set()
        for path, rgb in images:
            # logits back to the image's own size, then threshold / argmax: a mask aligned with the input file
            logits = F.interpolate(model(transform.image(rgb).unsqueeze(0)).float(), size=(rgb.height, rgb.width),
                                   mode='bilinear', align_corners=False)
            pred = seg_predict(logits)[0].numpy()
            name = f'{path.stem}_mask.png'
            if name in used:  # two inputs with one stem (other folders): keep both
                name = f'{path.stem}_{len(used)}_mask.png'
            used.add(name)
            _mask_image(pred, len(classes)).save(output / name)
            fractions = {c: float((pred == i + 1).mean()) for i, c in enumerate(foreground_classes(classes))}
            results.append(dict(image=str(path), mask=str(output / name), size=[rgb.width, rgb.height],
                                foreground=fractions))
        return results


def foreground_classes(classes: list[str]) -> list[str]:
    """The classes a metric averages over: the one class of a binary model, classes 1..K-1 of a K-class one."""
    return classes if len(classes) == 1 else classes[1:]


def _mask_image(pred: np.ndarray, num_classes: int) -> Any:
    """Binary: an L-mode PNG, 255 = foreground. K classes: a palette PNG whose pixel values are the class indices."""
    from PIL import Image

    if num_classes == 1:
        return Image.fromarray((pred * 255).astype(np.uint8), 'L')
    import matplotlib

    img = Image.fromarray(pred.astype(np.uint8), 'P')
    colors = [(0, 0, 0)] + [tuple(int(255 * v) for v in matplotlib.colormaps['tab10'](i % 10)[:3])
                            for i in range(num_classes - 1)]
    img.putpalette([v for c in colors for v in c])
    return img
