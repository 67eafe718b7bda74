"""``visionmix eval`` and ``visionmix predict``: load a trained checkpoint by its metadata and use it.

The checkpoint's task does the work (:meth:`Task.eval_report`, :meth:`Task.predict_images`): top-1 / top-5,
per-class accuracy and a confusion matrix for a classifier, Dice / IoU and mask PNGs for a segmentation model, ...
This module finds the checkpoint, rebuilds the model, lists and reads the images.
"""
from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn
from PIL import Image, UnidentifiedImageError

from ..checkpoint import load_checkpoint
from ..data import IMG_EXTENSIONS, DataError, build_datasets
from ..errors import CheckpointError, VisionmixError
from ..sizes import hw, parse_size
from .building import TrainError, build_model, resolve_weights
from ..registry import model_card
from .tasks import get_task, model_task, resolve_task

__all__ = ['EvalError', 'load_trained', 'run_eval', 'predict', 'expand_images', 'read_metadata']

class EvalError(VisionmixError):
    """A checkpoint or input that eval / predict cannot use."""


def read_metadata(path: Path) -> dict[str, str]:
    """The training metadata of a weights file ``visionmix train`` wrote (last / best and every epoch snapshot)."""
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
    try:
        path = resolve_weights(path)
    except TrainError as e:
        raise EvalError(str(e)) from None
    meta = read_metadata(path)
    info = dict(model=meta['model'], model_kwargs=json.loads(meta['model_kwargs']),
                classes=json.loads(meta['classes']), img_size=parse_size(meta['img_size']),
                mean=json.loads(meta['mean']), std=json.loads(meta['std']), interpolation=meta['interpolation'],
                epoch=int(meta['epoch']), dataset=meta['dataset'], checkpoint=str(path),
                weights=meta.get('weights', 'model'), task=meta.get('task') or model_task(meta['model']))
    # the metadata holds every builder argument the run used (the task's output count among them); runs written
    # before it did hold only the user's, and the class count
    model = build_model(info['model'], len(info['classes']), info['img_size'], info['model_kwargs'])
    try:
        load_checkpoint(model, path, strict=True)
    except CheckpointError as e:
        raise EvalError(str(e)) from None
    model.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, input_size=(3, *hw(info['img_size'])),
                                mean=tuple(info['mean']), std=tuple(info['std']),
                                interpolation=info['interpolation'], crop_pct=1.0, num_classes=len(info['classes']))
    model.eval()
    return model, info


def run_eval(checkpoint: str | Path, dataset: str | None = None, output: str | Path | None = None,
             batch_size: int = 128, skip_corrupt: bool = False) -> dict[str, Any]:
    """Evaluate a trained checkpoint on the val split of its dataset (or ``dataset``): the task's full metrics in
    ``eval.json`` (and its plots) in ``output`` (default: next to the checkpoint)."""
    model, trained = load_trained(checkpoint)
    spec = dataset or trained['dataset']
    task = resolve_task(trained['model'], spec)
    _, val_ds, data_info = build_datasets(spec, img_size=max(hw(trained['img_size'])), skip_corrupt=skip_corrupt)
    if data_info.classes != trained['classes']:
        raise DataError(f'dataset {spec!r} has classes {data_info.classes[:10]}, the checkpoint was trained on '
                        f'{trained["classes"][:10]}')
    out_dir = Path(output) if output else Path(trained['checkpoint']).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    return task.eval_report(model, dict(trained, eval_dataset=spec), val_ds, batch_size, out_dir)


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files, folders (their images, recursively, sorted) and glob patterns, in the given order.

    Raises:
        EvalError: An input that names nothing (a missing file, an empty folder, a pattern without matches).
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not files:
                raise EvalError(f'folder {path} holds no images ({", ".join(IMG_EXTENSIONS)})')
        elif path.exists():
            files = [path]
        elif glob.has_magic(str(item)):
            files = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not files:
                raise EvalError(f'no file matches {item}')
        else:
            raise EvalError(f'image {path} does not exist')
        found += files
    return found


def _read_images(paths: list[Path], strict: bool) -> tuple[list[tuple[Path, Image.Image]], list[str]]:
    """(path, RGB image) for every readable file and a line per unreadable one (which stops the run if strict)."""
    images, skipped = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                images.append((path, img.convert('RGB')))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            if strict:
                raise EvalError(f'cannot read image {path}: {e}') from None
            skipped.append(f'{path}: {e}')
    return images, skipped


class _BackendModel:
    """A model run through another backend, still answering what predictions read of it (its pretrained_cfg)."""

    def __init__(self, model: nn.Module, runner: Any) -> None:
        self.pretrained_cfg, self.runner = model.pretrained_cfg, runner

    def __call__(self, x: Any) -> Any:
        return self.runner(x)


def _on_backend(model: nn.Module, backend: str, img_size: Any) -> _BackendModel:
    from ..deploy import backend_runner

    return _BackendModel(model, backend_runner(model, backend, img_size))


def model_for_export(name: str | None, checkpoint: str | Path | None, img_size: Any = None) -> tuple[nn.Module, Any]:
    """The model ``visionmix export`` writes and its export size: a trained checkpoint (rebuilt by its metadata, at
    its training size), or ``name`` with optional weights in our or the official layout (at the card's size)."""
    if checkpoint is not None:
        path = Path(checkpoint)
        trained_file = path.is_dir() or (path.suffix == '.safetensors' and _is_trained(path))
        if trained_file:
            model, trained = load_trained(path)
            if name and name != trained['model']:
                raise EvalError(f'{checkpoint} holds a {trained["model"]}, not a {name}; drop MODEL or name that one')
            return model, img_size or trained['img_size']
    if not name:
        raise EvalError('export needs MODEL, or --checkpoint with a run directory or weights from visionmix train')
    model = build_model(name, None, img_size or model_card(name).input_size[1:],
                        {} if checkpoint is None else {'checkpoint_path': str(checkpoint)})
    return model.eval(), img_size or tuple(model_card(name).input_size[1:])


def _is_trained(path: Path) -> bool:
    try:
        read_metadata(path)
    except EvalError:
        return False
    return True


def predict(checkpoint: str | Path, images: Sequence[str | Path], topk: int = 5, output: str | Path = 'predictions',
            strict: bool = False, backend: str = 'eager', min_score: float | None = None) -> list[dict[str, Any]]:
    """The checkpoint task's predictions for image files, folders or glob patterns.

    Classifiers give the top-k classes with probabilities; segmentation models write ``<stem>_mask.png`` per image
    to ``output``. Unreadable images are skipped with a warning (``strict``: the first one is an error), and what
    could be predicted is returned. ``backend='onnxruntime'`` runs the model through ONNX Runtime (exported at the
    training size and checked against eager first). Instance segmentation checkpoints draw and list the detections
    scoring ``min_score`` or more (default 0.5); the COCO results JSON keeps every detection.
    """
    if topk < 1:
        raise EvalError(f'--topk must be >= 1, got {topk}')
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise EvalError(f'--min-score must be in [0, 1], got {min_score}')
    paths = expand_images(images)
    model, trained = load_trained(checkpoint)
    if backend != 'eager':
        model = _on_backend(model, backend, trained['img_size'])
    readable, skipped = _read_images(paths, strict)
    if skipped:
        warnings.warn(f'skipped {len(skipped)} unreadable image(s) of {len(paths)}: {skipped[0]}'
                      + (f' (and {len(skipped) - 1} more)' if len(skipped) > 1 else ''), stacklevel=2)
    return get_task(trained['task']).predict_images(model, trained, readable, Path(output), topk=topk,
                                                        min_score=min_score)
