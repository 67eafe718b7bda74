"""Mixing block: a spatial function and a channel MLP in sequence, with the spatial function chosen by name.

The block of SPACH (Zhao et al., "A Battle of Network Structures", arXiv:2108.13002), which puts convolution,
attention and MLP models in one framework: only the spatial function differs between them. On a channels-last map
``x`` of shape (B, H, W, C)::

    y = x + drop_path(gamma * spatial(norm1(x))) + cpe(x)      # both branches read the block input x
    y = y + drop_path(mlp(norm2(y)))

``cpe`` is a depthwise 3x3 convolution (a convolutional position encoding); with the spatial function ``'pass'`` it
is the only spatial operation, which makes the conv model. ``gamma`` is a per-channel layer scale.

Spatial functions are registered by name (:func:`register_spatial_func`) and built by :func:`create_spatial_func`
from one shared set of keyword arguments, each factory taking the ones it needs. All of them map (B, H, W, C) to
(B, H, W, C):

* ``'pass'``: none (the block keeps only the CPE and the channel MLP).
* ``'attn'``: global multi-head self-attention (:class:`TokenAttention`).
* ``'mlp'``: an MLP across all tokens, MLP-Mixer's token mixing (:class:`TokenMlp`); tied to the token grid.
* ``'window_mlp'``: Swin-MLP's multi-head MLP inside windows, shifted on odd blocks
  (:class:`~visionmix.layers.window_mlp.WindowSpatialMlp`).
* ``'hire'``: Hire-MLP's hierarchical rearrangement with its per-block step schedule
  (:class:`~visionmix.layers.hire.HireMlp`).
* ``'shift'``: UNeXt's axial-shift MLP (:class:`~visionmix.layers.shift.AxialShiftMlp`).

A new spatial function is a module on (B, H, W, C) maps plus one factory registered with
``@register_spatial_func('name')``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, DropPath, LayerScale, Mlp, register_notrace_function, to_2tuple

from ..errors import VisionmixError
from .fold import cached_fold
from .fused import activate, mlp_fusable, mlp_residual, shortcut_plus_bias
from .hire import HireMlp, hire_step
from .scratch import has_hooks, scratch, scratch_active
from .shift import AxialShiftMlp
from .window_mlp import WindowSpatialMlp, stage_window

__all__ = [
    'SpatialFactory', 'register_spatial_func', 'list_spatial_funcs', 'create_spatial_func', 'check_spatial_options',
    'TokenAttention', 'TokenMlp', 'token_rows', 'ChannelsFirst', 'MixingBlock',
]

# A factory builds one spatial function; it returns None for "no spatial function" ('pass').
SpatialFactory = Callable[..., nn.Module | None]
_SPATIAL_FUNCS: dict[str, SpatialFactory] = {}
_MODEL_SET = {'dim', 'grid_size', 'block_idx', 'dilation', 'run_grid_size'}  # factory arguments the model decides


def register_spatial_func(name: str) -> Callable[[SpatialFactory], SpatialFactory]:
    """Register a spatial-function factory under ``name``.

    The factory is called as ``factory(dim=..., grid_size=..., block_idx=..., **kwargs)`` with only the keyword
    arguments its signature names, so that one model-wide set of arguments can serve every spatial function in the
    model. ``block_idx`` is the block's index inside its stage, for per-block schedules (shifts, steps). Set by the
    model too, never by a run's options: ``dilation`` (the block's rate in a stage past the output stride, for
    k x k convs) and ``run_grid_size`` (the grid such a stage runs on, larger than ``grid_size``).
    """

    def decorate(factory: SpatialFactory) -> SpatialFactory:
        if name in _SPATIAL_FUNCS:
            raise ValueError(f'spatial function {name!r} is already registered')
        _SPATIAL_FUNCS[name] = factory
        return factory

    return decorate


def list_spatial_funcs() -> list[str]:
    """Names of the registered spatial functions."""
    return sorted(_SPATIAL_FUNCS)


def _factory_params(name: str) -> dict[str, inspect.Parameter]:
    factory = _SPATIAL_FUNCS.get(name)
    if factory is None:
        raise VisionmixError(f'unknown spatial function {name!r}; choose from {", ".join(list_spatial_funcs())}')
    return dict(inspect.signature(factory).parameters)


def check_spatial_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options the spatial function ``name`` does not take (a misspelt per-run option would be ignored).

    Model-wide options are shared by every spatial function of a model, so :func:`create_spatial_func` filters
    those; options given for one run of blocks are meant for its function and are checked here.
    """
    accepted = set(_factory_params(name)) - _MODEL_SET
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise VisionmixError(f'spatial function {name!r} takes no option(s) {unknown}; it accepts '
                             f'{sorted(accepted) or "none"}')


