"""Axial token shift and the shifted MLP built on it (UNeXt, Valanarasu & Patel, MICCAI 2022, arXiv:2203.04967).

The axial shift splits the channels into ``shift_size`` groups and moves group ``i`` by ``i - shift_size // 2``
positions along one spatial axis, filling the vacated positions with zeros (AS-MLP's axial shift without the
dilation). UNeXt's official code does it as: zero-pad the map by ``shift_size // 2`` on each side, split the
channels with ``torch.chunk(x, shift_size)``, ``torch.roll`` chunk ``i`` by ``i - shift_size // 2`` along the axis,
and crop the padding away; nothing rolls past the padding, so that is exactly a zero-filled shift. Here each group is
copied once, as a slice, into a zero tensor at its offset (no padded copy, no roll, no concatenation).

``torch.chunk`` sizes the groups as ``ceil(C / shift_size)`` (256 channels -> 52, 52, 52, 52, 48) and may return
fewer than ``shift_size`` groups for small C; the extra shifts then go unused, as in the official code.

Everything works on channels-last maps ``(B, H, W, C)``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import register_notrace_function

from .fused import activate, linear_residual

__all__ = ['axial_shift', 'AxialShiftMlp']


@register_notrace_function  # reason: group sizes and offsets come from the input shape
def axial_shift(x: torch.Tensor, shift_size: int, dim: int) -> torch.Tensor:
    """Shift channel group ``i`` of a ``(B, H, W, C)`` map by ``i - shift_size // 2`` along ``dim``, zero-filled.

    A shift of ``s`` means ``out[..., p, ...] = x[..., p - s, ...]`` (``torch.roll`` direction).

    Args:
        x: Map (B, H, W, C).
        shift_size: Number of channel groups; shifts run from ``-(shift_size // 2)`` to ``shift_size // 2``.
        dim: 1 shifts along the height, 2 along the width.
    """
    if dim not in (1, 2):
        raise ValueError(f'dim must be 1 (height) or 2 (width) of a (B, H, W, C) map, got {dim}')
    pad = shift_size // 2
    if pad == 0:
        return x
    size, channels = x.shape[dim], x.shape[-1]
    group = -(-channels // shift_size)  # torch.chunk's group size
    out = torch.zeros_like(x)
    # one slice copy per group: out[p] = x[p - s] where it exists, zeros elsewhere
    for i, s in enumerate(range(-pad, pad + 1)):
        c0, c1 = i * group, min((i + 1) * group, channels)
        n = size - abs(s)
        if c0 >= channels:
            break
        if n > 0:
            out.narrow(dim, max(s, 0), n)[..., c0:c1].copy_(x.narrow(dim, max(-s, 0), n)[..., c0:c1])
    return out


class AxialShiftMlp(nn.Module):
    """UNeXt's shifted MLP: shift along H -> fc1 -> depthwise 3x3 conv -> act -> shift along W -> fc2.

    Args:
        dim: Input / output channels.
        hidden_dim: Hidden channels (UNeXt uses ``dim``).
        shift_size: Channel groups of each axial shift (UNeXt: 5, i.e. shifts -2..2).
        act_layer: Activation after the depthwise conv.
        drop: Dropout after the activation and after fc2.
        dilation: Dilation of the depthwise conv (a backbone stage past its output stride); the shifts stay in
            positions of the map.
    """

    def __init__(
            self,
            dim: int,
            hidden_dim: int | None = None,
            shift_size: int = 5,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            drop: float = 0.,
            dilation: int = 1,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.shift_size = shift_size
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=dilation, dilation=dilation, groups=hidden_dim)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C); plus ``residual`` if given, added by fc2's GEMM when dropout is inactive."""
        x = self.fc1(axial_shift(x, self.shift_size, dim=1))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = activate(self.act, x)
        x = axial_shift(self.drop(x), self.shift_size, dim=2)
        if residual is not None and (self.drop.p == 0 or not self.training):
            return linear_residual(residual, x, self.fc2.weight, self.fc2.bias)
        x = self.drop(self.fc2(x))
        return x if residual is None else residual + x

    def extra_repr(self) -> str:
        return f'shift_size={self.shift_size}'
