"""Loading and saving weights safely: safetensors or ``torch.load(weights_only=True)``, never plain pickle.

Official checkpoints come in many wrappers (``{'model': ...}``, ``{'state_dict_ema': ...}``, ``module.`` prefixes
from DataParallel) and in the official key layout; :func:`load_checkpoint` unwraps them (:func:`unwrap_state_dict`,
one documented priority), runs the key filter it is given (a family's ``checkpoint_filter_fn``, which only renames
keys) and reports every mismatch in one error. A leaf: it imports nothing of visionmix but its errors.
"""
from __future__ import annotations

import argparse
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from timm.models import adapt_input_conv

from .errors import CheckpointError, VisionmixError

__all__ = [
    'CheckpointError', 'read_state_dict', 'unwrap_state_dict', 'load_checkpoint', 'save_checkpoint',
    'pretrained_error', 'safe_load_context', 'atomic_write', 'unwrapping', 'FilterFn',
]

# The one unwrap priority, checked in this order at each nesting level. EMA weights win when present
# (``use_ema=True``, timm's default too): the official training scripts of our families (DeiT-style, Hire-MLP)
# evaluate and publish the EMA model when they keep one.
_WRAPPER_KEYS = ('state_dict', 'model', 'module', 'net', 'weights')
_EMA_KEYS = ('state_dict_ema', 'model_ema')
# DeiT-style training checkpoints store their argparse options next to the weights; a Namespace only holds
# attributes, so allowing it keeps weights_only loading safe while accepting those files.
_SAFE_GLOBALS = [argparse.Namespace]
_TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')

FilterFn = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def pretrained_error(name: str, cause: BaseException) -> CheckpointError:
    """The error for pretrained weights that could not be fetched (typically: no network)."""
    return CheckpointError(
        f'{name}: could not fetch the pretrained weights ({type(cause).__name__}: {cause}). Without network access, '
        f'download them elsewhere and pass pretrained_cfg_overlay=dict(file="path/to/weights.pth") together with '
        f'pretrained=True, or checkpoint_path="path/to/weights.pth".')


def safe_load_context():
    """Context in which ``torch.load(weights_only=True)`` also accepts DeiT-style checkpoints' argparse options."""
    return torch.serialization.safe_globals(_SAFE_GLOBALS)


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file as-is (possibly still wrapped), safely.

    ``.safetensors`` goes through safetensors; ``.pth/.pt/.bin/.ckpt/.tar`` through ``torch.load(weights_only=True)``,
    which refuses to run code stored in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {str(path)!r} does not exist or is not a file')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint {str(path)!r} is empty')
    if path.suffix == '.safetensors':
        try:
            return dict(load_safetensors(str(path), device='cpu'))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'{str(path)!r} is not a readable safetensors file: {e}') from None
    if path.suffix not in _TORCH_SUFFIXES:
        raise CheckpointError(
            f'{str(path)!r}: unknown checkpoint format {path.suffix!r}; use .safetensors or one of {_TORCH_SUFFIXES}')
    try:
        with safe_load_context():
            obj = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (truncated zip), EOFError ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f'{str(path)!r} could not be loaded with torch.load(weights_only=True): {msg}. The file is corrupt, '
            f'truncated, or stores objects other than tensors (which visionmix never unpickles).') from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'{str(path)!r} holds a {type(obj).__name__}, not a state dict')
    return dict(obj)


def unwrap_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a training checkpoint and strip ``module.`` prefixes.

    Args:
        checkpoint: What :func:`read_state_dict` returned.
        use_ema: Prefer ``state_dict_ema`` / ``model_ema`` when present (``False``: the raw model weights).
    """
    keys = (_EMA_KEYS + _WRAPPER_KEYS) if use_ema else _WRAPPER_KEYS
    state = checkpoint
    for _ in range(3):  # e.g. {'model': {'module.x': ...}} or {'state_dict': {'model': ...}}
        if any(isinstance(v, torch.Tensor) for v in state.values()):
            break
        inner = next((state[k] for k in keys if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f'no tensors found in checkpoint (top-level keys: {sorted(checkpoint)[:10]})')
    if all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    return tensors


def unwrapping(filter_fn: FilterFn) -> FilterFn:
    """``filter_fn`` preceded by :func:`unwrap_state_dict`, for loaders that pass the raw file content (timm's
    ``pretrained=True`` path hands ``pretrained_filter_fn`` whatever the downloaded file holds)."""

    def unwrap_then_filter(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
        return filter_fn(unwrap_state_dict(state_dict), model)

    return unwrap_then_filter


def _classifier_names(model: nn.Module) -> list[str]:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier') if isinstance(cfg, Mapping) else None
    if not classifier:
        return []
    return [classifier] if isinstance(classifier, str) else list(classifier)


def _first_convs(model: nn.Module) -> list[str]:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    first = cfg.get('first_conv') if isinstance(cfg, Mapping) else None
    if not first:
        return []
    return [first] if isinstance(first, str) else list(first)


def _adapt_to_model(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Handle the two mismatches users expect to just work: another ``num_classes`` and another ``in_chans``."""
    target = model.state_dict()
    for conv in _first_convs(model):
        key = f'{conv}.weight'
        if key in state and key in target and state[key].shape[1] != target[key].shape[1]:
            warnings.warn(f'adapting {key} from {state[key].shape[1]} to {target[key].shape[1]} input channels')
            state[key] = adapt_input_conv(target[key].shape[1], state[key])
    for head in _classifier_names(model):
        for suffix in ('.weight', '.bias'):
            key = head + suffix
            if key in state and (key not in target or state[key].shape != target[key].shape):
                warnings.warn(f'dropping classifier {key} {tuple(state[key].shape)}: the model has '
                              f'{tuple(target[key].shape) if key in target else "no such layer"}; it keeps its '
                              f'freshly initialised head')
                del state[key]
                if key in target:
                    state[key] = target[key]
    return state