def create_spatial_func(
        name: str,
        dim: int,
        grid_size: tuple[int, int] | None = None,
        block_idx: int = 0,
        dilation: int = 1,
        run_grid_size: tuple[int, int] | None = None,
        **kwargs: Any,
) -> nn.Module | None:
    """Build the spatial function ``name`` for ``dim`` channels on a ``grid_size`` token grid.

    Args:
        name: A registered name (see :func:`list_spatial_funcs`).
        dim: Channels of the map.
        grid_size: (H, W) of the token grid the model is built for; grid-tied functions (``'mlp'``) need it.
        block_idx: Index of the block inside its stage.
        dilation: Dilation of the function's k x k convs (``'shift'``), for a stage past the output stride.
        run_grid_size: The larger grid such a stage runs on (``'window_mlp'`` then shifts its odd blocks).
        **kwargs: Options for any spatial function; those the factory does not take are ignored.

    Raises:
        VisionmixError: Unknown name.
    """
    params = _factory_params(name)
    factory = _SPATIAL_FUNCS[name]
    kwargs = dict(kwargs, grid_size=grid_size, block_idx=block_idx, dilation=dilation, run_grid_size=run_grid_size)
    return factory(dim=dim, **{k: v for k, v in kwargs.items() if k in params})


class TokenAttention(Attention):
    """timm's multi-head self-attention over all H*W tokens of a (B, H, W, C) map (no position bias)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        return super().forward(x.reshape(B, H * W, C)).reshape(B, H, W, C)


@register_notrace_function  # reason: checks the token count, a Proxy under FX (public name: FX skips _names)
def token_rows(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H*W, C), refusing a grid the token MLP was not built for."""
    B, H, W, C = x.shape
    if H * W != num_tokens:
        raise VisionmixError(
            f'the token-mixing MLP was built for {num_tokens} tokens, got a {H}x{W} map ({H * W} tokens); build the '
            f'model with img_size matching the input')
    return x.reshape(B, H * W, C)


class TokenMlp(Mlp):
    """MLP-Mixer's token mixing: a two-layer MLP across the H*W tokens, shared by all channels.

    Keys and computation are timm's :class:`~timm.layers.Mlp` applied to the transposed map; the number of tokens is
    fixed at build time.

    Args:
        num_tokens: H*W of the maps it mixes.
        hidden_features: Hidden width.
        act_layer: Activation.
        drop: Dropout after the activation and after fc2.
    """

    def __init__(
            self,
            num_tokens: int,
            hidden_features: int,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            drop: float = 0.,
    ) -> None:
        super().__init__(num_tokens, hidden_features, act_layer=act_layer, drop=drop)
        self.num_tokens = num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        rows = token_rows(x, self.num_tokens)
        # fc1 and fc2 (nn.Linear, no norm between: timm's Mlp as the constructor builds it) as (out, tokens) @
        # (tokens, C) per image, the weight shared through a stride-0 batch: the map is never transposed in or out
        # (measured 3-25% faster than one GEMM over the transposed map at SPACH's sizes)
        h = _token_linear(self.fc1, rows)
        h = self.drop1(activate(self.act, h))
        return self.drop2(_token_linear(self.fc2, h)).view(B, H, W, C)

    def scaled_residual(self, x: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                        owns_residual: bool = False) -> torch.Tensor:
        """``residual + gamma * self(x)`` for a per-channel layer scale ``gamma`` (C,), maps (B, H, W, C).

        In inference fc2's GEMM accumulates onto the shortcut: the scale is applied to the hidden map's channels
        instead of the output's (token mixing leaves channels apart, so the two commute), the hidden map is a
        scratch buffer, and with ``owns_residual`` (the caller hands over a fresh ``residual``) the result is
        written into ``residual``. One pass over the map instead of fc2's bias copy plus a three-operand add.
        """
        if not (scratch_active(x) and mlp_fusable(self) and residual.is_contiguous()) or residual.shape != x.shape:
            return torch.addcmul(residual, self(x), gamma)
        B, H, W, C = x.shape
        fc1, fc2 = self.fc1, self.fc2
        h = _token_linear(fc1, token_rows(x, self.num_tokens), scratch('token.hidden', (B, fc1.out_features, C), x))
        torch.ops.aten.gelu_(h).mul_(gamma)
        shortcut = residual.view(B, H * W, C)
        bias = fc2.bias[:, None] * gamma if fc2.bias is not None else None
        out = shortcut_plus_bias(shortcut, bias, shortcut if owns_residual else torch.empty_like(shortcut))
        return out.baddbmm_(fc2.weight.expand(B, -1, -1), h).view(B, H, W, C)


