"""``visionmix eval`` and ``visionmix predict``: load a trained checkpoint by its metadata and use it.

Classification checkpoints give top-1 / top-5, per-class accuracy and a confusion matrix (eval) and top-k classes
(predict); segmentation checkpoints give Dice / IoU (eval) and mask PNGs (predict).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..checkpoint import load_checkpoint
from ..data import DataError, build_datasets
from ..errors import CheckpointError, VisionmixError
from ..reporting import pyplot
from .building import build_model
from .metrics import THRESHOLD, evaluate, evaluate_segmentation, seg_predict
from .tasks import model_task, resolve_task, segmentation_transforms

__all__ = ['EvalError', 'load_trained', 'run_eval', 'predict', 'plot_confusion']


class EvalError(VisionmixError):
    """A checkpoint or input that eval / predict cannot use."""


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in ('best.safetensors', 'last.safetensors'):
            if (path / name).is_file():
                return path / name
        raise EvalError(f'{path} holds no best.safetensors or last.safetensors (is it a visionmix run directory?)')
    if not path.is_file():
        raise EvalError(f'checkpoint {path} does not exist')
    return path


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise EvalError(f'{path} is not a readable safetensors file: {e}') from None
    if meta.get('format') != 'visionmix-train':
        raise EvalError(f'{path} was not written by visionmix train (no training metadata); it cannot tell which '
                        f'model, classes and preprocessing to use')
    return meta


def load_trained(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a ``visionmix train`` checkpoint was trained as and load its weights.

    The returned model's ``pretrained_cfg`` carries the training preprocessing (input size, mean, std, interpolation),
    so timm's ``resolve_data_config(model=model)`` gives the right transform.
    """
    path = _resolve(path)
    meta = read_metadata(path)
    info = dict(model=meta['model'], model_kwargs=json.loads(meta['model_kwargs']),
                classes=json.loads(meta['classes']), img_size=int(meta['img_size']), mean=json.loads(meta['mean']),
                std=json.loads(meta['std']), interpolation=meta['interpolation'], epoch=int(meta['epoch']),
                dataset=meta['dataset'], checkpoint=str(path), weights=meta.get('weights', 'model'),
                task=model_task(meta['model']))
    model = build_model(info['model'], len(info['classes']), info['img_size'], info['model_kwargs'])
    try:
        load_checkpoint(model, path, strict=True)
    except CheckpointError as e:
        raise EvalError(str(e).splitlines()[0]) from None
    model.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, input_size=(3, info['img_size'],
                                info['img_size']), mean=tuple(info['mean']), std=tuple(info['std']),
                                interpolation=info['interpolation'], crop_pct=1.0, num_classes=len(info['classes']))
    model.eval()
    return model, info


def _eval_transform(model: nn.Module):
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


def run_eval(checkpoint: str | Path, dataset: str | None = None, output: str | Path | None = None,
             batch_size: int = 128, skip_corrupt: bool = False) -> dict[str, Any]:
    """Top-1 / top-5, per-class accuracy and the confusion matrix on the val split; writes ``eval.json`` and
    ``confusion.png`` to ``output`` (default: next to the checkpoint). A segmentation checkpoint gives Dice and IoU
    (overall and per class) in ``eval.json``."""
    model, info = load_trained(checkpoint)
    spec = dataset or info['dataset']
    task = resolve_task(info['model'], spec)
    _, val_ds, data_info = build_datasets(spec, img_size=info['img_size'], skip_corrupt=skip_corrupt)
    if data_info.classes != info['classes']:
        raise DataError(f'dataset {spec!r} has classes {data_info.classes[:10]}, the checkpoint was trained on '
                        f'{info["classes"][:10]}')
    if task.name == 'segmentation':
        return _run_eval_segmentation(model, info, val_ds, spec, output, batch_size)
    val_ds.transform = _eval_transform(model)
    metrics = evaluate(model, DataLoader(val_ds, batch_size=batch_size), len(info['classes']), full=True)
    out_dir = Path(output) if output else Path(info['checkpoint']).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result = dict(checkpoint=info['checkpoint'], model=info['model'], model_kwargs=info['model_kwargs'],
                  dataset=spec, split='val', num_images=metrics['num_images'], top1=metrics['top1'],
                  top5=metrics['top5'], loss=metrics['loss'],
                  per_class=dict(zip(info['classes'], metrics['per_class'])), confusion=metrics['confusion'],
                  classes=info['classes'])
    (out_dir / 'eval.json').write_text(json.dumps(result, indent=2))
    plot_confusion(metrics['confusion'], info['classes'], out_dir / 'confusion.png',
                   title=f'{info["model"]} on {spec}: top-1 {metrics["top1"]:.2f}%')
    result['files'] = [str(out_dir / 'eval.json'), str(out_dir / 'confusion.png')]
    return result