def load_checkpoint(
        model: nn.Module,
        path: str | os.PathLike,
        strict: bool = True,
        filter_fn: FilterFn | None = None,
        use_ema: bool = True,
        adapt: bool = False,
) -> nn.Module:
    """Load weights into ``model`` from a file in our layout or, through ``filter_fn``, an official one.

    Any mismatch raises one :class:`CheckpointError` naming the missing keys, unexpected keys and shape mismatches
    (all of them on the error's ``missing`` / ``unexpected`` / ``shapes`` attributes). ``strict`` means strict:
    a classifier or first conv of another shape is a mismatch too, unless ``adapt`` asks for what fine-tuning needs.

    Args:
        model: The model to fill.
        path: ``.safetensors`` or a torch file (read with ``weights_only=True``).
        strict: Require every key to match (``False`` allows missing / unexpected keys, never other shapes).
        filter_fn: ``(state_dict, model) -> state_dict`` renaming an official layout's keys to the model's (a
            family's ``checkpoint_filter_fn``); ``None`` loads the keys as they are.
        use_ema: Load EMA weights when the checkpoint holds both (as timm does); ``False`` for the raw weights.
        adapt: Keep the model's fresh classifier when the checkpoint's has another number of classes, and adapt the
            first conv to another ``in_chans`` as timm does (each with a warning).
    """
    state = unwrap_state_dict(read_state_dict(path), use_ema=use_ema)
    if filter_fn is not None:
        state = filter_fn(state, model)
    if adapt:
        state = _adapt_to_model(dict(state), model)
    target = model.state_dict()
    shape_errors = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}'
                    for k, v in state.items() if k in target and v.shape != target[k].shape]
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if shape_errors or (strict and (missing or unexpected)):
        error = CheckpointError(_mismatch_report(str(path), type(model).__name__, missing, unexpected, shape_errors))
        error.missing, error.unexpected, error.shapes = missing, unexpected, shape_errors
        raise error
    model.load_state_dict(state, strict=strict)
    return model


def _mismatch_report(path: str, model_name: str, missing: list[str], unexpected: list[str], shapes: list[str],
                     limit: int = 4) -> str:
    """One line: the count of each kind of mismatch and its first ``limit`` keys."""
    def part(title: str, items: list[str]) -> str:
        more = f' and {len(items) - limit} more' if len(items) > limit else ''
        return f'{len(items)} {title} ({"; ".join(items[:limit])}{more})'

    parts = [part(t, items) for t, items in (('missing keys', missing), ('unexpected keys', unexpected),
                                              ('shape mismatches', shapes)) if items]
    hint = ' (fine-tuning on other classes: create_model(name, num_classes=N, checkpoint_path=...) adapts the head)' \
        if shapes else ''
    return f'checkpoint {path!r} does not fit {model_name}: {", ".join(parts)}{hint}'


def save_checkpoint(
        model_or_state: nn.Module | Mapping[str, torch.Tensor],
        path: str | os.PathLike,
        metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write weights as safetensors atomically: a temp file in the same folder, then ``os.replace``.

    A crash mid-write leaves the previous file intact. Shared tensors are cloned (safetensors refuses aliases).
    """
    path = Path(path)
    if path.suffix != '.safetensors':
        raise VisionmixError(f'save_checkpoint writes safetensors; name the file *.safetensors, not {path.name!r}')
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().to('cpu').contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: save_safetensors(tensors, tmp, metadata=dict(metadata) if metadata else None))


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a temp file in the same folder, which is flushed to disk
    and renamed over ``path`` (``os.replace`` is atomic). On any error, or a kill, ``path`` keeps its old content and
    the temp file is removed (on an error) or left as a hidden ``.NAME.*.tmp.SUFFIX`` (on a kill).

    The file gets the mode a plain ``open(path, 'w')`` would give (0644 under umask 022): ``mkstemp`` creates its
    temp file 0600, which would make run folders unreadable to anyone else."""
    path = Path(path)
    # the temp file keeps the suffix: some writers pick the format from it (torch.export wants .pt2)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=f'.tmp{path.suffix}', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH)
                 & ~_umask())
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
