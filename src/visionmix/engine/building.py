"""Building the model a run trains: sized for the run's input, checked on it before any training step."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError, UnknownModelError, VisionmixError, first_line
from ..registry import ModelArgumentError, create_model, model_card, takes_img_size
from ..sizes import Size, hw, size_str

__all__ = ['TrainError', 'resolve_weights', 'build_model', 'data_config', 'input_error', 'smallest_input_size',
           'build_for_input']


class TrainError(VisionmixError):
    """A run that cannot start or resume as asked."""


WEIGHT_FILES = ('best.safetensors', 'last.safetensors')


def resolve_weights(path: str | Path) -> Path:
    """A weights file, or a run directory's ``best.safetensors`` (else ``last.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise TrainError(f'{path} holds no best.safetensors or last.safetensors (is it a visionmix run directory?)')
    if not path.is_file():
        raise TrainError(f'checkpoint {path} does not exist')
    return path


def build_model(name: str, num_classes: int | None, img_size: Size, model_kwargs: dict[str, Any] | None = None,
                drop_path: float = 0.0) -> nn.Module:
    """``create_model`` with the dataset's classes, sized for ``img_size`` when the model takes ``img_size``.

    ``num_classes=None`` leaves the builder's default (tasks whose models count outputs differently pass theirs in
    ``model_kwargs``).
    """
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs.setdefault('num_classes', num_classes)
    if drop_path:
        kwargs.setdefault('drop_path_rate', drop_path)
    if takes_img_size(name):
        kwargs.setdefault('img_size', img_size)
    return create_model(name, **kwargs)


def data_config(model: nn.Module, img_size: Size, interpolation: str = 'bicubic') -> dict[str, Any]:
    """Mean / std from the model's pretrained_cfg (timm's resolve_data_config) at the training size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return dict(input_size=(3, *hw(img_size)), mean=tuple(cfg['mean']), std=tuple(cfg['std']),
                interpolation=interpolation, crop_pct=1.0)


Check = Callable[[nn.Module, int], 'str | None']


def runs_on(model: nn.Module, img_size: Size) -> str | None:
    """The plainest check: the model takes one zeros image of ``img_size`` (whatever it returns)."""
    device = next(model.parameters(), torch.empty(0)).device
    model(torch.zeros(1, 3, *hw(img_size), device=device))
    return None


def input_error(model: nn.Module, img_size: Size, check: Check = runs_on) -> str | None:
    """None if ``check(model, img_size)`` (eval mode, no grad) passes; else what went wrong, in one line. Leaves the
    model's mode and every RNG as they were."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return check(model, img_size)
    except VisionmixError as e:  # e.g. a token MLP refusing another grid: its own words say it best
        return str(e).splitlines()[0]
    except Exception as e:  # noqa: BLE001 - layers fail on a too-small input with many error types
        return first_line(e)
    finally:
        model.train(was_training)


def smallest_input_size(build: Callable[[int], nn.Module], start: int, limit: int,
                        check: Check = runs_on) -> int | None:
    """Smallest side in ``[start, limit]`` that the model ``build(side)`` can be built for and passes
    ``check(model, side)``, or None.

    Doubles from ``start`` to the first side that works, then bisects: exact when bigger inputs never fail once a
    side works, which holds for every registered model (tests/test_trainable.py trains each at the side found).
    """
    def works(side: int) -> bool:
        # building draws init weights: keep the run's RNG untouched; probes at sizes that fail may warn, say nothing
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                model = build(side)
            except Exception:  # noqa: BLE001 - e.g. a token-mixing MLP built for zero tokens
                return False
            return input_error(model, side, check) is None

    if works(start):
        return start
    bad, good = start, None
    while good is None:
        if bad >= limit:
            return None
        side = min(2 * bad, limit)
        if works(side):
            good = side
        else:
            bad = side
    while good - bad > 1:
        mid = (bad + good) // 2
        bad, good = (bad, mid) if works(mid) else (mid, good)
    return good


def build_for_input(name: str, img_size: Size, build: Callable[[Size], nn.Module],
                    check: Check = runs_on) -> nn.Module:
    """``build(img_size)``, checked before any training: a model that cannot be built for or run on ``img_size``
    images (``check(model, side)`` returns what is wrong) raises a one-line :class:`TrainError` naming the
    ``--img-size`` that works, found by rebuilding. Errors in the user's own options (a bad model argument, a
    checkpoint that cannot be fetched) are raised as they are: they are not about the size."""
    try:
        model = build(img_size)
    except VisionmixError as e:
        if not _size_related(e):
            raise
        model, error = None, f'it cannot be built for it ({first_line(e)})'
    except Exception as e:  # noqa: BLE001 - layers reject a too-small size with many error types
        model, error = None, f'it cannot be built for it ({first_line(e)})'
    else:
        error = input_error(model, img_size, check)
    if error is None:
        return model
    card_side, longest = max(model_card(name).input_size[1:]), max(hw(img_size))
    side = smallest_input_size(build, longest + 1, max(card_side, 2 * longest), check)
    if side is None:
        raise TrainError(f'{name} cannot train on {size_str(img_size)} input: {error}')
    raise TrainError(f'{name} cannot take {size_str(img_size)} input (needs >= {side}x{side}): use --img-size '
                     f'{side}')


def _size_related(error: VisionmixError) -> bool:
    """A model-building error that a size can cause (anything but argument, checkpoint and name errors)."""
    return not isinstance(error, (CheckpointError, UnknownModelError, ModelArgumentError, TrainError))
