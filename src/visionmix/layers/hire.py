"""Hire module: hierarchical rearrangement token mixing (Hire-MLP, Guo et al., CVPR 2022, arXiv:2108.13341).

An NCHW spatial mixer made of three branches whose outputs are blended by a learned, per-channel softmax:

* height / width: tokens are grouped into regions of ``region_size`` rows (columns); each region is folded into
  channels and mixed by a channel MLP (inner-region rearrangement). Before folding, the map is cyclically shifted by
  ``step`` along the axis so that regions straddle the previous block's region borders (cross-region rearrangement).
* channel: a 1x1 convolution.

The rearrangement works at any size: maps whose size is not a multiple of ``region_size`` are padded circularly at
the end (wrapping more than once when the map is smaller than the pad), and the padding is cropped after mixing.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Mlp, register_notrace_function

__all__ = ['circular_take', 'region_fold', 'region_unfold', 'RegionMlp', 'HireMlp', 'hire_step']


def hire_step(block_idx: int, step_stride: int, step_dilation: int) -> int:
    """Cross-region shift of block ``block_idx`` of a stage: ``(j % step_stride) * step_dilation`` (Hire-MLP v2)."""
    return (block_idx % step_stride) * step_dilation


@register_notrace_function  # python control flow on sizes: keep it a leaf for torch.fx
def circular_take(x: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    """``length`` consecutive entries of ``x`` along ``dim`` starting at ``start``, wrapping around the end.

    Equals ``x.index_select(dim, (start + arange(length)) % n)`` but copies contiguous runs instead of gathering,
    and returns a view (no copy at all) when the range does not wrap.
    """
    n = x.shape[dim]
    start = start % n
    if start + length <= n:
        return x.narrow(dim, start, length)
    parts = []
    while length > 0:
        take = min(n - start, length)
        parts.append(x.narrow(dim, start, take))
        length -= take
        start = 0
    return torch.cat(parts, dim)


def region_fold(x: torch.Tensor, region_size: int, step: int = 0, dim: int = 2) -> torch.Tensor:
    """Inner- and cross-region rearrangement: fold regions along ``dim`` (2 = height, 3 = width) into channels.

    The map is cyclically shifted by ``+step`` along ``dim`` (``torch.roll`` semantics), circularly padded at the end
    to a multiple of ``region_size`` ``p``, and regrouped so that entry ``i`` of region ``r`` of channel ``c`` lands
    in channel ``c * p + i`` at position ``r``.

    Args:
        x: (B, C, H, W).
        region_size: Tokens per region ``p``.
        step: Cyclic shift applied before folding.
        dim: 2 folds rows (-> (B, C*p, ceil(H/p), W)), 3 folds columns (-> (B, C*p, H, ceil(W/p))).
    """
    B, C, H, W = x.shape
    p = region_size
    n = x.shape[dim]
    regions = -(-n // p)
    # roll by +step then pad circularly == read indices (j - step) mod n for j in [0, regions * p)
    x = circular_take(x, dim, -step, regions * p)
    if dim == 2:
        return x.reshape(B, C, regions, p, W).transpose(2, 3).reshape(B, C * p, regions, W)
    return x.reshape(B, C, H, regions, p).permute(0, 1, 4, 2, 3).reshape(B, C * p, H, regions)


def region_unfold(x: torch.Tensor, region_size: int, size: int, step: int = 0, dim: int = 2) -> torch.Tensor:
    """Inverse of :func:`region_fold`: channels back to regions, crop the padding to ``size``, undo the shift.

    Args:
        x: (B, C*p, R, W) for ``dim=2`` or (B, C*p, H, R) for ``dim=3``.
        region_size: Tokens per region ``p``.
        size: Length of ``dim`` before folding.
        step: The shift :func:`region_fold` applied.
        dim: 2 (height) or 3 (width).
    """
    B, Cp, H, W = x.shape
    p = region_size
    C = Cp // p
    if dim == 2:
        x = x.reshape(B, C, p, H, W).transpose(2, 3).reshape(B, C, H * p, W)
    else:
        x = x.reshape(B, C, p, H, W).permute(0, 1, 3, 4, 2).reshape(B, C, H, W * p)
    # crop to ``size`` then roll by -step == read indices (j + step) mod size
    return circular_take(x.narrow(dim, 0, size), dim, step, size)


class RegionMlp(nn.Module):
    """Channel MLP over regions folded into channels: (C*p) -> C/2 -> BN -> ReLU -> (C*p), along one axis."""

    def __init__(self, dim: int, region_size: int, step: int = 0, axis: int = 2) -> None:
        """
        Args:
            dim: Channels ``C`` of the input map.
            region_size: Tokens per region ``p``.
            step: Cyclic shift for the cross-region rearrangement.
            axis: 2 mixes along the height, 3 along the width.
        """
        super().__init__()
        if axis not in (2, 3):
            raise ValueError(f'axis must be 2 (height) or 3 (width), got {axis}')
        self.region_size = region_size
        self.step = step
        self.axis = axis
        hidden = dim // 2
        # fc1 has no bias: the BatchNorm right after it would cancel one
        self.fc1 = nn.Conv2d(dim * region_size, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, dim * region_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[self.axis]
        x = region_fold(x, self.region_size, self.step, self.axis)
        x = self.fc2(self.act(self.norm(self.fc1(x))))
        return region_unfold(x, self.region_size, size, self.step, self.axis)

    def extra_repr(self) -> str:
        return f'region_size={self.region_size}, step={self.step}, axis={self.axis}'


class HireMlp(nn.Module):
    """Hire token mixer: height, width and channel branches blended by a split-attention style reweighting.

    ``out = proj(h * a_h + w * a_w + c * a_c)`` where ``(a_h, a_w, a_c)`` is a softmax over the three branches,
    per channel, predicted by a small MLP from the spatial mean of ``h + w + c``. Input and output are (B, C, H, W)
    with any H, W.
    """

    def __init__(self, dim: int, region_size: int = 2, step: int = 0, proj_drop: float = 0.) -> None:
        """
        Args:
            dim: Channels.
            region_size: Tokens per region for the height and width branches.
            step: Cyclic shift of the cross-region rearrangement (0 disables it).
            proj_drop: Dropout after the output projection.
        """
        super().__init__()
        self.dim = dim
        self.height = RegionMlp(dim, region_size, step, axis=2)
        self.width = RegionMlp(dim, region_size, step, axis=3)
        self.channel = nn.Conv2d(dim, dim, 1)
        self.reweight = Mlp(dim, dim // 4, dim * 3, act_layer=nn.GELU, use_conv=True)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        h = self.height(x)
        w = self.width(x)
        c = self.channel(x)
        a = self.reweight((h + w + c).mean((2, 3), keepdim=True))
        # reweight output channel c * 3 + k weights branch k of channel c
        a = a.reshape(B, C, 3, 1, 1).softmax(dim=2)
        x = h * a[:, :, 0] + w * a[:, :, 1] + c * a[:, :, 2]
        return self.proj_drop(self.proj(x))
