"""Lightweight cross-attention bridges between a feature map and a few global tokens (Mobile-Former, Chen et al.,
CVPR 2022, arXiv:2108.05895).

* :class:`MobileToFormer` (local -> global): the tokens query the map. Only the query is projected; the map itself
  serves as keys and values, so the bridge costs ``O(T * H * W * C)`` and no per-pixel projection.
* :class:`Former`: self-attention among the tokens (keys = values = the tokens) and a small FFN, post-norm.
* :class:`FormerToMobile` (global -> local): every pixel queries the tokens; keys and values are projections of the
  tokens, the map is the (unprojected) query, and the result is added to the map.

Tokens are laid out ``(B, T, D)`` (batch first); the official code keeps ``(T, B, D)``, which gives the same outputs.
Heads split the channels into contiguous groups, as in the official code; the scale is the official
``head_dim ** -0.5``. The attention is written out (two matmuls and a softmax) rather than through
``F.scaled_dot_product_attention`` so that the map never needs a transposed copy: with a handful of tokens and
thousands of pixels, the layout decides the speed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

__all__ = ['MobileToFormer', 'Former', 'FormerToMobile']


class MobileToFormer(nn.Module):
    """Tokens attend to a feature map; optional dynamic gate on the result; projection, residual, post-LayerNorm.

    Args:
        channels: Channels C of the map.
        token_dim: Token width D.
        num_heads: Heads (C must divide by it).
        dynamic: Gate the attention output with ``2 * hsigmoid(Linear(tokens))`` (Mobile-Former uses it).
        drop_path: Stochastic depth on the token update (per sample).
    """

    def __init__(
            self,
            channels: int,
            token_dim: int,
            num_heads: int = 2,
            dynamic: bool = True,
            drop_path: float = 0.,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.alpha = nn.Linear(token_dim, channels) if dynamic else None
        self.q = nn.Linear(token_dim, channels)
        self.proj = nn.Linear(channels, token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Update ``tokens`` (B, T, D) from ``x`` (B, C, H, W)."""
        B, C, H, W = x.shape
        T = tokens.shape[1]
        q = self.q(tokens).reshape(B, T, self.num_heads, -1).transpose(1, 2)  # B, N, T, C/N
        kv = x.reshape(B, self.num_heads, C // self.num_heads, H * W)  # B, N, C/N, HW: the map as it lies
        attn = torch.matmul(q * self.scale, kv).softmax(dim=-1)  # B, N, T, HW
        out = torch.matmul(attn, kv.transpose(-1, -2))  # B, N, T, C/N (a transposed view, no copy)
        out = out.transpose(1, 2).reshape(B, T, C)
        if self.alpha is not None:
            out = out * (F.hardsigmoid(self.alpha(tokens)) * 2.)
        return self.norm(tokens + self.drop_path(self.proj(out)))


class Former(nn.Module):
    """Token self-attention (only the query is projected) + channel projection, then FFN; both post-norm.

    Args:
        token_dim: Token width D.
        num_heads: Heads.
        mlp_ratio: FFN expansion.
        drop_path: Stochastic depth on the attention update (per sample); the FFN update has none, as in the
            official code.
    """

    def __init__(self, token_dim: int, num_heads: int = 4, mlp_ratio: float = 2., drop_path: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (token_dim // num_heads) ** -0.5
        self.q = nn.Linear(token_dim, token_dim)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm1 = nn.LayerNorm(token_dim)
        hidden = int(token_dim * mlp_ratio)
        self.fc1 = nn.Linear(token_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, token_dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T, D = tokens.shape
        q = self.q(tokens).reshape(B, T, self.num_heads, -1).transpose(1, 2)
        kv = tokens.reshape(B, T, self.num_heads, -1).transpose(1, 2)
        attn = torch.matmul(q * self.scale, kv.transpose(-1, -2)).softmax(dim=-1)  # B, N, T, T
        out = torch.matmul(attn, kv).transpose(1, 2).reshape(B, T, D)
        tokens = self.norm1(tokens + self.drop_path(self.proj(out)))
        return self.norm2(tokens + self.fc2(self.act(self.fc1(tokens))))


class FormerToMobile(nn.Module):
    """Each pixel of a map attends to the tokens; the result is added to the map.

    Args:
        channels: Channels C of the map.
        token_dim: Token width D.
        num_heads: Heads (C must divide by it).
        drop_path: Stochastic depth on the map update (per sample).
    """

    def __init__(self, channels: int, token_dim: int, num_heads: int = 2, drop_path: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.k = nn.Linear(token_dim, channels)
        self.v = nn.Linear(token_dim, channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Update ``x`` (B, C, H, W) from ``tokens`` (B, T, D)."""
        B, C, H, W = x.shape
        T = tokens.shape[1]
        # Scores laid out (B, N, T, HW) rather than (B, N, HW, T): the softmax over T then runs along the long,
        # contiguous pixel axis (a softmax over a last axis of 3-6 entries is several times slower on CPU), and
        # the map is used as it lies, with no transposed copies in or out.
        q = x.reshape(B, self.num_heads, C // self.num_heads, H * W)  # B, N, C/N, HW
        k = self.k(tokens).reshape(B, T, self.num_heads, -1).transpose(1, 2)  # B, N, T, C/N
        v = self.v(tokens).reshape(B, T, self.num_heads, -1).permute(0, 2, 3, 1)  # B, N, C/N, T
        attn = torch.matmul(k * self.scale, q).softmax(dim=2)  # B, N, T, HW
        out = torch.matmul(v, attn)  # B, N, C/N, HW
        return x + self.drop_path(out.reshape(B, C, H, W))
