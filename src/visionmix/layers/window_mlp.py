"""Windowed spatial MLP: token mixing inside (shifted) non-overlapping windows, on channels-last maps.

The token mixer of Swin-MLP (`Swin Transformer`, arXiv:2103.14030, "Swin-Mixer") and of SPACH's multi-stage MLP: the
map is cut into ``wh x ww`` windows and, per head (a group of ``C / num_heads`` channels), the ``wh * ww`` tokens of
each window are mixed by one learned ``(wh*ww) x (wh*ww)`` matrix plus a bias, shared by every window and by the
channels of that head.

A shifted window is not a cyclic roll here (there is no attention mask to undo the wrap-around): the map is
zero-padded by ``window - shift`` before and ``shift`` after, partitioned, mixed and cropped, as the official code
does. On top of that the map is padded up to a whole number of windows, so any height and width work; where the
sizes already divide, that extra padding is zero and the computation is exactly the unpadded one.

Everything works on ``(B, H, W, C)`` tensors.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

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

    Padding, window partition and the split into heads are fused into one permute, so the map is copied once into
    a ``(heads, tokens, windows * head_dim)`` layout, mixed by a single batched matmul over heads, and copied once
    back; padded positions are cropped away. With ``residual`` (a contiguous (B, H, W, C) map) the result is
    ``residual + mix``; where no crop is needed that add reads the mixed windows in place, so the copy back is the
    add itself. In inference the padded map, the token layout and (with ``residual``) the mixed tokens are scratch
    buffers (:mod:`visionmix.layers.scratch`): only the result is allocated.

    Args:
        x: Map of shape (B, H, W, C), C divisible by the number of heads.
        weight: (num_heads, wh * ww, wh * ww) token-mixing matrices, output token first.
        bias: (num_heads, wh * ww) or None.
        window_size: (wh, ww).
        shift_size: (sh, sw), each ``0 <= s < window``; zero-padding of ``w - s`` before and ``s`` after.

    Returns:
        The mixed map, (B, H, W, C). It is a crop of a larger buffer when padding was needed (not contiguous).
    """
    B, H, W, C = x.shape
    wh, ww = window_size
    num_heads, tokens = weight.shape[0], wh * ww
    head_dim = C // num_heads
    top, bottom = window_pad_sizes(H, wh, shift_size[0])
    left, right = window_pad_sizes(W, ww, shift_size[1])
    Hp, Wp = top + H + bottom, left + W + right
    nh, nw = Hp // wh, Wp // ww
    use_scratch = scratch_active(x)
    if not use_scratch:
        x = pad_to_windows(x, window_size, shift_size)
    elif Hp != H or Wp != W:
        x = _pad_into(scratch('window.padded', (B, Hp, Wp, C), x), x, top, left)

    # (B, nh, wh, nw, ww, heads, d) -> (heads, wh, ww, B, nh, nw, d): tokens of a window on dim 1, all else on dim 2
    if use_scratch and x.is_contiguous():
        # the same permutation as a gather of head_dim-long rows: 1.1-2.3x faster than the 7-dim permuting copy
        # (batch 8, 2 threads), which steps through its strides once per row
        index = _token_order(B, nh, wh, nw, ww, num_heads, x.device)
        x = torch.index_select(x.view(-1, head_dim), 0, index, out=scratch('window.tokens', (len(index), head_dim), x))
    else:
        x = x.view(B, nh, wh, nw, ww, num_heads, head_dim).permute(5, 2, 4, 0, 1, 3, 6)
    x = x.reshape(num_heads, tokens, B * nh * nw * head_dim)
    # the mixed tokens are read once more, by the residual add that makes the (new) result
    out = scratch('window.mixed', x.shape, x) if use_scratch and residual is not None else None
    if bias is None:
        x = torch.bmm(weight, x, out=out)
    else:
        x = torch.baddbmm(bias.unsqueeze(-1), weight, x, out=out)
    x = x.view(num_heads, wh, ww, B, nh, nw, head_dim).permute(3, 4, 1, 5, 2, 0, 6)  # (B, nh, wh, nw, ww, heads, d)
    if Hp == H and Wp == W:
        if residual is not None and residual.is_contiguous():
            # the output takes the layout of the contiguous first operand: a plain (B, H, W, C) map
            return (residual.view(B, nh, wh, nw, ww, num_heads, head_dim) + x).view(B, H, W, C)
        x = x.reshape(B, H, W, C)
    elif out is not None:  # the crop is read once, by the residual add below
        padded = scratch('window.padded', (B, Hp, Wp, C), x)
        padded.view(B, nh, wh, nw, ww, num_heads, head_dim).copy_(x)
        x = padded[:, top:top + H, left:left + W]
    else:
        x = x.reshape(B, Hp, Wp, C)[:, top:top + H, left:left + W]
    return x if residual is None else residual + x


@functools.lru_cache(maxsize=64)
def _token_order(B: int, nh: int, wh: int, nw: int, ww: int, heads: int, device: torch.device) -> torch.Tensor:
    """Row indices that gather the head_dim-long rows of a (B, nh*wh, nw*ww, heads * d) map into the
    (heads, wh, ww, B, nh, nw) order of :func:`window_spatial_mix`'s token layout."""
    with torch.inference_mode(False):  # a normal tensor, usable inside and outside inference mode
        rows = torch.arange(B * nh * wh * nw * ww * heads, device=device)
    return rows.view(B, nh, wh, nw, ww, heads).permute(5, 2, 4, 0, 1, 3).reshape(-1)


def _pad_into(padded: torch.Tensor, x: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Zero-pad ``x`` (B, H, W, C) into the buffer ``padded`` (B, Hp, Wp, C) at offset (top, left)."""
    H, W = x.shape[1], x.shape[2]
    padded[:, :top].zero_()
    padded[:, top + H:].zero_()
    rows = padded[:, top:top + H]
    rows[:, :, :left].zero_()
    rows[:, :, left + W:].zero_()
    rows[:, :, left:left + W].copy_(x)
    return padded


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
