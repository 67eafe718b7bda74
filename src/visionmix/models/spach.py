"""SPACH: one skeleton for conv, Transformer and MLP models (Zhao et al., "A Battle of Network Structures: An Empirical
Study of CNN, Transformer, and MLP", arXiv:2108.13002).

A patch stem, then stages of :class:`~visionmix.layers.mixing.MixingBlock` (spatial function + depthwise-conv
position encoding, then channel MLP), LayerNorm, token mean and a linear classifier. The spatial function is chosen
per block by name: the official ``'pass'`` (conv model), ``'attn'`` and ``'mlp'``, and every other registered one
(``'hire'``, ``'window_mlp'``, ``'shift'``, see :mod:`visionmix.layers.mixing`). Single-stage models keep one width
and resolution (patch 16); multi-stage models have four stages (patch 4, then stride-2 conv + GroupNorm downsampling,
widths C, 2C, 4C, 8C).

The architecture is given as ``net_arch``: one entry per stage, each a list of ``(spatial, depth)`` or
``(spatial, depth, options)`` runs, or a single run. Any spec builds through the generic entry points::

    model = visionmix.create_model('spach_ms', net_arch=[['pass', 3], ['hire', 4], ['hire', 12], ['attn', 3]])
    model = visionmix.create_model('spach_ms', net_arch=[
        [('pass', 2)], [('window_mlp', 2, {'num_heads': 4})], [('pass', 2), ('attn', 4)], [('attn', 2)]])

Layout: channels-last maps (B, H, W, C) throughout, ``forward_features`` returns NHWC (``output_fmt = 'NHWC'``),
the classifier is ``head.fc``. Checked against the official code, github.com/microsoft/SPACH at commit
dcede1e86c9e183d4a734c67f8528d291d1c29d1 (``models/spach``); :func:`checkpoint_filter_fn` loads its checkpoints
losslessly. Differences from it, none of which changes a result at the trained size:

* Models without a token MLP run at any input size (the official model asserts its build size); token-MLP models
  raise a clear error for other sizes.
* The classifier starts from xavier init unless ``zero_init_head=True`` (the official init zeroes it; that would make
  every freshly built model output zeros whatever its seed).
* Layer scales are 1-D (``ls1.gamma``, shape (C,)) instead of (1, 1, C).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, to_2tuple
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices

from ..errors import VisionmixError
from ..layers.mixing import MixingBlock, check_spatial_options, create_spatial_func
from ..checkpoint import unwrapping
from ..registry import ModelCard, card_to_pretrained_fields, register_visionmix_model
from ..layers.stride import plan_stages

__all__ = ['Spach', 'SpachStem', 'SpachDownsample', 'SpachStage', 'parse_net_arch', 'checkpoint_filter_fn']

# one run of blocks: (spatial function, depth, options for that spatial function)
Run = tuple[str, int, dict[str, Any]]
NUM_FEATURE_BLOCKS = 4  # single-stage models expose their last blocks as features


def parse_net_arch(net_arch: Sequence[Any], depths: Sequence[int] | None = None) -> list[list[Run]]:
    """Normalise a ``net_arch`` spec to ``[[(spatial, depth, options), ...] per stage]``.

    Args:
        net_arch: One entry per stage: a run ``(spatial, depth[, options])`` or a list of runs.
        depths: Optional new block count per stage. The stage's blocks are resampled evenly and in order, so a stage
            keeps its mix of spatial functions (``[pass x2, attn x10]`` at depth 2 becomes ``[pass, attn]``).

    Raises:
        ValueError: A malformed spec, or ``depths`` of another length.
    """
    stages = []
    for stage in net_arch:
        runs = [stage] if isinstance(stage, (list, tuple)) and stage and isinstance(stage[0], str) else stage
        parsed = []
        for run in runs:
            if not (isinstance(run, (list, tuple)) and len(run) in (2, 3) and isinstance(run[0], str)
                    and isinstance(run[1], int) and run[1] >= 0):
                raise VisionmixError(f'a net_arch run is (spatial, depth) or (spatial, depth, options), got {run!r}')
            options = dict(run[2]) if len(run) == 3 else {}
            check_spatial_options(run[0], options)
            parsed.append((run[0], run[1], options))
        stages.append(parsed)
    if not stages:
        raise VisionmixError('net_arch needs at least one stage')
    if depths is not None:
        if len(depths) != len(stages):
            raise VisionmixError(f'depths {tuple(depths)} needs one entry per stage ({len(stages)} stages)')
        stages = [_resample(runs, d) for runs, d in zip(stages, depths)]
    return stages


def _resample(runs: list[Run], depth: int) -> list[Run]:
    blocks = [(name, opts) for name, n, opts in runs for _ in range(n)]
    if depth == 0 or not blocks:
        return []
    picks = [blocks[round(i * (len(blocks) - 1) / max(depth - 1, 1))] for i in range(depth)]
    out: list[Run] = []
    for name, opts in picks:  # merge consecutive picks of the same run back into runs
        if out and out[-1][0] == name and out[-1][2] is opts:
            out[-1] = (name, out[-1][1] + 1, opts)
        else:
            out.append((name, 1, opts))
    return out


class SpachStem(nn.Module):
    """Patch embedding to a channels-last map, then LayerNorm.

    ``'conv1'``: one ``patch x patch`` conv with stride ``patch``. ``'conv4'``: conv 7x7 stride 2 (64 channels,
    no bias) + BN + ReLU, twice conv 3x3 + BN + ReLU, then a ``patch/2`` conv with stride ``patch/2``.

    Args:
        in_chans: Input channels.
        embed_dim: Output channels.
        patch_size: Total stride.
        stem_type: ``'conv1'`` or ``'conv4'``.
        norm_layer: Normalization after the stem (None for none, as MLP-Mixer).
    """

    def __init__(
            self,
            in_chans: int,
            embed_dim: int,
            patch_size: int,
            stem_type: str = 'conv1',
            norm_layer: Callable[..., nn.Module] | None = partial(nn.LayerNorm, eps=1e-6),
    ) -> None:
        super().__init__()
        if stem_type == 'conv1':
            self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        elif stem_type == 'conv4':
            if patch_size % 2:
                raise VisionmixError(f"the 'conv4' stem needs an even patch size, got {patch_size}")
            hidden, sub = 64, patch_size // 2
            self.proj = nn.Sequential(
                nn.Conv2d(in_chans, hidden, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, embed_dim, sub, stride=sub),
            )
        else:
            raise VisionmixError(f"stem_type must be 'conv1' or 'conv4', got {stem_type!r}")
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SpachDownsample(nn.Module):
    """Halve the resolution of a channels-last map: conv 2x2 stride 2 (no bias), then GroupNorm with one group.

    With ``stride=1`` (a stage past the output stride) the 2x2 conv is dilated by ``dilation`` and the map is
    zero-padded by ``dilation`` at the bottom / right, so the size is kept; with ``dilation=1`` its even positions are
    exactly the stride-2 conv's output.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2, dilation: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2) or (stride == 2 and dilation != 1):
            raise VisionmixError(f'the downsampling conv runs at stride 2, or at stride 1 with a dilation, got stride '
                                 f'{stride}, dilation {dilation}')
        self.conv = nn.Conv2d(in_chs, out_chs, 2, stride=stride, dilation=dilation, bias=False)
        self.norm = nn.GroupNorm(1, out_chs)  # one group: normalises over C, H and W together
        self.pad = dilation if stride == 1 else 0  # bottom / right: position i merges i and i + dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        if self.pad:
            x = F.pad(x, (0, self.pad, 0, self.pad))
        return self.norm(self.conv(x)).permute(0, 2, 3, 1)