def _token_linear(fc: nn.Linear, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``fc`` applied along dim 1 of ``x`` (B, N, C): (B, fc.out_features, C), into ``out`` if given."""
    weight = fc.weight.expand(x.shape[0], -1, -1)
    return torch.bmm(weight, x, out=out) if fc.bias is None else torch.baddbmm(fc.bias[:, None], weight, x, out=out)


class ChannelsFirst(nn.Module):
    """Run an NCHW module on a channels-last (B, H, W, C) map."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.fn = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register_spatial_func('pass')
def _pass(dim: int) -> None:
    return None


@register_spatial_func('attn')
def _attn(
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.,
        proj_drop: float = 0.,
) -> TokenAttention:
    return TokenAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)


@register_spatial_func('mlp')
def _mlp(
        dim: int,
        grid_size: tuple[int, int] | None = None,
        token_ratio: float = 0.5,
        token_hidden: int | None = None,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.,
) -> TokenMlp:
    if grid_size is None:
        raise VisionmixError("the 'mlp' spatial function mixes a fixed token grid: pass grid_size")
    num_tokens = grid_size[0] * grid_size[1]
    # SPACH sizes the hidden layer relative to the tokens; MLP-Mixer gives it as a width (token_hidden)
    hidden = token_hidden if token_hidden is not None else int(num_tokens * token_ratio)
    return TokenMlp(num_tokens, hidden, act_layer=act_layer, drop=drop)


@register_spatial_func('window_mlp')
def _window_mlp(
        dim: int,
        grid_size: tuple[int, int] | None = None,
        block_idx: int = 0,
        num_heads: int = 8,
        window_size: int = 7,
        shift: bool = True,
        run_grid_size: tuple[int, int] | None = None,
) -> WindowSpatialMlp:
    if grid_size is not None:
        window_size, half_shift = stage_window(grid_size, window_size, run_grid_size)
    else:
        half_shift = window_size // 2
    shift_size = half_shift if shift and block_idx % 2 else 0  # Swin-MLP shifts the odd blocks
    return WindowSpatialMlp(dim, num_heads, window_size, shift_size)


@register_spatial_func('hire')
def _hire(
        dim: int,
        block_idx: int = 0,
        region_size: int = 2,
        step_stride: int = 2,
        step_dilation: int = 1,
        proj_drop: float = 0.,
) -> ChannelsFirst:
    step = hire_step(block_idx, step_stride, step_dilation)
    return ChannelsFirst(HireMlp(dim, region_size=region_size, step=step, proj_drop=proj_drop))


@register_spatial_func('shift')
def _shift(
        dim: int,
        shift_size: int = 5,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        drop: float = 0.,
        dilation: int = 1,
) -> AxialShiftMlp:
    return AxialShiftMlp(dim, dim, shift_size=shift_size, act_layer=act_layer, drop=drop, dilation=dilation)


