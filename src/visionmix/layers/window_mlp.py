"""Windowed spatial MLP: token mixing inside (shifted) non-overlapping windows, on channels-last maps.

The token mixer of Swin-MLP (`Swin Transformer`, arXiv:2103.14030, "Swin-Mixer") and of SPACH's multi-stage MLP: the
map is cut into ``wh x ww`` windows and, per head (a group of ``C / num_heads`` channels), the ``wh * ww`` tokens of
each window are mixed by one learned ``(wh*ww) x (wh*ww)`` matrix plus a bias, shared by every window and by the
channels of that head.

A shifted window is not a cyclic roll here (there is no attention mask to undo the wrap-around): the map is
zero-padded by ``window - shift`` before and ``shift`` after, partitioned, mixed and cropped, as the official code
does. On top of that the map is padded up to a whole number of windows, so any height and width work; where the
sizes already divide, that extra padding is zero and the computation is exactly the unpadded one. That is the
definition (and the autograd path); inference never forms the padded tokens, which add nothing to a mix and whose
outputs are cropped: each window is mixed over its map tokens by a sub-block of the weights (``window_spatial_mix``).

Everything works on ``(B, H, W, C)`` tensors.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, to_2tuple, trunc_normal_

from ..errors import VisionmixError
from .scratch import scratch, scratch_active

__all__ = ['stage_window', 'window_pad_sizes', 'pad_to_windows', 'window_partition', 'window_reverse',
           'window_spatial_mix', 'WindowSpatialMlp']


def window_pad_sizes(size: int, window: int, shift: int = 0) -> tuple[int, int]:
    """Zero padding (before, after) along one axis so that windows shifted by ``shift`` tile it.

    ``before`` is ``window - shift`` for a shifted window (as in the official Swin-MLP) and 0 otherwise; ``after``
    completes the padded length to a multiple of ``window`` (``shift`` when ``size`` divides by ``window``).

    Args:
        size: Length of the axis.
        window: Window length along it.
        shift: Window shift, ``0 <= shift < window``.
    """
    if not 0 <= shift < window:
        raise ValueError(f'shift must be in [0, {window}), got {shift}')
    before = (window - shift) % window
    after = -(size + before) % window
    return before, after


@register_notrace_function  # reason: pad sizes come from the input shape, a Proxy under FX
def pad_to_windows(x: torch.Tensor, window_size: tuple[int, int], shift_size: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-pad a ``(B, H, W, C)`` map so that (shifted) windows tile it; a no-op view when nothing is needed.

    Args:
        x: Map of shape (B, H, W, C).
        window_size: (wh, ww).
        shift_size: (sh, sw), see :func:`window_pad_sizes`.

    Returns:
        The padded map (B, Hp, Wp, C); the original sits at offset ``window_pad_sizes(...)[0]`` on each axis.
    """
    top, bottom = window_pad_sizes(x.shape[1], window_size[0], shift_size[0])
    left, right = window_pad_sizes(x.shape[2], window_size[1], shift_size[1])
    if top or bottom or left or right:
        x = F.pad(x, (0, 0, left, right, top, bottom))
    return x


def window_partition(x: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """Cut a ``(B, H, W, C)`` map whose sizes divide by the window into ``(B * nW, wh, ww, C)`` windows.

    Windows come in row-major order per image, tokens in row-major order per window.
    """
    B, H, W, C = x.shape
    wh, ww = window_size
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)


