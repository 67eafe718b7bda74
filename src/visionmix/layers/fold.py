"""Folding an eval-mode BatchNorm into the linear map next to it.

In eval mode a BatchNorm is a fixed per-channel affine ``y = x * scale + shift`` (its running statistics and affine
parameters), so it can be merged into the weights of a neighbouring linear layer or convolution instead of making a
pass of its own over the activation map:

* BN after a layer ``y = W x + b`` (:func:`fold_bn_after`): ``W' = scale * W`` (per output channel),
  ``b' = scale * b + shift``.
* BN before a linear layer (:func:`fold_bn_before`): ``W' = W * scale`` (per input channel), ``b' = b + W shift``.
  This holds for 1x1 convolutions and for any layer whose input channels are a fixed arrangement of the BN's
  channels (Hire-MLP's region folding repeats each channel over the region); not for a padded k x k conv, whose zero
  padding is not shifted.

The folded tensors are computed from the live parameters. :func:`cached_fold` memoises them while no gradient is
recorded (eval inference), keyed by the identity, storage and version counter of every source tensor and by the
number of optimizer steps taken in the process, so that an in-place update (``load_state_dict``, an optimizer step,
BN statistics) or a move to another device or dtype computes them afresh. The step count is needed because fused
optimizers (``torch.optim.AdamW(fused=True)``) write the parameters without bumping their version counters. With
gradients enabled, and under ``torch.export`` / ``torch.compile`` / fx tracing, they are recomputed on every call as
ordinary tensor ops (gradients then reach the BN parameters). A BN in training mode (batch statistics) or one without
running statistics is never folded (:func:`bn_folds`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import _symbolic_trace
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ['bn_folds', 'bn_scale_shift', 'fold_bn_after', 'fold_bn_before', 'fold_input_norm', 'bn_sources',
           'cached_fold', 'batch_norm_last', 'is_tracing', 'folded_conv_bn', 'conv_bn', 'contiguous_grad']

T = TypeVar('T')
# fx's symbolic tracing only (the general is_fx_tracing warns that it also covers torch.export)
_fx_tracing = getattr(_symbolic_trace, 'is_fx_symbolic_tracing', _symbolic_trace.is_fx_tracing)


class _OptimizerSteps:
    """Counts optimizer steps in this process (a global post-step hook): part of every memo key."""
    count = 0

    @classmethod
    def hook(cls, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        cls.count += 1


register_optimizer_step_post_hook(_OptimizerSteps.hook)


def is_tracing() -> bool:
    """True while torch.compile, torch.export, fx or the jit tracer records the model rather than running it."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or _fx_tracing()
            or torch.jit.is_tracing())


def bn_folds(bn: nn.Module) -> bool:
    """True when ``bn`` is a BatchNorm that normalises with its running statistics (eval mode), a fixed affine."""
    return isinstance(bn, _BatchNorm) and not bn.training and bn.running_mean is not None \
        and bn.running_var is not None


def bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel (eval mode)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_bn_after(weight: torch.Tensor, bias: torch.Tensor | None, bn: _BatchNorm
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(layer(x))`` for a linear layer / conv ``layer`` with ``weight`` (out, ...)."""
    scale, shift = bn_scale_shift(bn)
    weight = (weight.flatten(1) * scale[:, None]).view_as(weight)  # no shape arithmetic: fx-traceable
    return weight, shift if bias is None else bias * scale + shift


def fold_bn_before(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor,
                   repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, in) and bias of ``layer(x * scale + shift)`` for a linear layer on an input of ``in`` channels.

    Args:
        weight: (out, in) matrix (a 1x1 conv weight flattened).
        bias: (out,) or None.
        scale: Per-channel scale of the input affine, (C,).
        shift: Per-channel shift, (C,).
        repeat: The layer's input channels are ``C * repeat``, channel ``c * repeat + i`` holding channel ``c`` (a
            region folded into channels).
    """
    if repeat > 1:
        scale, shift = scale.repeat_interleave(repeat), shift.repeat_interleave(repeat)
    folded_bias = torch.mv(weight, shift)
    return weight * scale, folded_bias if bias is None else bias + folded_bias


def fold_input_norm(weight: torch.Tensor, bias: torch.Tensor | None, norm: _BatchNorm | None, repeat: int = 1
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`fold_bn_before` with the affine of the eval-mode BatchNorm ``norm``; unchanged when ``norm`` is None."""
    if norm is None:
        return weight, bias
    return fold_bn_before(weight, bias, *bn_scale_shift(norm), repeat=repeat)


def bn_sources(bn: nn.Module | None) -> tuple[Any, ...]:
    """What a fold of ``bn`` depends on, for :func:`cached_fold`'s key (empty for None)."""
    if bn is None:
        return ()
    return bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps


def _key(sources: Sequence[Any]) -> tuple[Any, ...] | None:
    key: list[Any] = [_OptimizerSteps.count]
    for s in sources:
        if isinstance(s, torch.Tensor):
            key.append((id(s), s.data_ptr(), s._version, s.dtype, s.device))
        elif s is None or isinstance(s, (int, float, bool, str)):
            key.append(s)
        else:  # an fx Proxy or anything else that cannot be keyed: no caching
            return None
    return tuple(key)


def cached_fold(owner: nn.Module, name: str, sources: Sequence[Any], compute: Callable[[], T]) -> T:
    """``compute()``, memoised on ``owner`` under ``name`` while its ``sources`` are unchanged and no gradient is
    recorded.

    In eval inference the folded weights of a layer are then computed once instead of on every call (hundreds of
    small ops per forward in a BN-heavy model). The memo is skipped when gradients are enabled (the fold must be
    differentiated), while compiling or exporting, and under fx tracing.

    Args:
        owner: Module that holds the memo (in its ``__dict__``, not its state dict).
        name: Slot of this fold in the memo.
        sources: Every tensor (and scalar) ``compute`` reads.
        compute: Builds the folded tensors.
    """
    if torch.is_grad_enabled() or is_tracing():
        return compute()
    key = _key(sources)
    if key is None:
        return compute()
    memo = owner.__dict__.setdefault('_fold_memo', {})
    hit = memo.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = compute()
    # the sources stay referenced by the memo, so no other tensor can take their ids while the entry lives
    memo[name] = (key, value, tuple(sources))
    return value


def folded_conv_bn(conv: nn.Conv2d, bn: _BatchNorm, owner: nn.Module,
                   memory_format: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` with the eval-mode ``bn`` folded into ``conv`` (memoised on ``owner``).

    Args:
        memory_format: Of the folded weight. ``torch.channels_last`` for a conv on channels-last input: oneDNN then
            uses the weight as it is (2-11% faster convs in Hire-MLP-Tiny, batch 8, 2 threads) and the output is
            channels-last whatever the input's layout.
    """
    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = fold_bn_after(conv.weight, conv.bias, bn)
        return weight.contiguous(memory_format=memory_format), bias

    return cached_fold(owner, 'conv_bn', (conv.weight, conv.bias, *bn_sources(bn), str(memory_format)), compute)


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor, owner: nn.Module) -> torch.Tensor:
    """``bn(conv(x))``; an eval-mode BatchNorm is folded into the conv weights (:func:`folded_conv_bn`) instead of
    making a pass of its own over the map."""
    if not bn_folds(bn):
        return bn(conv(x))
    weight, bias = folded_conv_bn(conv, bn, owner)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def batch_norm_last(bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn`` over the last dimension of ``x`` (a channels-last map or rows of features), with ``nn.BatchNorm``
    semantics (batch statistics in training, running statistics updated; running statistics in eval mode).

    Training runs PyTorch's NCHW kernel on a channels-first copy: its CPU kernel for channels-last input sums the
    statistics in a way that loses precision when a channel's mean is large next to its spread (the typical input
    after a ReLU), and in a deep BN network that made input gradients 100x less accurate than the NCHW kernel's.
    In eval mode it is one ``addcmul`` with the folded affine.
    """
    if bn_folds(bn):
        scale, shift = bn_scale_shift(bn)
        return torch.addcmul(shift, x, scale)
    return contiguous_grad(bn(x.movedim(-1, 1).contiguous())).movedim(1, -1).contiguous()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself; in the backward pass the gradient reaching ``x`` is made contiguous (one copy).

    For an NCHW BatchNorm output that the network goes on to use channels-last: the gradient then arrives as a
    channels-last view, and PyTorch's CPU BatchNorm backward with a channels-last gradient next to an NCHW input
    takes a slow mixed-layout path (measured 7-10 ms against 3.6 ms for the copy plus the NCHW kernel, batch 8 of
    64 x 56 x 56). Without a gradient to record, or while tracing, it is ``x`` unchanged.
    """
    if is_tracing() or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _ContiguousGrad.apply(x)