class MixingBlock(nn.Module):
    """Spatial function + CPE, then channel MLP, on (B, H, W, C) maps (see the module docstring).

    Args:
        dim: Channels.
        spatial: Name of the spatial function (:func:`list_spatial_funcs`).
        grid_size: Token grid the block is built for (needed by ``'mlp'``; ``'window_mlp'`` clamps its window to it).
        block_idx: Index of the block in its stage (per-block schedules of ``'window_mlp'`` and ``'hire'``).
        spatial_kwargs: Options for :func:`create_spatial_func`.
        spatial_module: A prebuilt spatial function to use instead of building one (weight sharing across blocks).
        channel_ratio: Hidden width of the channel MLP relative to ``dim``.
        layer_scale_init: Initial per-channel scale of the spatial branch; None for no scale.
        cpe: Add the depthwise 3x3 convolution branch.
        proj_drop: Dropout inside the channel MLP.
        drop_path: Stochastic depth of the spatial and channel branches (not of the CPE).
        norm_layer: Normalization over channels.
        act_layer: Activation of the channel MLP.
        run_grid_size: The larger grid the block runs on in a stage past the output stride (``'window_mlp'`` keeps
            its window and shifts its odd blocks once that grid holds more than one window).
        dilation: Dilation of the block's 3x3 convs (the CPE, ``'shift'``'s depthwise conv) in such a stage.
    """

    def __init__(
            self,
            dim: int,
            spatial: str = 'pass',
            grid_size: int | tuple[int, int] | None = None,
            block_idx: int = 0,
            spatial_kwargs: dict[str, Any] | None = None,
            spatial_module: nn.Module | None = None,
            channel_ratio: float = 2.,
            layer_scale_init: float | None = 1e-4,
            cpe: bool = True,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            act_layer: Callable[..., nn.Module] = nn.GELU,
            run_grid_size: tuple[int, int] | None = None,
            dilation: int = 1,
    ) -> None:
        super().__init__()
        grid_size = tuple(to_2tuple(grid_size)) if grid_size is not None else None
        if spatial_module is None:
            spatial_module = create_spatial_func(spatial, dim, grid_size, block_idx, dilation, run_grid_size,
                                                 **(spatial_kwargs or {}))
        self.token_mixer = spatial_module
        if spatial_module is not None:
            self.norm1 = norm_layer(dim)
            self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=dilation, dilation=dilation, groups=dim) if cpe else None
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * channel_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.drop_path, nn.Identity):  # stochastic depth: the plain formulation
            shortcut = x
            if self.token_mixer is not None:
                x = x + self.drop_path(self.ls1(self.token_mixer(self.norm1(shortcut))))
            if self.cpe is not None:
                x = x + self.cpe(shortcut.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        # the same sums with fewer passes over the map: x + cpe(x) is one depthwise conv (identity added to the
        # kernel's centre tap), the layer scale and the spatial branch meet the sum in one addcmul, and the channel
        # MLP's fc2 GEMM accumulates onto its shortcut
        y = self._cpe_residual(x) if self.cpe is not None else x
        if self.token_mixer is not None:
            scaled = isinstance(self.ls1, LayerScale) and not has_hooks(self.ls1)
            if scaled and isinstance(self.token_mixer, TokenMlp):  # y is fresh (and unseen) unless it is x
                y = self.token_mixer.scaled_residual(self.norm1(x), y, self.ls1.gamma, owns_residual=y is not x)
            else:
                branch = self.token_mixer(self.norm1(x))
                y = torch.addcmul(y, branch, self.ls1.gamma) if scaled else y + self.ls1(branch)
        # y is a fresh sum unless the block has neither CPE nor token mixer: then the MLP accumulates into it,
        # unless a hook on norm2 has seen it
        return mlp_residual(self.mlp, self.norm2(y), y, owns_residual=y is not x and not has_hooks(self.norm2))

    def _cpe_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x + cpe(x)`` as one depthwise conv whose kernel has 1 added at its centre (a 'same' padded conv)."""
        cpe = self.cpe
        weight = cached_fold(self, 'cpe', (cpe.weight,), lambda: _add_centre_tap(cpe.weight, cpe.kernel_size))
        out = F.conv2d(x.permute(0, 3, 1, 2), weight, cpe.bias, cpe.stride, cpe.padding, cpe.dilation, cpe.groups)
        return out.permute(0, 2, 3, 1)


def _add_centre_tap(weight: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """A depthwise kernel plus the identity (1 at the centre tap): ``conv(x, w + id) == x + conv(x, w)``."""
    kh, kw = kernel_size
    one = torch.ones_like(weight[:, :, :1, :1])
    return weight + F.pad(one, (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2))