class SpachStage(nn.Module):
    """Optional downsampling, then the mixing blocks of one stage.

    Args:
        in_chs: Input channels.
        dim: Channels of the blocks.
        runs: ``(spatial, depth, options)`` runs of blocks, in order.
        grid_size: Token grid of the blocks at the build size.
        downsample: Start with a :class:`SpachDownsample` (``in_chs -> dim``).
        drop_path: Stochastic depth per block.
        shared_spatial: One spatial function for all blocks of the stage (SPACH's weight sharing); the stage
            must use a single spatial function other than ``'pass'``.
        spatial_kwargs: Model-wide spatial-function options; a run's own options override them.
        down_stride: Stride of the downsampling (1 in a stage past the output stride).
        down_dilation: Dilation of the downsampling conv at stride 1.
        dilations: Dilation of each block's 3x3 convs (all 1 if None).
        run_grid_size: The grid a stage past the output stride runs on, larger than ``grid_size``.
        **block_kwargs: Passed to every :class:`MixingBlock`.
    """

    def __init__(
            self,
            in_chs: int,
            dim: int,
            runs: list[Run],
            grid_size: tuple[int, int],
            downsample: bool,
            drop_path: Sequence[float],
            shared_spatial: bool = False,
            spatial_kwargs: Mapping[str, Any] | None = None,
            down_stride: int = 2,
            down_dilation: int = 1,
            dilations: Sequence[int] | None = None,
            run_grid_size: tuple[int, int] | None = None,
            **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if not downsample and in_chs != dim:
            raise VisionmixError(f'a stage without downsampling keeps its width, got {in_chs} -> {dim}')
        dilations = dilations or [1] * sum(d for _, d, _ in runs)
        self.grad_checkpointing = False
        self.downsample = SpachDownsample(in_chs, dim, down_stride, down_dilation) if downsample else nn.Identity()
        grids = dict(grid_size=grid_size, run_grid_size=run_grid_size)
        shared = None
        if shared_spatial and runs:
            names = {name for name, _, _ in runs}
            if len(names) != 1 or 'pass' in names:
                raise VisionmixError(f'shared_spatial needs one spatial function other than pass per stage, got '
                                     f'{names}')
            # one module for every block: it takes block 0's rate
            shared = create_spatial_func(runs[0][0], dim, block_idx=0, dilation=(list(dilations) or [1])[0], **grids,
                                         **{**(spatial_kwargs or {}), **runs[0][2]})
        blocks = []
        for name, depth, options in runs:
            for _ in range(depth):
                i = len(blocks)
                blocks.append(MixingBlock(
                    dim, name, block_idx=i, spatial_kwargs={**(spatial_kwargs or {}), **options},
                    spatial_module=shared, drop_path=drop_path[i], dilation=dilations[i], **grids, **block_kwargs))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class Spach(nn.Module):
    """SPACH network, single- or multi-stage (one stage per ``net_arch`` entry).

    Args:
        net_arch: Blocks per stage as runs of spatial functions (see :func:`parse_net_arch`).
        embed_dim: Width of the first stage; it doubles at every later stage.
        patch_size: Stride of the stem.
        img_size: Build size; fixes the token count of ``'mlp'`` spatial functions (and the window clamping of
            ``'window_mlp'``). Models without a token MLP run at other sizes too.
        in_chans: Input channels.
        num_classes: Classifier outputs (0 for none).
        global_pool: ``'avg'`` (token mean) or ``''`` (no pooling).
        num_heads: Heads of ``'attn'`` / ``'window_mlp'``, the same in every stage (as the official code).
        qkv_bias: Bias of the attention's qkv projection.
        token_ratio: Hidden width of a token MLP relative to its number of tokens.
        token_hidden: Hidden width of the token MLPs, overriding ``token_ratio`` (MLP-Mixer's convention).
        channel_ratio: Hidden width of the channel MLPs relative to the stage width.
        layer_scale: Scale the spatial branch per channel (the official ``scaled``).
        layer_scale_init: Initial value of that scale.
        cpe: Add the depthwise 3x3 conv branch to every block.
        shared_spatial: Share one spatial function among the blocks of each stage.
        stem_type: ``'conv1'`` or ``'conv4'`` (see :class:`SpachStem`).
        stem_norm: LayerNorm after the stem.
        spatial_kwargs: Extra options for the spatial functions (e.g. ``window_size``, ``region_size``).
        depths: Override the number of blocks per stage, keeping each stage's mix of spatial functions.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout inside the blocks (MLPs and the attention projection).
        attn_drop_rate: Attention dropout.
        drop_path_rate: Stochastic depth: the same in every block of a single-stage model, rising linearly from 0
            over all blocks of a multi-stage one (as the official code).
        zero_init_head: Zero the classifier at init, as the official code does.
        norm_layer: Normalization over channels.
        act_layer: Activation of the MLPs.
        output_stride: 32, 16 or 8 (multi-stage models): the stages past it keep their resolution (the 2x2
            downsampling conv at stride 1, dilated by the previous stage's rate with ``'constant'``, by 1 with
            ``'hdc'``), their 3x3 convs (the CPE, ``'shift'``'s depthwise conv) are dilated, and ``'attn'``,
            ``'hire'``, ``'window_mlp'`` (same window, odd blocks shifted once the map holds several) and
            ``'shift'`` run on the larger map. ``'mlp'`` cannot: its weights are tied to the token count.
            Single-stage models run at their patch stride throughout (output_stride at or above it is a no-op).
        dilation: ``'constant'`` or ``'hdc'`` (see :mod:`visionmix.models.dilated_resnet`).
    """

    def __init__(
            self,
            net_arch: Sequence[Any] = (('pass', 12),),
            embed_dim: int = 384,
            patch_size: int = 16,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            num_heads: int = 12,
            qkv_bias: bool = True,
            token_ratio: float = 0.5,
            token_hidden: int | None = None,
            channel_ratio: float = 2.,
            layer_scale: bool = True,
            layer_scale_init: float = 1e-4,
            cpe: bool = True,
            shared_spatial: bool = False,
            stem_type: str = 'conv1',
            stem_norm: bool = True,
            spatial_kwargs: Mapping[str, Any] | None = None,
            depths: Sequence[int] | None = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_head: bool = False,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            act_layer: Callable[..., nn.Module] = nn.GELU,
            output_stride: int = 32,
            dilation: str = 'constant',
    ) -> None:
        super().__init__()
        stages_arch = parse_net_arch(net_arch, depths)
        num_stages = len(stages_arch)
        self.num_classes = num_classes
        self.output_fmt = 'NHWC'
        self.grad_checkpointing = False
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.stem = SpachStem(in_chans, embed_dim, patch_size, stem_type, norm_layer if stem_norm else None)
        grid = tuple(s // patch_size for s in to_2tuple(img_size))
        spatial_kwargs = dict(
            num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate,
            token_ratio=token_ratio, token_hidden=token_hidden, act_layer=act_layer, drop=proj_drop_rate,
            **(spatial_kwargs or {}))
        total = sum(d for runs in stages_arch for _, d, _ in runs)
        if num_stages == 1:
            dpr = [drop_path_rate] * total
        else:
            dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        stage_depths = [sum(d for _, d, _ in runs) for runs in stages_arch]
        plans = plan_stages([1] + [2] * (num_stages - 1), stage_depths, output_stride, dilation,
                            stem_reduction=patch_size)
        stages = []
        first = 0
        for i, (runs, plan, depth) in enumerate(zip(stages_arch, plans, stage_depths)):
            if i > 0:
                grid = tuple(g // 2 for g in grid)
            run_grid = tuple(g * 2 ** i * patch_size // plan.reduction for g in grid) if plan.dilated else None
            _check_size_free(i, runs, grid, run_grid, output_stride)
            stages.append(SpachStage(
                dims[max(i - 1, 0)], dims[i], runs, grid, downsample=i > 0, drop_path=dpr[first:first + depth],
                shared_spatial=shared_spatial, spatial_kwargs=spatial_kwargs, down_stride=plan.stride,
                down_dilation=plan.first_rate, dilations=plan.rates, run_grid_size=run_grid,
                channel_ratio=channel_ratio, layer_scale_init=layer_scale_init if layer_scale else None, cpe=cpe,
                proj_drop=proj_drop_rate, norm_layer=norm_layer, act_layer=act_layer,
            ))
            first += depth
        self.stages = nn.Sequential(*stages)

        # feature points (stage, block): the end of every stage, or the last blocks of a single stage
        if num_stages > 1:
            self._taps = [(i, len(s.blocks) - 1) for i, s in enumerate(stages)]
        else:
            n = len(stages[0].blocks)
            self._taps = [(0, b) for b in range(max(n - NUM_FEATURE_BLOCKS, 0), n)]
        self.feature_info = [
            dict(num_chs=dims[s], reduction=plans[s].reduction,
                 module=f'stages.{s}' if num_stages > 1 else f'stages.0.blocks.{b}')
            for s, b in self._taps]

        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt)
        self.apply(self._init_weights)
        if zero_init_head and isinstance(self.head.fc, nn.Linear):
            nn.init.zeros_(self.head.fc.weight)
            nn.init.zeros_(self.head.fc.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # the official init; WindowSpatialMlp and LayerScale keep their own
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier; ``num_classes=0`` returns pooled features, ``global_pool=''`` the NHWC map."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps (NCHW) at the feature points of ``feature_info``, and optionally the final features.

        Args:
            x: Images (B, C, H, W).
            indices: Last ``n`` feature points if int, all if None, else the listed indices.
            norm: Apply the final norm to the intermediates it fits (the last stage's width).
            stop_early: Stop after the last requested feature point.
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or ``(forward_features output (NHWC), intermediates)``.
        """
        if output_fmt != 'NCHW':
            raise VisionmixError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self._taps), indices)
        taps = {self._taps[i]: i for i in take_indices}
        last = (len(self.stages) - 1, len(self.stages[-1].blocks) - 1)
        end = self._taps[max_index] if stop_early and not torch.jit.is_scripting() else last

        intermediates = []
        x = self.stem(x)
        for s, stage in enumerate(self.stages[:end[0] + 1]):
            x = stage.downsample(x)
            blocks = stage.blocks if s < end[0] else stage.blocks[:end[1] + 1]
            for b, block in enumerate(blocks):
                x = block(x)
                if (s, b) in taps:
                    fits = norm and self.feature_info[taps[(s, b)]]['num_chs'] == self.num_features
                    intermediates.append((self.norm(x) if fits else x).permute(0, 3, 1, 2))
        if intermediates_only:
            return intermediates
        if end == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks (and norm / head) not needed for the given feature points; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self._taps), indices)
        s, b = self._taps[max_index]
        prune_end = (s, b) != (len(self.stages) - 1, len(self.stages[-1].blocks) - 1)
        self.stages = self.stages[:s + 1]
        self.stages[s].blocks = self.stages[s].blocks[:b + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalized last map (B, H', W', num_features), channels last."""
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# official block-internal names -> ours
_BLOCK_RENAMES = (('spatial_func.', 'token_mixer.'), ('channel_func.', 'mlp.'), ('cpe_net.net.1.', 'cpe.'),
                  ('gamma_1', 'ls1.gamma'))


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: Spach) -> dict[str, torch.Tensor]:
    """Rename the keys of an official SPACH state dict (unwrapped from its ``'model'`` entry) to this layout.

    Official single-stage ``blocks.j`` -> ``stages.0.blocks.j``; multi-stage ``layer{s}.j`` -> ``stages.{s-1}``, where
    ``layer{s}.0`` of s > 1 is the downsampling (``net.1.0`` conv, ``net.1.1`` GroupNorm) and the blocks follow;
    top-level ``norm1`` -> ``stem.norm``, ``norm2`` -> ``norm``, ``head`` -> ``head.fc``; inside blocks
    ``spatial_func`` -> ``token_mixer``, ``channel_func`` -> ``mlp``, ``cpe_net.net.1`` -> ``cpe``, ``gamma_1``
    (1, 1, C) -> ``ls1.gamma`` (C,). A dict already in our layout is returned unchanged.
    """
    if not any(k.startswith(('blocks.', 'layer1.', 'norm1.', 'norm2.')) for k in state_dict):
        return dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.startswith('norm1.'):
            k = 'stem.norm.' + k[len('norm1.'):]
        elif k.startswith('norm2.'):
            k = 'norm.' + k[len('norm2.'):]
        elif k.startswith('head.'):
            k = 'head.fc.' + k[len('head.'):]
        elif m := re.match(r'(?:blocks\.(\d+)|layer(\d)\.(\d+))\.(.*)', k):
            single, stage, idx, rest = m.groups()
            if single is not None:
                s, j = 0, int(single)
            else:
                s, j = int(stage) - 1, int(idx) - (1 if int(stage) > 1 else 0)
            if j < 0:  # the downsampling that opens stages 2-4
                k = f'stages.{s}.downsample.' + rest.replace('net.1.0.', 'conv.').replace('net.1.1.', 'norm.')
            else:
                for old, new in _BLOCK_RENAMES:
                    rest = rest.replace(old, new)
                if rest == 'ls1.gamma':
                    v = v.reshape(-1)
                k = f'stages.{s}.blocks.{j}.{rest}'
        out[k] = v
    return out


def _check_size_free(stage: int, runs: list[Run], grid: tuple[int, ...], run_grid: tuple[int, ...] | None,
                     output_stride: int) -> None:
    """Refuse a token MLP in a stage that a smaller output stride runs on a larger map (one line)."""
    if run_grid is not None and any(name == 'mlp' for name, depth, _ in runs if depth):
        built, run = ('x'.join(map(str, g)) for g in (grid, run_grid))
        raise VisionmixError(
            f"SPACH stage {stage} uses the token MLP ('mlp'), whose weights are tied to its {built} token grid: "
            f'output_stride={output_stride} would run it on {run} tokens; use output_stride=32 or a spatial '
            f'function whose weights do not depend on the map size (pass, attn, hire, window_mlp, shift)')


def _create_spach(variant: str, pretrained: bool = False, **kwargs: Any) -> Spach:
    return build_model_with_cfg(
        Spach, variant, pretrained,
        pretrained_filter_fn=unwrapping(checkpoint_filter_fn),
        # NHWC blocks: the getter wrapper returns NCHW maps through forward_intermediates
        feature_cfg=dict(feature_cls='getter', out_indices=kwargs.pop('out_indices', None) or _all_taps(kwargs)),
        **kwargs)


def _all_taps(kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    """Indices of every feature point of the model the kwargs describe (4 stages, or up to 4 last blocks)."""
    arch = parse_net_arch(kwargs['net_arch'], kwargs.get('depths'))
    if len(arch) > 1:
        return tuple(range(len(arch)))
    return tuple(range(min(NUM_FEATURE_BLOCKS, sum(d for _, d, _ in arch[0]))))


def _ss(spatial: str, depth: int) -> list[list[tuple[str, int]]]:
    return [[(spatial, depth)]]


def _ms(spatial: str, depths: Sequence[int]) -> list[list[tuple[str, int]]]:
    """Multi-stage arch with a ``'pass'`` first stage and ``spatial`` in stages 2-4."""
    return [[('pass', depths[0])]] + [[(spatial, d)] for d in depths[1:]]


# The official constructors' settings per variant: the one place a variant is described. Everything else about a
# variant (its cfg's pool size, first conv, fixed input size) is derived from these, never from its name.
_SS = dict(patch_size=16, token_ratio=0.5)
_MS = dict(patch_size=4, token_ratio=0.5)
HYBRID_MS_S_ARCH = [[('pass', 3)], [('pass', 2), ('attn', 2)], [('pass', 2), ('attn', 10)], [('pass', 1), ('attn', 2)]]
_XS_HYBRID_ARCH = [[('pass', 3)], [('pass', 4)], [('pass', 2), ('attn', 10)], [('pass', 1), ('attn', 2)]]
_S = dict(channel_ratio=3.)
VARIANTS: dict[str, dict[str, Any]] = {
    'spach': dict(net_arch=_ss('pass', 12), embed_dim=384, num_heads=12, **_SS),
    'spach_ms': dict(net_arch=_ms('pass', (2, 2, 6, 2)), embed_dim=64, num_heads=2, **_MS),
    'spach_ms_xxs_patch4_224_conv': dict(net_arch=_ms('pass', (2, 2, 6, 2)), embed_dim=64, num_heads=2, **_MS),
    'spach_ms_xxs_patch4_224_attn': dict(net_arch=_ms('attn', (2, 2, 6, 2)), embed_dim=32, num_heads=1, **_MS),
    'spach_ms_xxs_patch4_224_mlp': dict(net_arch=_ms('mlp', (2, 2, 6, 2)), embed_dim=64, num_heads=2, **_MS),
    'spach_ms_xs_patch4_224_conv': dict(net_arch=_ms('pass', (3, 4, 12, 3)), embed_dim=96, num_heads=3, **_MS),
    'spach_ms_xs_patch4_224_attn': dict(net_arch=_ms('attn', (3, 4, 12, 3)), embed_dim=64, num_heads=2, **_MS),
    'spach_ms_xs_patch4_224_mlp': dict(net_arch=_ms('mlp', (3, 4, 12, 3)), embed_dim=96, num_heads=3, **_MS),
    'spach_ms_xs_patch4_224_hybrid': dict(net_arch=_XS_HYBRID_ARCH, embed_dim=96, num_heads=3, **_MS),
    'spach_ms_s_patch4_224_conv': dict(net_arch=_ms('pass', (3, 4, 12, 3)), embed_dim=128, num_heads=4, **_S, **_MS),
    'spach_ms_s_patch4_224_attn': dict(net_arch=_ms('attn', (3, 4, 12, 3)), embed_dim=96, num_heads=3, **_S, **_MS),
    'spach_ms_s_patch4_224_mlp': dict(net_arch=_ms('mlp', (3, 4, 12, 3)), embed_dim=128, num_heads=4, **_S, **_MS),
    'spach_ms_s_patch4_224_hybrid': dict(net_arch=HYBRID_MS_S_ARCH, embed_dim=128, num_heads=4, **_S, **_MS),
    # Hybrid-MS-S+: the official README's checkpoint, which the official code has no constructor for (see its card)
    'spach_ms_s_plus_patch4_224_hybrid': dict(net_arch=HYBRID_MS_S_ARCH, embed_dim=128, num_heads=4,
                                              stem_type='conv4', **_S, **_MS),
    'spach_xxs_patch16_224_conv': dict(net_arch=_ss('pass', 12), embed_dim=384, num_heads=12, **_SS),
    'spach_xxs_patch16_224_attn': dict(net_arch=_ss('attn', 12), embed_dim=192, num_heads=6, **_SS),
    'spach_xxs_patch16_224_mlp': dict(net_arch=_ss('mlp', 12), embed_dim=384, num_heads=12, **_SS),
    'spach_xs_patch16_224_conv': dict(net_arch=_ss('pass', 24), embed_dim=384, num_heads=12, **_SS),
    'spach_xs_patch16_224_attn': dict(net_arch=_ss('attn', 12), embed_dim=384, num_heads=12, **_SS),
    'spach_xs_patch16_224_mlp': dict(net_arch=_ss('mlp', 24), embed_dim=384, num_heads=12, **_SS),
    'spach_s_patch16_224_conv': dict(net_arch=_ss('pass', 24), embed_dim=512, num_heads=16, **_S, **_SS),
    'spach_s_patch16_224_attn': dict(net_arch=_ss('attn', 12), embed_dim=512, num_heads=16, **_S, **_SS),
    'spach_s_patch16_224_mlp': dict(net_arch=_ss('mlp', 24), embed_dim=512, num_heads=16, **_S, **_SS),
}


_PAPER = 'A Battle of Network Structures: An Empirical Study of CNN, Transformer, and MLP'
_CODE = 'https://github.com/microsoft/SPACH'
_COMMIT = 'dcede1e86c9e183d4a734c67f8528d291d1c29d1'
_RELEASE = f'{_CODE}/releases/download/v1.0'
_VERIFIED = ('params exact (= official code), GMACs within 0.4% of the issue table (FlopCounterMode), outputs equal '
             'the official code with the same random weights (max abs diff <= 1.2e-06 at 224, every variant: '
             'benchmarks/results/spach_fidelity.md), official layout loads strict')
_VERIFIED_SINGLE_STAGE = _VERIFIED.replace('within 0.4% of the issue table', 'measured (no published figure)')


def _card(name: str, family: str, params: int, gmacs: float, paper_gmacs: float | None = None,
          top1: float | None = None, notes: str = '') -> ModelCard:
    return ModelCard(
        name=name, family=family, paper=_PAPER, arxiv='2108.13002', code_url=_CODE,
        code_commit=_COMMIT, params=params, gmacs=gmacs, paper_gmacs=paper_gmacs, top1=top1,
        top1_source='official README (ImageNet-1k, 224)' if top1 is not None else 'none published',
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, license='MIT',
        verified=_VERIFIED if _multi_stage(name) else _VERIFIED_SINGLE_STAGE, notes=notes)


def _multi_stage(name: str) -> bool:
    return len(VARIANTS[name]['net_arch']) > 1


_TOKEN_MLP_NOTE = 'Token-MLP model: runs at its img_size only (build with img_size=... for another size).'
_NO_WEIGHTS = 'No official weights are published for this variant.'
_CARDS = {c.name: c for c in [
    # multi-stage
    _card('spach_ms_xxs_patch4_224_conv', 'conv', 5_085_224, 0.712, 0.7, 73.1),
    _card('spach_ms_xxs_patch4_224_attn', 'transformer', 2_372_744, 0.530, 0.5, 65.4),
    _card('spach_ms_xxs_patch4_224_mlp', 'mlp', 6_562_446, 0.931, 0.9, 74.5, notes=_TOKEN_MLP_NOTE),
    _card('spach_ms_xs_patch4_224_conv', 'conv', 17_302_120, 2.755, notes=_NO_WEIGHTS),
    _card('spach_ms_xs_patch4_224_attn', 'transformer', 14_479_080, 3.082, notes=_NO_WEIGHTS),
    _card('spach_ms_xs_patch4_224_mlp', 'mlp', 20_260_283, 3.409, notes=f'{_TOKEN_MLP_NOTE} {_NO_WEIGHTS}'),
    _card('spach_ms_xs_patch4_224_hybrid', 'hybrid', 27_956_584, 4.444, notes=_NO_WEIGHTS),
    _card('spach_ms_s_patch4_224_conv', 'conv', 43_576_168, 7.141, 7.2, 81.6),
    _card('spach_ms_s_patch4_224_attn', 'transformer', 39_537_544, 7.532, 7.6, 82.9),
    _card('spach_ms_s_patch4_224_mlp', 'mlp', 46_542_011, 8.014, 8.2, 82.1, notes=_TOKEN_MLP_NOTE),
    _card('spach_ms_s_patch4_224_hybrid', 'hybrid', 63_028_584, 11.051, 11.2, 83.7),
    _card('spach_ms_s_plus_patch4_224_hybrid', 'hybrid', 63_138_728, 12.177, 12.3, 83.9, notes=(
        'The official README lists this checkpoint (Hybrid-MS-S+) but the official code has no constructor for it: '
        "built as Hybrid-MS-S with the official 'conv4' stem, which reproduces the published 63M / 12.3G.")),
    # single-stage
    _card('spach_xxs_patch16_224_conv', 'conv', 7_828_840, 1.45, notes=_NO_WEIGHTS),
    _card('spach_xxs_patch16_224_attn', 'transformer', 3_931_048, 0.90, notes=_NO_WEIGHTS),
    _card('spach_xxs_patch16_224_mlp', 'mlp', 8_307_184, 1.63, notes=f'{_TOKEN_MLP_NOTE} {_NO_WEIGHTS}'),
    _card('spach_xs_patch16_224_conv', 'conv', 14_975_848, 2.85, notes=_NO_WEIGHTS),
    _card('spach_xs_patch16_224_attn', 'transformer', 14_938_984, 3.19, notes=_NO_WEIGHTS),
    _card('spach_xs_patch16_224_mlp', 'mlp', 15_932_536, 3.20, notes=f'{_TOKEN_MLP_NOTE} {_NO_WEIGHTS}'),
    _card('spach_s_patch16_224_conv', 'conv', 38_854_120, 7.50, notes=_NO_WEIGHTS),
    _card('spach_s_patch16_224_attn', 'transformer', 32_507_368, 6.73, notes=_NO_WEIGHTS),
    _card('spach_s_patch16_224_mlp', 'mlp', 39_820_024, 7.97, notes=f'{_TOKEN_MLP_NOTE} {_NO_WEIGHTS}'),
]}
_GENERIC_NOTE = ('Generic builder: pass net_arch (and widths) for any SPACH model; params / GMACs are those of the '
                 'default spec ({spec}).')
_CARDS['spach'] = ModelCard(
    name='spach', family='hybrid', paper=_PAPER, arxiv='2108.13002', code_url=_CODE, code_commit=_COMMIT,
    params=7_828_840, gmacs=1.45, top1_source='none (generic builder)', mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD, license='MIT',
    verified='default spec = spach_xxs_patch16_224_conv', notes=_GENERIC_NOTE.format(spec='spach_xxs_patch16_224_conv'))
_CARDS['spach_ms'] = ModelCard(
    name='spach_ms', family='hybrid', paper=_PAPER, arxiv='2108.13002', code_url=_CODE, code_commit=_COMMIT,
    params=5_085_224, gmacs=0.71, top1_source='none (generic builder)', mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD, license='MIT',
    verified='default spec = spach_ms_xxs_patch4_224_conv',
    notes=_GENERIC_NOTE.format(spec='spach_ms_xxs_patch4_224_conv'))

_WEIGHTS = {
    'spach_ms_xxs_patch4_224_conv': 'spach_ms_conv_xxs.pth', 'spach_ms_xxs_patch4_224_attn': 'spach_ms_trans_xxs.pth',
    'spach_ms_xxs_patch4_224_mlp': 'spach_ms_mlp_xxs.pth', 'spach_ms_s_patch4_224_conv': 'spach_ms_conv_s.pth',
    'spach_ms_s_patch4_224_attn': 'spach_ms_trans_s.pth', 'spach_ms_s_patch4_224_mlp': 'spach_ms_mlp_s.pth',
    'spach_ms_s_patch4_224_hybrid': 'spach_ms_hybrid_s.pth',
    'spach_ms_s_plus_patch4_224_hybrid': 'spach_ms_hybrid_s+.pth',
}


def _cfg(name: str) -> dict[str, Any]:
    variant = VARIANTS[name]
    arch = parse_net_arch(variant['net_arch'])
    # multi-stage: the patch stem, then three stride-2 downsamplings
    reduction = variant['patch_size'] * (2 ** (len(arch) - 1))
    return {
        'url': f'{_RELEASE}/{_WEIGHTS[name]}' if name in _WEIGHTS else '', 'num_classes': 1000,
        'pool_size': (224 // reduction, 224 // reduction), 'crop_pct': 0.875, 'interpolation': 'bicubic',
        'fixed_input_size': any(spatial == 'mlp' for runs in arch for spatial, _, _ in runs),
        'classifier': 'head.fc', 'first_conv': 'stem.proj.0' if variant.get('stem_type') == 'conv4' else 'stem.proj',
        **card_to_pretrained_fields(_CARDS[name]),
    }


default_cfgs = generate_default_cfgs({
    (f'{name}.in1k' if name in _WEIGHTS else name): _cfg(name) for name in _CARDS
})


def _build(name: str, pretrained: bool, kwargs: dict[str, Any]) -> Spach:
    return _create_spach(name, pretrained, **dict(VARIANTS[name], **kwargs))


@register_visionmix_model(_CARDS['spach'])
def spach(pretrained: bool = False, **kwargs: Any) -> Spach:
    """Any single-stage SPACH model (patch 16); defaults to SPACH-Conv-XXS. Pass ``net_arch`` for another spec."""
    return _build('spach', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms'])
def spach_ms(pretrained: bool = False, **kwargs: Any) -> Spach:
    """Any multi-stage SPACH model (patch 4); defaults to SPACH-Conv-MS-XXS. Pass ``net_arch`` for another spec,
    e.g. ``net_arch=[['pass', 3], ['hire', 4], ['hire', 12], ['attn', 3]]``."""
    return _build('spach_ms', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_xxs_patch4_224_conv'])
def spach_ms_xxs_patch4_224_conv(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Conv-MS-XXS: 5.1M params, 73.1% top-1."""
    return _build('spach_ms_xxs_patch4_224_conv', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_xxs_patch4_224_attn'])
def spach_ms_xxs_patch4_224_attn(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Trans-MS-XXS: 2.4M params, 65.4% top-1."""
    return _build('spach_ms_xxs_patch4_224_attn', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_xxs_patch4_224_mlp'])
def spach_ms_xxs_patch4_224_mlp(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-MLP-MS-XXS: 6.6M params, 74.5% top-1 (token MLPs tied to img_size)."""
    return _build('spach_ms_xxs_patch4_224_mlp', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_xs_patch4_224_conv'])
def spach_ms_xs_patch4_224_conv(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Conv-MS-XS: 17.3M params."""
    return _build('spach_ms_xs_patch4_224_conv', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_xs_patch4_224_attn'])
def spach_ms_xs_patch4_224_attn(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Trans-MS-XS: 14.5M params."""
    return _build('spach_ms_xs_patch4_224_attn', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_xs_patch4_224_mlp'])
def spach_ms_xs_patch4_224_mlp(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-MLP-MS-XS: 20.3M params (token MLPs tied to img_size)."""
    return _build('spach_ms_xs_patch4_224_mlp', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_xs_patch4_224_hybrid'])
def spach_ms_xs_patch4_224_hybrid(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Hybrid-MS-XS: 28.0M params."""
    return _build('spach_ms_xs_patch4_224_hybrid', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_s_patch4_224_conv'])
def spach_ms_s_patch4_224_conv(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Conv-MS-S: 43.6M params, 81.6% top-1."""
    return _build('spach_ms_s_patch4_224_conv', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_s_patch4_224_attn'])
def spach_ms_s_patch4_224_attn(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Trans-MS-S: 39.5M params, 82.9% top-1."""
    return _build('spach_ms_s_patch4_224_attn', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_s_patch4_224_mlp'])
def spach_ms_s_patch4_224_mlp(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-MLP-MS-S: 46.5M params, 82.1% top-1 (token MLPs tied to img_size)."""
    return _build('spach_ms_s_patch4_224_mlp', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_s_patch4_224_hybrid'])
def spach_ms_s_patch4_224_hybrid(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Hybrid-MS-S: 63.0M params, 83.7% top-1."""
    return _build('spach_ms_s_patch4_224_hybrid', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_ms_s_plus_patch4_224_hybrid'])
def spach_ms_s_plus_patch4_224_hybrid(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Hybrid-MS-S+: Hybrid-MS-S with the 4-conv stem, 63.1M params, 83.9% top-1."""
    return _build('spach_ms_s_plus_patch4_224_hybrid', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_xxs_patch16_224_conv'])
def spach_xxs_patch16_224_conv(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Conv-XXS (single stage): 7.8M params."""
    return _build('spach_xxs_patch16_224_conv', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_xxs_patch16_224_attn'])
def spach_xxs_patch16_224_attn(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Trans-XXS (single stage): 3.9M params."""
    return _build('spach_xxs_patch16_224_attn', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_xxs_patch16_224_mlp'])
def spach_xxs_patch16_224_mlp(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-MLP-XXS (single stage): 8.3M params (token MLPs tied to img_size)."""
    return _build('spach_xxs_patch16_224_mlp', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_xs_patch16_224_conv'])
def spach_xs_patch16_224_conv(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Conv-XS (single stage): 15.0M params."""
    return _build('spach_xs_patch16_224_conv', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_xs_patch16_224_attn'])
def spach_xs_patch16_224_attn(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Trans-XS (single stage): 14.9M params."""
    return _build('spach_xs_patch16_224_attn', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_xs_patch16_224_mlp'])
def spach_xs_patch16_224_mlp(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-MLP-XS (single stage): 15.9M params (token MLPs tied to img_size)."""
    return _build('spach_xs_patch16_224_mlp', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_s_patch16_224_conv'])
def spach_s_patch16_224_conv(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Conv-S (single stage): 38.9M params."""
    return _build('spach_s_patch16_224_conv', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_s_patch16_224_attn'])
def spach_s_patch16_224_attn(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-Trans-S (single stage): 32.5M params."""
    return _build('spach_s_patch16_224_attn', pretrained, kwargs)


@register_visionmix_model(_CARDS['spach_s_patch16_224_mlp'])
def spach_s_patch16_224_mlp(pretrained: bool = False, **kwargs: Any) -> Spach:
    """SPACH-MLP-S (single stage): 39.8M params (token MLPs tied to img_size)."""
    return _build('spach_s_patch16_224_mlp', pretrained, kwargs)
