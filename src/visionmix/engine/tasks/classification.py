"""Image -> class: timm's transforms, Mixup / CutMix, (soft-target / label-smoothing) cross-entropy, top-1 / top-5."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from ...errors import ConfigError
from ...reporting import pyplot
from ..building import TrainError
from ..config import TrainConfig
from ..metrics import evaluate
from .base import StepOutput, Task, write_json

__all__ = ['Classification', 'classification_transforms', 'eval_transform', 'plot_confusion']


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

    def expected_output(self, img_size: Any) -> tuple[int, ...]:
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

    @classmethod
    def eval_report(cls, model: nn.Module, trained: dict[str, Any], val_ds: Any, batch_size: int,
                    out_dir: Path) -> dict[str, Any]:
        """Top-1 / top-5, per-class accuracy and the confusion matrix (``eval.json``, ``confusion.png``)."""
        classes = trained['classes']
        val_ds.transform = eval_transform(model)
        metrics = evaluate(model, DataLoader(val_ds, batch_size=batch_size), len(classes), full=True)
        result = dict(checkpoint=trained['checkpoint'], model=trained['model'], model_kwargs=trained['model_kwargs'],
                      dataset=trained['eval_dataset'], split='val', task=cls.name, num_images=metrics['num_images'],
                      top1=metrics['top1'], top5=metrics['top5'], loss=metrics['loss'],
                      per_class=dict(zip(classes, metrics['per_class'])), confusion=metrics['confusion'],
                      classes=classes)
        write_json(out_dir / 'eval.json', result)
        plot_confusion(metrics['confusion'], classes, out_dir / 'confusion.png',
                       title=f'{trained["model"]} on {trained["eval_dataset"]}: top-1 {metrics["top1"]:.2f}%')
        return dict(result, files=[str(out_dir / 'eval.json'), str(out_dir / 'confusion.png')])

    @classmethod
    @torch.no_grad()
    def predict_images(cls, model: nn.Module, trained: dict[str, Any], images: list[tuple[Path, Image.Image]],
                       output: Path, topk: int = 5, min_score: float | None = None,
                       ) -> list[dict[str, Any]]:
        """Top-k classes with probabilities, the checkpoint's class names and preprocessing."""
        transform, classes = eval_transform(model), trained['classes']
        k = min(topk, len(classes))
        results = []
        for path, rgb in images:
            values, indices = model(transform(rgb).unsqueeze(0)).softmax(-1)[0].topk(k)
            results.append(dict(image=str(path), top=[dict(label=classes[i], index=int(i), prob=float(p))
                                                      for p, i in zip(values.tolist(), indices.tolist())]))
        return results


def eval_transform(model: nn.Module) -> Callable:
    """timm's eval transform from the model's ``pretrained_cfg`` (the training preprocessing, after load_trained)."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model), is_training=False)


def plot_confusion(confusion: list[list[int]], classes: Sequence[str], path: Path, title: str = '') -> Path:
    plt = pyplot()
    n = len(classes)
    size = min(12, 2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(confusion, cmap='Blues')
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(confusion[i][j]), ha='center', va='center', fontsize=7)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(title or 'confusion matrix')
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
