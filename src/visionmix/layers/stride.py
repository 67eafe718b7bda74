"""Output stride and dilation: the stage plan every hierarchical family shares.

A backbone built with ``output_stride=16`` (or 8) keeps the resolution of the stages that would go below it: their
downsampling stride becomes 1, and the ``k x k`` convolutions from there on are dilated so that they keep seeing
(about) the neighbourhood they were trained on. ``output_stride=32`` is the unchanged model. Only strides, dilations
and paddings change, never a parameter, so a checkpoint loads into any output stride.

Two dilation schedules (``dilation=``):

* ``'constant'`` (DeepLab, timm): every conv of a dilated stage gets the stage's rate ``R`` (2 at output stride
  16; 2 then 4 at output stride 8), except the op that would have strided (the stage's downsampler, or block 0's
  strided conv), which keeps the previous stage's rate: timm's ``first_dilation``.
* ``'hdc'`` (Wang et al. 2018, "Understanding Convolution for Semantic Segmentation"): block ``j`` of a dilated
  stage of ``n`` blocks gets rate ``r_j`` of the rising sawtooth
  ``visionmix.dilation.hdc_rates(n, max_rate=2 * R + 1, cycle=n)``: ``1, 2, 5, 1, 2, 5, ...`` at ``R = 2`` and
  ``1, 2, 5, 9, 1, 2, ...`` at ``R = 4`` (the paper's ResNet group). A group starts at 1 and rises to at most
  ``2 R + 1``, so its mean rate (8/3 at ``R = 2``, 17/4 at ``R = 4``) is at least ``R``: each whole group sees at
  least the constant schedule's receptive field, and every stage's rates pass :func:`visionmix.dilation.hdc_check`
  (no gridding). Block 0's strided conv / the stage's downsampler takes ``r_0 = 1``.

:func:`plan_stages` turns (stage strides, depths) into per-stage strides, reductions and rates; each family applies
them to its own layers.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn

from ..dilation import hdc_rates
from ..errors import ConfigError

__all__ = ['OUTPUT_STRIDES', 'DILATIONS', 'StagePlan', 'check_output_stride', 'hdc_stage_rates', 'plan_stages',
           'set_conv_dilation']

OUTPUT_STRIDES = (8, 16, 32)
DILATIONS = ('constant', 'hdc')


@dataclass(frozen=True)
class StagePlan:
    """How one stage runs at the requested output stride.

    Attributes:
        stride: Stride of the stage's downsampling: its own, or 1 once the output stride is reached.
        reduction: Real reduction (input size / map size) of the stage's maps.
        rate: The stage's constant rate ``R`` (1 for a stage that keeps its stride).
        first_rate: Dilation of the op that would have strided (the downsampler, block 0's strided conv).
        rates: Dilation of the ``k x k`` convs of each block (of block 0 after its strided conv).
    """

    stride: int
    reduction: int
    rate: int
    first_rate: int
    rates: tuple[int, ...]

    @property
    def dilated(self) -> bool:
        return self.rate > 1


def check_output_stride(output_stride: object, dilation: object = 'constant') -> tuple[int, str]:
    """Validated ``(output_stride, dilation)``; a one-line :class:`ConfigError` for anything else.

    ``None`` means the default (32, ``'constant'``), as in ``timm.create_model``, which drops keyword arguments set
    to None.
    """
    output_stride = 32 if output_stride is None else output_stride
    dilation = 'constant' if dilation is None else dilation
    if isinstance(output_stride, bool) or not isinstance(output_stride, numbers.Integral) \
            or int(output_stride) not in OUTPUT_STRIDES:
        raise ConfigError(f'output_stride must be 8, 16 or 32 (the reduction of the last feature map), got '
                          f'{output_stride!r}')
    if dilation not in DILATIONS:
        raise ConfigError(f"dilation must be 'constant' (one rate per dilated stage, DeepLab) or 'hdc' (a "
                          f"per-block sawtooth without gridding), got {dilation!r}")
    return int(output_stride), str(dilation)


def hdc_stage_rates(num_blocks: int, rate: int) -> tuple[int, ...]:
    """HDC rates of the ``num_blocks`` blocks of a stage whose constant rate is ``rate`` (see the module docstring).

    ``hdc_stage_rates(6, 2) == (1, 2, 5, 1, 2, 5)``, ``hdc_stage_rates(3, 4) == (1, 2, 5)``, all ones for rate 1.
    """
    if num_blocks == 0:
        return ()
    if rate == 1:
        return (1,) * num_blocks
    return tuple(hdc_rates(num_blocks, max_rate=2 * rate + 1, cycle=num_blocks))


def plan_stages(
        strides: Sequence[int],
        depths: Sequence[int],
        output_stride: int = 32,
        dilation: str = 'constant',
        stem_reduction: int = 1,
) -> list[StagePlan]:
    """Per-stage strides, reductions and dilation rates for a backbone run at ``output_stride``.

    Args:
        strides: Each stage's own downsampling stride (1 for a stage that does not downsample).
        depths: Blocks per stage.
        output_stride: 8, 16 or 32: the largest reduction any stage may reach.
        dilation: ``'constant'`` or ``'hdc'`` (see the module docstring).
        stem_reduction: Reduction of the stem, before the first stage.

    Raises:
        ConfigError: A bad ``output_stride`` / ``dilation``, or a stem that already reduces below the output stride.
    """
    output_stride, dilation = check_output_stride(output_stride, dilation)
    if stem_reduction > output_stride:
        raise ConfigError(f'the stem already reduces the input by {stem_reduction}: output_stride={output_stride} is '
                          f'below it (use {stem_reduction} or more)')
    reduction, rate = stem_reduction, 1
    plans = []
    for stride, depth in zip(strides, depths):
        previous = rate
        if reduction * stride > output_stride:  # keep the resolution, dilate what follows (timm's rule)
            rate *= stride
            stride = 1
        else:
            reduction *= stride
        if dilation == 'hdc' and rate > 1:
            rates = hdc_stage_rates(depth, rate)
            first = 1
        else:
            rates, first = (rate,) * depth, previous
        plans.append(StagePlan(stride=stride, reduction=reduction, rate=rate, first_rate=first, rates=rates))
    return plans


def set_conv_dilation(conv: nn.Conv2d, rate: int) -> None:
    """Dilate a stride-1, odd-kernel conv in place, with the padding that keeps the map size."""
    if any(s != 1 for s in conv.stride) or any(k % 2 == 0 for k in conv.kernel_size):
        raise ValueError(f'only stride-1, odd-kernel convs keep their size when dilated, got {conv}')
    conv.dilation = (rate, rate)
    conv.padding = tuple(rate * (k - 1) // 2 for k in conv.kernel_size)
