"""Hire module: hierarchical rearrangement token mixing (Hire-MLP, Guo et al., CVPR 2022, arXiv:2108.13341).

An NCHW spatial mixer made of three branches whose outputs are blended by a learned, per-channel softmax:

* height / width: tokens are grouped into regions of ``region_size`` rows (columns); each region is folded into
  channels and mixed by a channel MLP (inner-region rearrangement). Before folding, the map is cyclically shifted by
  ``step`` along the axis so that regions straddle the previous block's region borders (cross-region rearrangement).
* channel: a 1x1 convolution.

The rearrangement works at any size: maps whose size is not a multiple of ``region_size`` are padded circularly at
the end (wrapping more than once when the map is smaller than the pad), and the padding is cropped after mixing.

:class:`HireMlp` computes on channels-last ``(B, H, W, C)`` maps (:meth:`HireMlp.forward_nhwc`; ``forward`` takes and
returns NCHW tensors and permutes views around it), where every 1x1 conv is one GEMM over all positions and the
rearrangements cost at most one gather each:

* folding along the width is a free view of the map (a region's ``p`` positions are ``p * C`` consecutive numbers)
  when there is no shift or padding, and one ``index_select`` (shift, circular padding and fold at once) otherwise;
  along the height it is always one ``index_select``, into a ``(B, W, rows, C)`` layout whose regions are again
  consecutive numbers. The region MLP weights are permuted to that ``(position, channel)`` order on the fly.
* unfolding, cropping and rolling back are never materialised: the branch outputs are added, weighted by the
  reweighting softmax, into the channel branch through strided views (two slices when the shift wraps).
* the spatial mean of ``h + w + c`` that drives the reweighting is one small GEMM on sums of the region MLPs' hidden
  maps and of the input (every branch is linear after its hidden layer), so ``h + w + c`` is never formed.
* an eval-mode BatchNorm on the input (the block's ``norm1``) and the BatchNorm inside each region MLP are folded into
  the adjacent weights (:mod:`visionmix.layers.fold`).
* in inference on maps with more than ``(1 + p) * C`` positions the output projection is folded, per sample, into the
  channel branch and the region MLPs' output layers (:meth:`HireMlp._forward_projected`): one GEMM fewer per block.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, register_notrace_function

from .fold import batch_norm_last, bn_folds, bn_sources, cached_fold, fold_bn_after, fold_input_norm
from .fused import (activate, gelu_mlp_residual, inactive_dropout, is_exact_gelu, linear_residual,
                    linear_scratch)
from .scratch import has_hooks, scratch, scratch_active

__all__ = ['circular_take', 'region_fold', 'region_unfold', 'region_fold_nhwc', 'region_sums', 'region_mean_layer',
           'add_region_unfold_', 'weighted_channel_branch', 'RegionMlp', 'HireMlp', 'PointwiseMlp', 'hire_step']


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


@register_notrace_function  # reason: the gather index depends on the input size
def region_fold_nhwc(x: torch.Tensor, region_size: int, step: int = 0, axis: int = 2) -> torch.Tensor:
    """:func:`region_fold` on a channels-last map, with the region in the last dimension.

    Args:
        x: (B, H, W, C).
        region_size: Tokens per region ``p``.
        step: Cyclic shift applied before folding.
        axis: 1 folds rows, 2 folds columns.

    Returns:
        ``(B, W, R, p * C)`` for ``axis=1``, ``(B, H, R, p * C)`` for ``axis=2`` (``R = ceil(size / p)``); entry
        ``i * C + c`` of region ``r`` holds channel ``c`` of position ``r * p + i`` of the shifted, circularly padded
        axis (position-major, where :func:`region_fold` is channel-major).
    """
    p = region_size
    n = x.shape[axis]
    regions = -(-n // p)
    if axis == 1:
        x = x.transpose(1, 2)  # fold the rows as columns of the transposed map: its regions are then contiguous
    B, other, _, C = x.shape
    shift = step % n
    if shift == 0 and regions * p == n and axis == 2:
        return x.reshape(B, other, regions, p * C)  # a view along the width
    # the folded copy is consumed by the region MLP's first layer: a scratch buffer in inference
    out = scratch('hire.fold', (B, other, regions * p, C), x) if scratch_active(x) else None
    if shift == 0 and regions * p == n:  # one transposing copy along the height
        return x.reshape(B, other, regions, p * C) if out is None else out.copy_(x).view(B, other, regions, p * C)
    if out is None:
        return x.index_select(2, _fold_order(n, regions * p, shift, x.device)).view(B, other, regions, p * C)
    index = _cached_fold_order(n, regions * p, shift, x.device)
    return torch.index_select(x, 2, index, out=out).view(B, other, regions, p * C)


def _fold_order(n: int, length: int, shift: int, device: torch.device) -> torch.Tensor:
    """Positions read by :func:`region_fold_nhwc`: roll by +shift then pad circularly to ``length`` == read
    positions (j - shift) mod n."""
    return torch.arange(-shift, length - shift, device=device) % n


@functools.lru_cache(maxsize=64)
def _cached_fold_order(n: int, length: int, shift: int, device: torch.device) -> torch.Tensor:
    """:func:`_fold_order` for plain sizes, built once (inference runs it on every region MLP call)."""
    with torch.inference_mode(False):  # a normal tensor, usable inside and outside inference mode
        return _fold_order(n, length, shift, device)


def _unfolded(folded: torch.Tensor, channels: int, axis: int) -> torch.Tensor:
    """The ``(B, H or R*p, W or R*p, C)`` view of a :func:`region_fold_nhwc` layout (uncropped, unrolled)."""
    B, other, regions, pc = folded.shape
    x = folded.reshape(B, other, regions * (pc // channels), channels)
    return x.transpose(1, 2) if axis == 1 else x


@register_notrace_function  # reason: whether the last region is padded depends on the input size
def region_sums(hidden: torch.Tensor, size: int, region_size: int) -> torch.Tensor:
    """Sums of a region MLP's hidden map that its output's spatial mean depends on (:meth:`RegionMlp.mean_layer`).

    Args:
        hidden: (B, other, R, K), the hidden activations of :meth:`RegionMlp.hidden`.
        size: Length of the folded axis before padding.
        region_size: Positions per region ``p``.

    Returns:
        (B, K), the sum over every row and region; (B, 2K) when the last region reaches into the circular padding,
        the sum over the last region alone following.
    """
    total = hidden.sum((1, 2))
    if hidden.shape[2] * region_size == size:
        return total
    return torch.cat((total, hidden[:, :, -1].sum(1)), 1)


@register_notrace_function  # reason: whether the last region is padded depends on the input size
def region_mean_layer(weight: torch.Tensor, bias: torch.Tensor, size: int, other: int,
                      region_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The spatial mean of a region MLP's output as a linear layer on :func:`region_sums` of its hidden map.

    The output layer is linear, so the mean over the map of its unfolded output is that layer applied to sums of the
    hidden map: each region position once per region, less the last region's positions that lie in the circular
    padding (the crop drops them; the roll back only permutes). GEMV-sized work instead of a pass over the map.

    Args:
        weight: (C * p, K, 1, 1), the output layer (a 1x1 conv); output ``c * p + i`` is channel ``c`` of region
            position ``i``.
        bias: (C * p,).
        size: Length of the folded axis before padding.
        other: Length of the other axis.
        region_size: Positions per region ``p``.

    Returns:
        weight (C, K), or (C, 2K) when the last region is padded, and bias (C,): the mean is
        ``F.linear(region_sums(hidden, size, p), weight, bias)``.
    """
    p = region_size
    regions = -(-size // p)
    valid = size - (regions - 1) * p  # positions of the last region inside the map
    w = weight.view(-1, p, weight.shape[1])
    b = bias.view(-1, p)
    mean_weight, mean_bias = w.sum(1) / (size * other), b.sum(1) * (regions / size)
    if valid < p:
        mean_weight = torch.cat((mean_weight, w[:, valid:].sum(1) / -(size * other)), 1)
        mean_bias = mean_bias - b[:, valid:].sum(1) / size
    return mean_weight, mean_bias


@register_notrace_function  # reason: slice bounds depend on the input size
def add_region_unfold_(out: torch.Tensor, folded: torch.Tensor, weight: torch.Tensor | None, step: int = 0,
                       axis: int = 2) -> torch.Tensor:
    """``out += weight * region_unfold(folded)`` (``out += region_unfold(folded)`` for None) in place, for
    channels-last maps.

    Unfolding, cropping the circular padding and rolling back by ``step`` are strided views of ``folded``: position
    ``y`` of the map is position ``(y + step) mod size`` of the folded axis, i.e. two slices when the shift wraps.

    Args:
        out: (B, H, W, C), accumulated into.
        folded: A :func:`region_fold_nhwc` layout of the same map (any region size).
        weight: Broadcastable to ``out``, e.g. (B, 1, 1, C), or None.
        step: The shift the fold applied.
        axis: 1 (rows) or 2 (columns), as folded.
    """
    n = out.shape[axis]
    src = _unfolded(folded, out.shape[-1], axis)
    shift = step % n
    for dst_start, src_start, length in ((0, shift, n - shift), (n - shift, 0, shift)):
        if length:
            dst, part = out.narrow(axis, dst_start, length), src.narrow(axis, src_start, length)
            if weight is None:
                dst.add_(part)
            else:
                dst.addcmul_(part, weight)
    return out


@register_notrace_function  # reason: picks its formulation from the map size
def weighted_channel_branch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            scale: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias) * scale``, per sample and output channel: Hire's channel branch times its weight.

    Computed whichever way touches fewer numbers: with per-sample weights ``(B, C, C)`` (one batched GEMM, no pass
    of its own) while the map has more positions than channels, otherwise one GEMM for the batch and a pass over the
    (then small) map. The result is the mix the other branches are added to, consumed by the projection: in
    inference it is a scratch buffer.

    Args:
        x: (B, H, W, C).
        weight: (C, C).
        bias: (C,).
        scale: (B, C).
    """
    B, H, W, C = x.shape
    active = scratch_active(x)
    if H * W > C:
        args = ((bias * scale)[:, None], x.reshape(B, H * W, C), weight.t() * scale[:, None, :])
        out = torch.baddbmm(*args, out=scratch('hire.mix', (B, H * W, C), x)) if active else torch.baddbmm(*args)
    else:
        out = linear_scratch(x, weight, bias, 'hire.mix').view(B, H * W, C)
        out = out.mul_(scale[:, None]) if active else out * scale[:, None]
    return out.view(B, H, W, C)


# fx: these are reached from forward_nhwc / hidden, which no module forward calls through __call__, so
# timm's autowrap (which scans the globals of traced forwards) never sees this module; fx.wrap patches the names
# here for every symbolic trace
for _fn in ('region_fold_nhwc', 'region_sums', 'region_mean_layer', 'add_region_unfold_', 'linear_residual',
            'gelu_mlp_residual', 'linear_scratch', 'weighted_channel_branch'):
    torch.fx.wrap(_fn)


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
        """(B, C, H, W) -> (B, C, H, W); the reference formulation (:class:`HireMlp` runs :meth:`forward_folded`)."""
        size = x.shape[self.axis]
        x = region_fold(x, self.region_size, self.step, self.axis)
        x = self.fc2(self.act(self.norm(self.fc1(x))))
        return region_unfold(x, self.region_size, size, self.step, self.axis)

    def folded_weights(self, in_norm: nn.Module | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """fc1 and fc2 as (out, in) matrices in the position-major order of :func:`region_fold_nhwc`.

        An eval-mode BatchNorm on the input (``in_norm``) and, in eval mode, ``norm`` are folded into fc1.
        """
        norm = self.norm if bn_folds(self.norm) else None
        sources = (self.fc1.weight, self.fc2.weight, self.fc2.bias, self.region_size, 'norm', *bn_sources(norm),
                   'in', *bn_sources(in_norm))
        return cached_fold(self, 'weights', sources, lambda: self._fold(norm, in_norm))

    def _fold(self, norm: nn.Module | None, in_norm: nn.Module | None
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        p = self.region_size
        w1, b1 = fold_input_norm(self.fc1.weight.flatten(1), self.fc1.bias, in_norm, repeat=p)
        hidden, dim = w1.shape[0], w1.shape[1] // p
        if norm is not None:
            w1, b1 = fold_bn_after(w1, b1, norm)
        # input channel c * p + i (channel-major, as the official layout) -> i * C + c
        w1 = w1.reshape(hidden, dim, p).transpose(1, 2).reshape(hidden, p * dim)
        w2 = self.fc2.weight.reshape(dim, p, hidden).transpose(0, 1).reshape(p * dim, hidden)
        b2 = self.fc2.bias.reshape(dim, p).t().reshape(p * dim)
        return w1, b1, w2, b2

    def hidden(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]
               ) -> torch.Tensor:
        """(B, H, W, C) -> the hidden map after the ReLU, ``(B, other, R, C / 2)`` in the :func:`region_fold_nhwc`
        row order: fc2 (``weights[2:]``) makes the folded branch output from it.

        Args:
            x: Channels-last map.
            weights: :meth:`folded_weights`, fetched once by the caller, which applies fc2 itself.
        """
        w1, b1, _, _ = weights
        # in inference the hidden and folded output maps are scratch buffers, consumed by HireMlp before it returns
        h = linear_scratch(region_fold_nhwc(x, self.region_size, self.step, self.axis - 1), w1, b1,
                           f'hire.hidden{self.axis}')
        if not bn_folds(self.norm):
            h = batch_norm_last(self.norm, h)
        return h.relu_() if scratch_active(h) else self.act(h)

    def mean_layer(self, size: int, other: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The spatial mean of the branch output on a ``size`` x ``other`` map as a linear layer on
        :func:`region_sums` of its hidden map (:func:`region_mean_layer`)."""
        return region_mean_layer(self.fc2.weight, self.fc2.bias, size, other, self.region_size)

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
        """(B, C, H, W) -> (B, C, H, W), computed channels-last: the result is a permuted view of an NHWC map."""
        return self.forward_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_nhwc(self, x: torch.Tensor, in_norm: nn.Module | None = None,
                     residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C).

        Args:
            x: Channels-last map.
            in_norm: An eval-mode BatchNorm to apply to ``x`` first, folded into every weight that reads the input
                (the block's ``norm1``).
            residual: Added to the output by the projection GEMM itself (the block's shortcut).
        """
        weights_h, weights_w = self.height.folded_weights(in_norm), self.width.folded_weights(in_norm)
        wc, bc = self._channel_weights(in_norm)
        hidden_h, hidden_w = self.height.hidden(x, weights_h), self.width.hidden(x, weights_w)
        a = self._branch_weights(x, hidden_h, hidden_w, in_norm)
        if residual is not None and self._projects_per_sample(x, residual):
            return self._forward_projected(x, (hidden_h, hidden_w), (weights_h, weights_w), wc, bc, a, residual)
        out = weighted_channel_branch(x, wc, bc, a[:, 2])
        for k, region, hidden, (_, _, w2, b2) in ((0, self.height, hidden_h, weights_h),
                                                  (1, self.width, hidden_w, weights_w)):
            branch = linear_scratch(hidden, w2, b2, f'hire.branch{region.axis}')
            # assigned: fx sees the in-place add as a node only through its result
            out = add_region_unfold_(out, branch, a[:, k, None, None], region.step, region.axis - 1)
        wp, bp = self.proj.weight.flatten(1), self.proj.bias
        if residual is not None and not (self.training and self.proj_drop.p > 0):
            return linear_residual(residual, out, wp, bp)
        out = self.proj_drop(F.linear(out, wp, bp))
        return out if residual is None else residual + out

    def _channel_weights(self, in_norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The channel branch as a (C, C) matrix and bias, with ``in_norm`` folded in."""
        channel = self.channel
        return cached_fold(self, 'channel', (channel.weight, channel.bias, *bn_sources(in_norm)),
                           lambda: fold_input_norm(channel.weight.flatten(1), channel.bias, in_norm))

    def _branch_weights(self, x: torch.Tensor, hidden_h: torch.Tensor, hidden_w: torch.Tensor,
                        in_norm: nn.Module | None) -> torch.Tensor:
        """(B, 3, C): the softmax weights of the height, width and channel branches per sample and channel.

        They are predicted from the spatial mean of ``h + w + c``, which is one small GEMM on sums of the inputs:
        the region branches' means come from their hidden maps (:meth:`RegionMlp.mean_layer`), the linear channel
        branch's from the mean of ``x``.
        """
        _, H, W, C = x.shape
        p = self.height.region_size
        sources = (self.height.fc2.weight, self.height.fc2.bias, self.width.fc2.weight, self.width.fc2.bias,
                   self.channel.weight, self.channel.bias, *bn_sources(in_norm), H, W)
        weight, bias = cached_fold(self, 'mean', sources, lambda: self._mean_layer(in_norm, H, W))
        sums = torch.cat((region_sums(hidden_h, H, p), region_sums(hidden_w, W, p), x.sum((1, 2))), 1)
        r = self.reweight
        logits = r.drop1(r.act(F.linear(F.linear(sums, weight, bias), r.fc1.weight.flatten(1), r.fc1.bias)))
        # the reweighting's output channel c * 3 + k weighs branch k of channel c: its rows are permuted to k * C + c
        # so the softmax runs over a leading dimension of 3 (a vectorised kernel, unlike a trailing one)
        w2, b2 = cached_fold(self, 'reweight', (r.fc2.weight, r.fc2.bias), lambda: (
            r.fc2.weight.view(C, 3, -1).transpose(0, 1).reshape(3 * C, -1), r.fc2.bias.view(C, 3).t().reshape(-1)))
        return r.drop2(F.linear(logits, w2, b2)).view(-1, 3, C).softmax(dim=1)

    def _mean_layer(self, in_norm: nn.Module | None, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The spatial mean of ``h + w + c`` as one linear layer on the sums :meth:`_branch_weights` concatenates."""
        wc, bc = self._channel_weights(in_norm)
        wh, bh = self.height.mean_layer(H, W)
        ww, bw = self.width.mean_layer(W, H)
        return torch.cat((wh, ww, wc / (H * W)), 1), bh + bw + bc

    def _projects_per_sample(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        """True when :meth:`_forward_projected` applies and saves work: in inference, without an active dropout, with
        a contiguous ``residual`` (accumulated onto as a (B, H * W, C) view), on maps with more positions than
        ``(1 + p) * C``.

        Folding the projection into the branch weights saves its GEMM (``H * W * C^2`` multiply-adds per sample)
        and costs ``(1 + p) * C^3`` to build the per-sample matrices: Hire-MLP-Tiny's first two stages qualify.
        """
        if not (scratch_active(x) and inactive_dropout(self.proj_drop) and residual.is_contiguous()):
            return False  # checked first: under fx tracing the sizes below are proxies
        _, H, W, C = x.shape
        return H * W > (1 + self.height.region_size) * C

    def _forward_projected(self, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor],
                           weights: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]], wc: torch.Tensor,
                           bc: torch.Tensor, a: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + proj(mix)`` with the projection folded into each branch's output layer, per sample.

        ``proj(a_h * h + a_w * w + a_c * c)`` is linear in each branch: with ``P_k = W_proj diag(a_k)`` the channel
        branch becomes one batched GEMM with ``P_c W_c`` accumulated onto ``residual``, and the height / width
        outputs are made by ``P_k W_fc2`` (per region position) and added unfolded, unscaled. No mixed map is
        formed and the projection GEMM disappears.

        Args:
            hidden: The height and width branches' hidden maps (:meth:`RegionMlp.hidden`).
            weights: Their :meth:`RegionMlp.folded_weights`.
            wc, bc: The channel branch (:meth:`_channel_weights`).
            a: The branch weights (:meth:`_branch_weights`).
        """
        B, H, W, C = x.shape
        wp = self.proj.weight.flatten(1)
        proj_h, proj_w, proj_c = (wp * a[:, None, k] for k in range(3))  # (B, C, C)
        out = torch.add(residual, (self.proj.bias + torch.matmul(proj_c, bc))[:, None, None, :])
        out.view(B, H * W, C).baddbmm_(x.reshape(B, H * W, C), torch.matmul(proj_c, wc).transpose(1, 2))
        for region, hidden_k, proj_k, (_, _, w2, b2) in zip((self.height, self.width), hidden, (proj_h, proj_w),
                                                           weights):
            p, k = region.region_size, hidden_k.shape[-1]
            # P_k W_fc2 for all region positions as one GEMM over B * C rows (the positions' weights side by side),
            # then reordered position-major: 3-5x faster than a broadcast matmul per position
            w2k = torch.matmul(proj_k, w2.view(p, C, k).transpose(0, 1).reshape(C, p * k))
            w2k = w2k.view(B, C, p, k).transpose(1, 2).reshape(B, p * C, k)
            b2k = torch.matmul(proj_k, b2.view(p, C).t()).transpose(1, 2).reshape(B, 1, p * C)
            rows = hidden_k.reshape(B, -1, k)
            branch = torch.baddbmm(b2k, rows, w2k.transpose(1, 2),
                                   out=scratch(f'hire.branch{region.axis}', (B, rows.shape[1], p * C), x))
            add_region_unfold_(out, branch.view(*hidden_k.shape[:-1], p * C), None, region.step, region.axis - 1)
        return out


class PointwiseMlp(nn.Module):
    """timm's ``Mlp(use_conv=True)`` (1x1 conv -> act -> 1x1 conv, same keys), computed on channels-last maps.

    On (B, H, W, C) a 1x1 conv is one GEMM over all positions (:func:`torch.nn.functional.linear` with the conv
    weight as a matrix), with no layout conversion in or out; on CPU that beats an NCHW 1x1 conv.

    Args:
        in_features: Input channels.
        hidden_features: Hidden channels.
        out_features: Output channels (``in_features`` if None).
        act_layer: Activation; GELU runs in place when no gradient is recorded.
        drop: Dropout after the activation and after fc2.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_features, out_features or in_features, 1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H, W), a permuted view of a channels-last result."""
        return self.forward_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_nhwc(self, x: torch.Tensor, in_norm: nn.Module | None = None,
                     residual: torch.Tensor | None = None, owns_residual: bool = False) -> torch.Tensor:
        """(..., C) -> (..., C_out).

        Args:
            x: Channels-last input.
            in_norm: An eval-mode BatchNorm to apply to ``x`` first, folded into fc1.
            residual: Added to the output by the fc2 GEMM itself (the block's shortcut).
            owns_residual: ``residual`` is handed over: the result may be accumulated into it in inference.
        """
        fc1 = self.fc1
        w1, b1 = cached_fold(self, 'fc1', (fc1.weight, fc1.bias, *bn_sources(in_norm)),
                             lambda: fold_input_norm(fc1.weight.flatten(1), fc1.bias, in_norm))
        w2, b2 = self.fc2.weight.flatten(1), self.fc2.bias
        # exact GELU, dropouts that do nothing and no hook on drop1 (which would see the hidden map): fused steps
        if residual is not None and is_exact_gelu(self.act) and inactive_dropout(self.drop1) \
                and inactive_dropout(self.drop2) and not has_hooks(self.drop1):
            return gelu_mlp_residual(x, w1, b1, w2, b2, residual, owns_residual)
        x = self.drop1(activate(self.act, F.linear(x, w1, b1)))
        if residual is not None and not (self.training and self.drop2.p > 0):
            return linear_residual(residual, x, w2, b2)
        x = self.drop2(F.linear(x, w2, b2))
        return x if residual is None else residual + x