def _foreground_classes(classes: list[str]) -> list[str]:
    return classes if len(classes) == 1 else classes[1:]  # K > 1: class 0 is the background


def _run_eval_segmentation(model: nn.Module, info: dict[str, Any], val_ds: Any, spec: str,
                           output: str | Path | None, batch_size: int) -> dict[str, Any]:
    _, val_ds.transform = segmentation_transforms(info['img_size'], info['mean'], info['std'], info['interpolation'])
    classes = info['classes']
    metrics = evaluate_segmentation(model, DataLoader(val_ds, batch_size=batch_size), len(classes), full=True)
    out_dir = Path(output) if output else Path(info['checkpoint']).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = {c: dict(dice=d, iou=i) for c, d, i in zip(_foreground_classes(classes), metrics['per_class_dice'],
                                                           metrics['per_class_iou'])}
    result = dict(checkpoint=info['checkpoint'], model=info['model'], model_kwargs=info['model_kwargs'], dataset=spec,
                  split='val', task='segmentation', img_size=info['img_size'], num_images=metrics['num_images'],
                  dice=metrics['dice'], iou=metrics['iou'], loss=metrics['loss'],
                  threshold=THRESHOLD if len(classes) == 1 else None, per_class=per_class, classes=classes)
    (out_dir / 'eval.json').write_text(json.dumps(result, indent=2))
    result['files'] = [str(out_dir / 'eval.json')]
    return result


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


def _predict_masks(model: nn.Module, info: dict[str, Any], images: Sequence[str | Path],
                   output: str | Path) -> list[dict[str, Any]]:
    from PIL import Image, UnidentifiedImageError

    _, transform = segmentation_transforms(info['img_size'], info['mean'], info['std'], info['interpolation'])
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = info['classes']
    results, used = [], set()
    for path in images:
        try:
            with Image.open(path) as img:
                rgb = img.convert('RGB')
        except FileNotFoundError:
            raise EvalError(f'image {path} does not exist') from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise EvalError(f'cannot read image {path}: {e}') from None
        x = transform.image(rgb).unsqueeze(0)
        # logits back to the image's own size, then threshold / argmax: a mask aligned with the input file
        logits = F.interpolate(model(x).float(), size=(rgb.height, rgb.width), mode='bilinear', align_corners=False)
        pred = seg_predict(logits)[0].numpy()
        name = f'{Path(path).stem}_mask.png'
        if name in used:  # two inputs with one stem (other folders): keep both
            name = f'{Path(path).stem}_{len(used)}_mask.png'
        used.add(name)
        _mask_image(pred, len(classes)).save(out_dir / name)
        fractions = {c: float((pred == i + 1).mean()) for i, c in enumerate(_foreground_classes(classes))}
        results.append(dict(image=str(path), mask=str(out_dir / name), size=[rgb.width, rgb.height],
                            foreground=fractions))
    return results


@torch.no_grad()
def predict(checkpoint: str | Path, images: Sequence[str | Path], topk: int = 5,
            output: str | Path = 'predictions') -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file, using the checkpoint's classes and preprocessing.

    For a segmentation checkpoint: writes ``<stem>_mask.png`` per image to ``output`` (at the image's size; binary
    masks 0/255, several classes as a palette PNG of class indices) and returns each mask's path and the fraction of
    pixels per foreground class.
    """
    from PIL import Image, UnidentifiedImageError

    if topk < 1:
        raise EvalError(f'--topk must be >= 1, got {topk}')
    model, info = load_trained(checkpoint)
    if info['task'] == 'segmentation':
        return _predict_masks(model, info, images, output)
    transform = _eval_transform(model)
    k = min(topk, len(info['classes']))
    results = []
    for path in images:
        try:
            with Image.open(path) as img:
                x = transform(img.convert('RGB')).unsqueeze(0)
        except FileNotFoundError:
            raise EvalError(f'image {path} does not exist') from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise EvalError(f'cannot read image {path}: {e}') from None
        probs = model(x).softmax(-1)[0]
        values, indices = probs.topk(k)
        results.append(dict(image=str(path), top=[dict(label=info['classes'][i], index=int(i), prob=float(p))
                                                  for p, i in zip(values.tolist(), indices.tolist())]))
    return results