@register_notrace_function  # reason: H, W are Proxies under FX
def window_reverse(windows: torch.Tensor, window_size: tuple[int, int], H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh, ww, C)`` windows back to a ``(B, H, W, C)`` map."""
    wh, ww = window_size
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


@register_notrace_function  # reason: padding and window counts depend on the input shape
def window_spatial_mix(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        window_size: tuple[int, int],
        shift_size: tuple[int, int] = (0, 0),
        residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mix the tokens of each (shifted) window per head: ``out[i] = sum_j weight[h, i, j] * x[j] + bias[h, i]``.

    With autograd (or a non-contiguous input) padding, window partition and the split into heads are fused into one
    permute, so the map is copied once into a ``(heads, tokens, windows * head_dim)`` layout, mixed by a single
    batched matmul over heads, and copied back with the padding cropped away.

    Inference skips the padding altogether (:func:`_mix_map_tokens`): padded tokens are zeros, so they add nothing
    to a mix, and their own outputs are cropped. Windows are grouped by the part of them that lies inside the map
    (at most 3 x 3 groups: first, inner and last windows along each axis) and each group is mixed by the matching
    sub-block of ``weight``, over map tokens only. A shifted Swin-MLP block at stage 3 (16 x 16 map, window 8,
    padded to 24 x 24) then does a quarter of the multiply-adds, with no pad or crop copies.

    Args:
        x: Map of shape (B, H, W, C), C divisible by the number of heads.
        weight: (num_heads, wh * ww, wh * ww) token-mixing matrices, output token first.
        bias: (num_heads, wh * ww) or None.
        window_size: (wh, ww).
        shift_size: (sh, sw), each ``0 <= s < window``; zero-padding of ``w - s`` before and ``s`` after.
        residual: A (B, H, W, C) map added to the result.

    Returns:
        The mixed map (plus ``residual``), (B, H, W, C); with autograd a crop of a larger buffer when padding was
        needed (not contiguous).
    """
    if scratch_active(x) and x.is_contiguous():
        return _mix_map_tokens(x, weight, bias, window_size, shift_size, residual)
    B, H, W, C = x.shape
    wh, ww = window_size
    num_heads, tokens = weight.shape[0], wh * ww
    top, bottom = window_pad_sizes(H, wh, shift_size[0])
    left, right = window_pad_sizes(W, ww, shift_size[1])
    Hp, Wp = top + H + bottom, left + W + right
    nh, nw = Hp // wh, Wp // ww
    # (B, nh, wh, nw, ww, heads, d) -> (heads, wh, ww, B, nh, nw, d): tokens of a window on dim 1, all else on dim 2
    x = pad_to_windows(x, window_size, shift_size).view(B, nh, wh, nw, ww, num_heads, C // num_heads)
    x = x.permute(5, 2, 4, 0, 1, 3, 6).reshape(num_heads, tokens, -1)
    x = torch.bmm(weight, x) if bias is None else torch.baddbmm(bias.unsqueeze(-1), weight, x)
    x = x.view(num_heads, wh, ww, B, nh, nw, -1).permute(3, 4, 1, 5, 2, 0, 6)  # (B, nh, wh, nw, ww, heads, d)
    x = x.reshape(B, Hp, Wp, C)[:, top:top + H, left:left + W]
    return x if residual is None else residual + x


def _window_groups(size: int, window: int, shift: int) -> list[tuple[int, int, int, int]]:
    """Windows along one axis grouped by the part of them inside the map: ``(first map position, windows, offset in
    the window, positions per window)``; the map positions of a group are consecutive."""
    before, after = window_pad_sizes(size, window, shift)
    groups: list[tuple[int, int, int, int]] = []
    for r in range((before + size + after) // window):
        lo, hi = max(0, r * window - before), min(size, (r + 1) * window - before)
        offset = lo - (r * window - before)
        if groups and groups[-1][2:] == (offset, hi - lo):
            groups[-1] = (groups[-1][0], groups[-1][1] + 1, offset, hi - lo)
        else:
            groups.append((lo, 1, offset, hi - lo))
    return groups


@functools.lru_cache(maxsize=64)
def _map_token_plan(B: int, H: int, W: int, heads: int, window_size: tuple[int, int], shift_size: tuple[int, int],
                    device: torch.device) -> tuple[torch.Tensor, tuple[tuple[Any, ...], ...]]:
    """The gather order and window groups of :func:`_mix_map_tokens`.

    Returns:
        Row indices into the ``(B * H * W * heads, head_dim)`` view of the map that lay out, group after group, each
        group's tokens as ``(heads, window tokens, B, windows down, windows across)``; and per group ``(its rows,
        its token indices within a window, those tokens' (output, input) pairs as indices into a flattened
        ``(tokens, tokens)`` matrix, (first row, windows down, rows per window), (first column, windows across,
        columns per window))``.
    """
    (wh, ww), (sh, sw) = window_size, shift_size
    with torch.inference_mode(False):  # normal tensors, usable inside and outside inference mode
        rows = torch.arange(B * H * W * heads, device=device).view(B, H, W, heads)
        order, groups, start = [], [], 0
        for y0, nh, oh, lh in _window_groups(H, wh, sh):
            for x0, nw, ow, lw in _window_groups(W, ww, sw):
                part = rows[:, y0:y0 + nh * lh, x0:x0 + nw * lw].reshape(B, nh, lh, nw, lw, heads)
                order.append(part.permute(5, 2, 4, 0, 1, 3).reshape(-1))
                in_window = ((torch.arange(oh, oh + lh, device=device) * ww)[:, None]
                             + torch.arange(ow, ow + lw, device=device)).reshape(-1)
                pairs = (in_window[:, None] * (wh * ww) + in_window).reshape(-1)
                groups.append((slice(start, start + len(order[-1])), in_window, pairs, (y0, nh, lh), (x0, nw, lw)))
                start += len(order[-1])
        return torch.cat(order), tuple(groups)


def _mix_map_tokens(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, window_size: tuple[int, int],
                    shift_size: tuple[int, int], residual: torch.Tensor | None) -> torch.Tensor:
    """:func:`window_spatial_mix` in inference on a contiguous map, over the map's own tokens only (no padding).

    One gather of ``head_dim``-long rows lays every window group out as ``(heads, tokens, B * windows * head_dim)``
    (1.1-2.3x faster than the 7-dim permuting copy, which steps through its strides once per row); each group is one
    batched matmul with its sub-block of ``weight``, into a scratch buffer; the result is added to ``residual`` (or
    copied) straight into the group's block of the fresh output.
    """
    B, H, W, C = x.shape
    heads, tokens = weight.shape[0], weight.shape[1]
    d = C // heads
    index, groups = _map_token_plan(B, H, W, heads, tuple(window_size), tuple(shift_size), x.device)
    gathered = torch.index_select(x.view(-1, d), 0, index, out=scratch('window.tokens', (len(index), d), x))
    mixed = scratch('window.mixed', gathered.shape, x)
    out = torch.empty_like(x)
    for rows, in_window, pairs, (y0, nh, lh), (x0, nw, lw) in groups:
        n = len(in_window)
        part_in, part_out = gathered[rows].view(heads, n, -1), mixed[rows].view(heads, n, -1)
        # a window cut by the map border mixes its map tokens with the matching sub-block of the weights, taken by
        # one gather from the flattened matrices (4-7x faster than indexing rows, then columns)
        w = weight if n == tokens else weight.flatten(1).index_select(1, pairs).view(heads, n, n)
        if bias is None:
            torch.bmm(w, part_in, out=part_out)
        else:
            b = bias if n == tokens else bias.index_select(1, in_window)
            torch.baddbmm(b.unsqueeze(-1), w, part_in, out=part_out)
        # (heads, lh, lw, B, nh, nw, d) -> (B, nh, lh, nw, lw, heads, d): the group's block of the map
        result = part_out.view(heads, lh, lw, B, nh, nw, d).permute(3, 4, 1, 5, 2, 0, 6)
        block = (slice(None), slice(y0, y0 + nh * lh), slice(x0, x0 + nw * lw))
        target = out[block].view(B, nh, lh, nw, lw, heads, d)
        if residual is None:
            target.copy_(result)
        else:
            torch.add(residual[block].view(B, nh, lh, nw, lw, heads, d), result, out=target)
    return out


class WindowSpatialMlp(nn.Module):
    """Multi-head token mixing inside (shifted) windows, on ``(B, H, W, C)`` maps.

    Parameters are ``weight`` (num_heads, wh*ww, wh*ww), output token first, and ``bias`` (num_heads, wh*ww). The
    official Swin-MLP stores the same numbers as a grouped ``Conv1d`` (weight ``[heads*wh*ww, wh*ww, 1]``, bias
    ``[heads*wh*ww]``); a plain reshape converts between the two.

    Args:
        dim: Channels C.
        num_heads: Channel groups, each with its own mixing matrix; C must divide by it.
        window_size: Window (wh, ww) or one int.
        shift_size: Shift (sh, sw) or one int; 0 for plain windows.
        bias: Learn a per-head, per-token bias.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int | tuple[int, int] = 7,
            shift_size: int | tuple[int, int] = 0,
            bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise VisionmixError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.dim = dim
        self.num_heads = num_heads
        self.window_size: tuple[int, int] = tuple(to_2tuple(window_size))
        self.shift_size: tuple[int, int] = tuple(to_2tuple(shift_size))
        for w, s in zip(self.window_size, self.shift_size):
            if not 0 <= s < w:
                raise VisionmixError(f'shift {self.shift_size} must be in [0, window {self.window_size})')
        tokens = self.window_size[0] * self.window_size[1]
        self.weight = nn.Parameter(torch.empty(num_heads, tokens, tokens))
        self.bias = nn.Parameter(torch.empty(num_heads, tokens)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as the official Conv1d init: trunc_normal(.02) weights, zero bias
        trunc_normal_(self.weight, std=.02)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C); plus ``residual`` if given (see :func:`window_spatial_mix`)."""
        return window_spatial_mix(x, self.weight, self.bias, self.window_size, self.shift_size, residual)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, ' \
               f'shift_size={self.shift_size}'


def stage_window(
        grid_size: Sequence[int],
        window_size: int,
        run_grid_size: Sequence[int] | None = None,
) -> tuple[int, int]:
    """(window, shift of the odd blocks) of a stage, as Swin-MLP decides it from its build-time map size.

    A map no larger than the window is one window: no partition, nothing to shift.

    Args:
        grid_size: The stage's token grid at the build size and output stride 32; it sizes the window, hence the
            weights.
        window_size: Window side before clamping to small maps.
        run_grid_size: The grid the stage runs on when a smaller output stride keeps it larger (a dilated stage).
            The window stays the one ``grid_size`` gives (same weights), and the odd blocks shift by half of it when
            that larger map holds more than one window.
    """
    if min(grid_size) <= window_size:
        window, shift = min(grid_size), 0
    else:
        window, shift = window_size, window_size // 2
    if run_grid_size is not None and min(run_grid_size) > window:
        shift = window // 2
    return window, shift
