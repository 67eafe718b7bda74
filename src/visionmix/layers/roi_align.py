"""RoIAlign whose backward is fast on a CPU.

torchvision's CPU ``roi_align`` backward scatters every sampling point's four bilinear weights one channel at a time
on one thread: in a Mask R-CNN training step on 2 cores (96 px images, light heads) it took a quarter of the step.
RoIAlign with a fixed ``sampling_ratio`` is separable, ``out[k] = Wy[k] @ x[b_k] @ Wx[k]^T`` per channel, with ``Wy``
and ``Wx`` the (bins x pixels) bilinear weights averaged over each bin's samples, so its gradient is
``Wy[k]^T @ grad[k] @ Wx[k]``: batched matrix products over a window around each RoI, then one ``index_add_`` into the
map. The forward stays torchvision's kernel; the gradient equals torchvision's to float rounding.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import MultiScaleRoIAlign

__all__ = ['roi_align_backward', 'FastBackwardMultiScaleRoIAlign']

_WINDOW_FLOATS = 1 << 24  # RoIs per chunk: at most this many floats of per-RoI window gradients at a time


def _axis_weights(start: Tensor, size: Tensor, bins: int, sampling_ratio: int, length: int,
                  ) -> tuple[Tensor, Tensor]:
    """Per-RoI (bins, window) weights along one axis and each window's first pixel, as torchvision samples it.

    A sample at ``p`` outside ``[-1, length]`` counts zero; inside, ``p`` is clamped to ``[0, length - 1]`` and split
    between the two pixels around it. Each bin averages ``sampling_ratio`` samples per axis.
    """
    count = bins * sampling_ratio
    steps = (torch.arange(count, dtype=start.dtype, device=start.device) + 0.5) / sampling_ratio
    p = start[:, None] + steps * (size / bins)[:, None]  # (K, count) sample positions in pixels
    valid = ((p >= -1) & (p <= length)).to(p.dtype) / sampling_ratio
    p = p.clamp(min=0)
    low = p.floor().long()
    last = low >= length - 1
    low = low.clamp(max=length - 1)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(p), p - low)
    first = low.min(1).values
    window = int((high.max(1).values - first).max()) + 1 if len(p) else 1
    first = first.clamp(max=length - window)  # the window stays on the map; its extra pixels weigh zero
    weights = p.new_zeros(len(p), bins, window)
    rows = torch.arange(len(p), device=p.device)[:, None].expand_as(low)
    bin_of = (torch.arange(count, device=p.device) // sampling_ratio).expand_as(low)
    weights.index_put_((rows, bin_of, low - first[:, None]), (1 - frac) * valid, accumulate=True)
    weights.index_put_((rows, bin_of, high - first[:, None]), frac * valid, accumulate=True)
    return weights, first


def roi_align_backward(grad: Tensor, rois: Tensor, input_shape: Sequence[int], spatial_scale: float,
                       sampling_ratio: int, aligned: bool = False) -> Tensor:
    """The gradient of ``torchvision.ops.roi_align(x, rois, grad.shape[-2:], spatial_scale, sampling_ratio,
    aligned)`` with respect to ``x`` (of ``input_shape``), for a fixed ``sampling_ratio > 0``.

    Args:
        grad: (K, C, out_h, out_w) gradient of the pooled features.
        rois: (K, 5) rows of ``[batch index, x1, y1, x2, y2]`` in input-image coordinates.
        input_shape: (B, C, H, W) of the pooled feature map.
        spatial_scale: Feature-map pixels per image pixel.
        sampling_ratio: Samples per bin along each axis.
        aligned: torchvision's half-pixel offset (False: Mask R-CNN's original RoIAlign).
    """
    if sampling_ratio <= 0:
        raise ValueError(f'roi_align_backward needs a fixed sampling_ratio > 0, got {sampling_ratio}')
    batch, channels, height, width = input_shape
    dtype = grad.dtype
    grad = grad.to(torch.promote_types(dtype, torch.float32))  # box coordinates in bf16 would land on wrong pixels
    out = grad.new_zeros(batch * height * width, channels)
    rois = rois.to(grad.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision's legacy RoIAlign: RoIs are at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    wy, y0 = _axis_weights(y1, roi_h, grad.shape[-2], sampling_ratio, height)
    wx, x0 = _axis_weights(x1, roi_w, grad.shape[-1], sampling_ratio, width)
    index = rois[:, 0].long()
    win_h, win_w = wy.shape[-1], wx.shape[-1]
    chunk = max(1, _WINDOW_FLOATS // (channels * win_h * win_w))
    for s in range(0, len(rois), chunk):
        sl = slice(s, s + chunk)
        # (k, win_h, bins_h) @ (k, bins_h, C * bins_w) -> then over the x bins: (k, win_h, win_w, C)
        g = grad[sl].permute(0, 2, 1, 3)  # (k, bins_h, C, bins_w)
        g = torch.matmul(g, wx[sl, None])  # (k, bins_h, C, win_w)
        g = torch.einsum('kiy,kicx->kyxc', wy[sl], g)  # (k, win_h, win_w, C)
        rows = y0[sl, None] + torch.arange(win_h, device=grad.device)
        cols = x0[sl, None] + torch.arange(win_w, device=grad.device)
        flat = (index[sl, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
        out.index_add_(0, flat.reshape(-1), g.reshape(-1, channels))
    return out.view(batch, height, width, channels).permute(0, 3, 1, 2).to(dtype)


class _PoolWithFastBackward(torch.autograd.Function):
    """A multi-level RoIAlign whose forward is given (``pooled``: computed without autograd) and whose gradient is
    :func:`roi_align_backward` per level."""

    @staticmethod
    def forward(ctx, pooled: Callable[[], Tensor], rois: Tensor, levels: Tensor, scales: list[float],
                sampling_ratio: int, *maps: Tensor) -> Tensor:
        ctx.save_for_backward(rois, levels)
        ctx.scales, ctx.sampling_ratio = scales, sampling_ratio
        ctx.shapes, ctx.dtypes = [m.shape for m in maps], [m.dtype for m in maps]
        return pooled()  # a callable, not a tensor input: an input returned as the output would alias it

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        rois, levels = ctx.saved_tensors
        grads = []
        for level, (shape, scale) in enumerate(zip(ctx.shapes, ctx.scales)):
            if not ctx.needs_input_grad[5 + level]:
                grads.append(None)
                continue
            at = torch.where(levels == level)[0]
            grads.append(roi_align_backward(grad[at], rois[at], shape, scale, ctx.sampling_ratio).to(ctx.dtypes[level]))
        return (None, None, None, None, None, *grads)


class FastBackwardMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign` (same arguments, same outputs) whose gradient on
    a CPU comes from :func:`roi_align_backward`; elsewhere, or with an adaptive ``sampling_ratio``, it is torchvision's.
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        maps = [x[name] for name in self.featmap_names]
        if not (torch.is_grad_enabled() and any(m.requires_grad for m in maps)) or self.sampling_ratio <= 0 \
                or maps[0].device.type != 'cpu':
            return super().forward(x, boxes, image_shapes)
        with torch.no_grad():
            pooled = super().forward(x, boxes, image_shapes)  # also sets self.scales and self.map_levels
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes) if len(maps) > 1 else torch.zeros(len(rois), dtype=torch.long)
        return _PoolWithFastBackward.apply(lambda: pooled, rois, levels, list(self.scales), self.sampling_ratio,
                                           *maps)
