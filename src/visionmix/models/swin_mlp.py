"""Swin-MLP: Swin Transformer with each window attention replaced by a multi-head windowed spatial MLP.

Paper: `Swin Transformer: Hierarchical Vision Transformer using Shifted Windows` (Liu et al., ICCV 2021,
arXiv:2103.14030), the "Swin-Mixer" of its appendix. Official code (MIT): microsoft/Swin-Transformer,
``models/swin_mlp.py``; this is an independent implementation checked against it.

Layout follows timm's Swin: channels-last (B, H, W, C) maps throughout, ``forward_features`` returns NHWC
(``output_fmt = 'NHWC'``), patch merging sits at the *start* of stages 1-3, the classifier is ``head.fc``.
:func:`checkpoint_filter_fn` converts the official layout (merging at the end of stages 0-2, ``head``, Conv1d-shaped
spatial weights) losslessly.

Differences from the official code, none of which changes the result at the trained sizes:

* Any input size works (the official model asserts its build size): images are padded to a multiple of the patch
  size, maps to a whole number of windows before mixing (then cropped) and to even sizes before patch merging.
* Window size and shift per stage are fixed at build time from ``img_size``, as in the official code (a stage whose
  map is not larger than the window uses window = map size and no shift); other input sizes reuse them.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (ClassifierHead, DropPath, Format, Mlp, PatchEmbed, register_notrace_function, to_2tuple,
                         trunc_normal_)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices

from ..errors import VisionmixError
from ..layers.fused import mlp_residual
from ..layers.scratch import has_hooks
from ..layers.window_mlp import WindowSpatialMlp, stage_window
from ..checkpoint import unwrapping
from ..registry import ModelCard, card_to_pretrained_fields, register_visionmix_model
from ..layers.stride import plan_stages

__all__ = ['SwinMlp', 'PatchEmbedNhwc', 'SwinMlpBlock', 'SwinMlpStage', 'PatchMerging', 'checkpoint_filter_fn']


class PatchEmbedNhwc(PatchEmbed):
    """timm's ``PatchEmbed`` (same keys and arguments) with NHWC output, computed channels-last.

    The conv runs on a channels-last input, so its output is already the contiguous (B, H, W, C) map the norm and
    the stages read; timm's NCHW conv output would be permuted and copied by the norm (Swin-MLP-Tiny at batch 8,
    256 x 256, 2 threads: the embedding took 19-29 ms, now 9-12 ms). Only the NHWC, dynamically padded form that
    Swin-MLP builds takes this path; any other runs timm's forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output_fmt != Format.NHWC or not self.dynamic_img_pad or self.strict_img_size:
            return super().forward(x)
        ph, pw = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % pw, 0, -x.shape[-2] % ph))
        proj = self.proj
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.conv2d(x, proj.weight.contiguous(memory_format=torch.channels_last), proj.bias, proj.stride,
                     proj.padding, proj.dilation, proj.groups)
        return self.norm(x.permute(0, 2, 3, 1))


class SwinMlpBlock(nn.Module):
    """``x + spatial_mlp(norm1(x))``, then ``x + mlp(norm2(x))``, on (B, H, W, C) maps.

    Args:
        dim: Channels.
        num_heads: Heads of the spatial MLP (each mixes tokens with its own matrix).
        window_size: Window side.
        shift_size: Window shift (0 for plain windows); the map is zero-padded, not rolled.
        mlp_ratio: Hidden width of the channel MLP relative to ``dim``.
        proj_drop: Dropout in the channel MLP.
        drop_path: Stochastic depth rate of both residual branches.
        act_layer: Activation of the channel MLP.
        norm_layer: Normalization layer.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            shift_size: int = 0,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.spatial_mlp = WindowSpatialMlp(dim, num_heads, window_size, shift_size)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(self.drop_path1, nn.Identity) and isinstance(self.drop_path2, nn.Identity)):
            # stochastic depth: the plain formulation
            x = x + self.drop_path1(self.spatial_mlp(self.norm1(x)))
            return x + self.drop_path2(self.mlp(self.norm2(x)))
        # the shortcuts are added where the branches' last copy / GEMM writes their output anyway; the spatial
        # branch's sum is a fresh map, which the channel MLP accumulates into unless a hook has seen it
        x = self.spatial_mlp(self.norm1(x), residual=x)
        seen = has_hooks(self.spatial_mlp) or has_hooks(self.norm2)
        return mlp_residual(self.mlp, self.norm2(x), x, owns_residual=not seen)


class PatchMerging(nn.Module):
    """Halve the resolution: concat each 2x2 neighbourhood, LayerNorm(4C), Linear(4C -> out_dim, no bias).

    Odd sizes are zero-padded at the bottom / right first (the official code asserts even sizes). With ``stride=1``
    (a stage past the output stride) every position merges the 2x2 neighbourhood ``dilation`` apart below / right of
    it (zero-padded at the border), keeping the map size: with ``dilation=1`` its even positions are exactly the
    stride-2 result.

    Args:
        dim: Input channels C.
        out_dim: Output channels (``2 * dim`` if None).
        norm_layer: Normalization layer.
        stride: 2, or 1 to keep the resolution.
        dilation: Spacing of the merged neighbours at stride 1.
    """

    def __init__(
            self,
            dim: int,
            out_dim: int | None = None,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            stride: int = 2,
            dilation: int = 1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2) or (stride == 2 and dilation != 1):
            raise VisionmixError(f'patch merging runs at stride 2, or at stride 1 with a dilation, got stride '
                                 f'{stride}, dilation {dilation}')
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.stride = stride
        self.dilation = dilation
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.reduction(self.norm(merge_neighbours(x, self.dilation)))
        B, H, W, C = x.shape
        x = pad_to_even(x)
        H, W = x.shape[1], x.shape[2]
        # (..., 2w, 2h, C) flattens to the official order [x(0::2,0::2), x(1::2,0::2), x(0::2,1::2), x(1::2,1::2)]
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


@register_notrace_function  # reason: slice ends come from the input shape, a Proxy under FX
def merge_neighbours(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H, W, 4C): each position with its neighbours ``dilation`` below, right, below-right.

    Channel order as :class:`PatchMerging` (row offset fastest, then column offset); zero beyond the border.
    """
    H, W = x.shape[1], x.shape[2]
    d = dilation
    x = F.pad(x, (0, 0, 0, d, 0, d))
    return torch.cat([x[:, :H, :W], x[:, d:d + H, :W], x[:, :H, d:d + W], x[:, d:d + H, d:d + W]], dim=-1)


@register_notrace_function  # reason: pad sizes come from the input shape, a Proxy under FX
def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad H and W of a (B, H, W, C) map at the bottom / right to even sizes."""
    H, W = x.shape[1], x.shape[2]
    return F.pad(x, (0, 0, 0, W % 2, 0, H % 2))


class SwinMlpStage(nn.Module):
    """Optional patch merging, then ``depth`` blocks alternating plain and shifted windows.

    Args:
        dim: Input channels.
        out_dim: Channels of the blocks.
        depth: Number of blocks.
        num_heads: Spatial-MLP heads.
        window_size: Window side.
        shift_size: Shift of the odd blocks (0 disables shifting).
        downsample: Start with a :class:`PatchMerging` (``dim -> out_dim``).
        mlp_ratio: Channel-MLP ratio.
        proj_drop: Channel-MLP dropout.
        drop_path: Stochastic depth rate per block (or one for all).
        norm_layer: Normalization layer.
        down_stride: Stride of the patch merging (1 keeps the resolution).
        down_dilation: Dilation of the patch merging at stride 1.
    """

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            window_size: int,
            shift_size: int,
            downsample: bool = True,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float | list[float] = 0.,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            down_stride: int = 2,
            down_dilation: int = 1,
    ) -> None:
        super().__init__()
        if not downsample and dim != out_dim:
            raise VisionmixError(f'a stage without downsampling keeps its width, got {dim} -> {out_dim}')
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim, out_dim, norm_layer, down_stride, down_dilation) if downsample \
            else nn.Identity()
        self.blocks = nn.Sequential(*[
            SwinMlpBlock(
                out_dim, num_heads, window_size,
                shift_size=0 if i % 2 == 0 else shift_size,
                mlp_ratio=mlp_ratio,
                proj_drop=proj_drop,
                drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                norm_layer=norm_layer,
            )
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x


class SwinMlp(nn.Module):
    """Swin-MLP (Swin-Mixer): a 4-stage Swin hierarchy whose token mixer is a windowed multi-head spatial MLP.

    Args:
        img_size: Build size; fixes each stage's window and shift exactly as the official model (which only runs
            at this size). Other input sizes run with the same windows.
        patch_size: Patch side of the stem.
        in_chans: Input channels.
        num_classes: Classifier outputs (0 for none).
        global_pool: ``'avg'`` or ``''`` (no pooling).
        embed_dim: Channels of stage 0; doubled per stage.
        depths: Blocks per stage.
        num_heads: Spatial-MLP heads per stage.
        window_size: Window side before clamping to small maps.
        mlp_ratio: Channel-MLP ratio.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout in the channel MLPs.
        drop_path_rate: Stochastic depth, linear from 0 to this over all blocks. 0 by default, so that ``train()``
            is deterministic; the official ImageNet training used 0.2 (tiny) and 0.5 (base).
        norm_layer: Normalization layer (LayerNorm, eps 1e-5, as the official code).
        output_stride: 32, 16 or 8: the stages past it keep their resolution (patch merging at stride 1, merging
            neighbours the previous stage's rate apart with ``'constant'``, adjacent ones with ``'hdc'``); their
            window MLPs keep the window (and weights) of output stride 32 and run on the larger map, the odd blocks
            shifting by half a window once it holds more than one. The blocks hold no k x k conv to dilate.
        dilation: ``'constant'`` or ``'hdc'`` (see :mod:`visionmix.models.dilated_resnet`).
    """

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: tuple[int, ...] = (2, 2, 6, 2),
            num_heads: tuple[int, ...] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            output_stride: int = 32,
            dilation: str = 'constant',
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise VisionmixError(f'depths {depths} and num_heads {num_heads} differ in length')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.output_fmt = 'NHWC'
        num_stages = len(depths)
        dims = [int(embed_dim * 2 ** i) for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = PatchEmbedNhwc(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            norm_layer=norm_layer, strict_img_size=False, dynamic_img_pad=True, output_fmt='NHWC')
        grid = [-(-s // p) for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size))]

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # cpu: builds under meta too
        plans = plan_stages([1] + [2] * (num_stages - 1), depths, output_stride, dilation, stem_reduction=patch_size)
        self.feature_info: list[dict[str, Any]] = []
        stages = []
        in_dim = embed_dim
        for i, plan in enumerate(plans):
            stage_grid = [-(-g // 2 ** i) for g in grid]
            run_grid = [-(-g * patch_size // plan.reduction) for g in grid]
            ws, shift = stage_window(stage_grid, window_size, run_grid)
            stages.append(SwinMlpStage(
                in_dim, dims[i], depths[i], num_heads[i], ws, shift,
                downsample=i > 0,
                mlp_ratio=mlp_ratio,
                proj_drop=proj_drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                norm_layer=norm_layer,
                down_stride=plan.stride,
                down_dilation=plan.first_rate,
            ))
            in_dim = dims[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=plan.reduction, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official init: trunc_normal(.02) for Linear (spatial weights init in WindowSpatialMlp), zero biases;
        # the stem conv keeps PyTorch's default as in the official code
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.\w+\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features)
        self.head_hidden_size = self.head.num_features
        if global_pool is not None:
            self.global_pool = global_pool

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as NCHW maps (reductions 4, 8, 16, 32 at output stride 32), and optionally the final features.

        Args:
            x: Images (B, C, H, W).
            indices: Last n stages if int, all if None, else the stage indices to return.
            norm: Apply the final norm to the last stage's output (the only one it is sized for).
            stop_early: Stop after the last requested stage.
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or ``(forward_features output (NHWC), intermediates)``.
        """
        if output_fmt != 'NCHW':
            raise VisionmixError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        num_stages = len(self.stages)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]

        intermediates = []
        x = self.patch_embed(x)
        i = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                x_inter = self.norm(x) if norm and i == num_stages - 1 else x
                intermediates.append(x_inter.permute(0, 3, 1, 2).contiguous())
        if intermediates_only:
            return intermediates
        if i == num_stages - 1:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and norm / head) not needed for the given intermediates; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()  # sized for the last stage only
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalized last-stage map (B, H/s, W/s, num_features), s the output stride."""
        x = self.patch_embed(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: SwinMlp) -> dict[str, torch.Tensor]:
    """Rename the keys of an official Swin-MLP state dict (unwrapped from its ``'model'`` entry) to this layout.

    Official ``layers.i.downsample`` (end of stage i) becomes ``stages.{i+1}.downsample``, ``layers`` -> ``stages``,
    ``head`` -> ``head.fc`` and the grouped-Conv1d spatial weights ``[heads*T, T, 1]`` / ``[heads*T]`` become
    ``[heads, T, T]`` / ``[heads, T]`` (a reshape; T = tokens per window). A dict already in our layout is returned
    unchanged.
    """
    if not any(k.startswith('layers.') for k in state_dict):
        return dict(state_dict)
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.', k)
        k = re.sub(r'^layers\.', 'stages.', k)
        k = re.sub(r'^head\.', 'head.fc.', k)
        if '.spatial_mlp.' in k and k in target and v.numel() == target[k].numel():
            v = v.reshape(target[k].shape)
        out[k] = v
    return out


def _create_swin_mlp(variant: str, pretrained: bool = False, **kwargs: Any) -> SwinMlp:
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (2, 2, 6, 2))))))
    return build_model_with_cfg(
        SwinMlp, variant, pretrained,
        pretrained_filter_fn=unwrapping(checkpoint_filter_fn),
        # NHWC stages: the getter wrapper returns NCHW maps through forward_intermediates
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices, feature_cls='getter'),
        **kwargs)


_PAPER = 'Swin Transformer: Hierarchical Vision Transformer using Shifted Windows'
_CODE_URL = 'https://github.com/microsoft/Swin-Transformer'
_CODE_COMMIT = 'f82860bfb5225915aca09c3227159ee9e1df874d'
_WEIGHTS = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.5/'
_TOP1_SOURCE = 'official README / MODELHUB.md, ImageNet-1K val'
_NOTES = ('Official code asserts the build size; visionmix pads to the patch size, the window and even sizes, so '
          'any input size runs (identical results where sizes divide). Eval crop 224/256 as the official loader.')


def _card(name: str, params: int, gmacs: float, size: int, top1: float, paper_gmacs: float,
          official_gflops: float, max_diff: str) -> ModelCard:
    # official_gflops: the official model's flops() (its MAC count); max_diff: logits vs the official model
    verified = (f'params exact (= official model); GMACs {gmacs} vs official flops() {official_gflops} '
                f'({(gmacs / official_gflops - 1) * 100:+.1f}%); logits equal the official model with the same random '
                f'weights at batch 2, max abs diff {max_diff} (benchmarks/results/swin_mlp_fidelity.md)')
    return ModelCard(
        name=name, family='mlp', paper=_PAPER, arxiv='2103.14030', code_url=_CODE_URL, code_commit=_CODE_COMMIT,
        params=params, gmacs=gmacs, input_size=(3, size, size), top1=top1, top1_source=_TOP1_SOURCE,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, license='mit', verified=verified,
        paper_gmacs=paper_gmacs, notes=_NOTES)


_CARDS = {c.name: c for c in (
    _card('swin_mlp_tiny_c24_patch4_window8_256', 20_386_632, 4.027, 256, 79.4, 4.0, 4.032, '6.6e-07'),
    _card('swin_mlp_tiny_c12_patch4_window8_256', 21_152_072, 4.027, 256, 79.6, 4.0, 4.032, '5.4e-07'),
    _card('swin_mlp_tiny_c6_patch4_window8_256', 22_682_952, 4.027, 256, 79.7, 4.0, 4.032, '4.8e-07'),
    _card('swin_mlp_base_patch4_window7_224', 60_659_416, 10.412, 224, 81.3, 10.4, 10.420, '6.0e-07'),
)}


def _cfg(name: str, **kwargs: Any) -> dict[str, Any]:
    card = _CARDS[name]
    size = card.input_size[-1]
    return {
        'url': f'{_WEIGHTS}{name}.pth',
        'num_classes': 1000, 'pool_size': (size // 32, size // 32),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc',
        **card_to_pretrained_fields(card), **kwargs,
    }


default_cfgs = generate_default_cfgs({f'{name}.ms_in1k': _cfg(name) for name in _CARDS})


@register_visionmix_model(_CARDS['swin_mlp_tiny_c24_patch4_window8_256'])
def swin_mlp_tiny_c24_patch4_window8_256(pretrained: bool = False, **kwargs: Any) -> SwinMlp:
    """Swin-MLP-T/C24 (24 channels per head), 256x256. Official training: ``drop_path_rate=0.2``."""
    model_args = dict(img_size=256, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(4, 8, 16, 32), window_size=8)
    return _create_swin_mlp('swin_mlp_tiny_c24_patch4_window8_256', pretrained, **dict(model_args, **kwargs))


@register_visionmix_model(_CARDS['swin_mlp_tiny_c12_patch4_window8_256'])
def swin_mlp_tiny_c12_patch4_window8_256(pretrained: bool = False, **kwargs: Any) -> SwinMlp:
    """Swin-MLP-T/C12 (12 channels per head), 256x256. Official training: ``drop_path_rate=0.2``."""
    model_args = dict(img_size=256, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(8, 16, 32, 64), window_size=8)
    return _create_swin_mlp('swin_mlp_tiny_c12_patch4_window8_256', pretrained, **dict(model_args, **kwargs))


@register_visionmix_model(_CARDS['swin_mlp_tiny_c6_patch4_window8_256'])
def swin_mlp_tiny_c6_patch4_window8_256(pretrained: bool = False, **kwargs: Any) -> SwinMlp:
    """Swin-MLP-T/C6 (6 channels per head), 256x256. Official training: ``drop_path_rate=0.2``."""
    model_args = dict(img_size=256, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(16, 32, 64, 128), window_size=8)
    return _create_swin_mlp('swin_mlp_tiny_c6_patch4_window8_256', pretrained, **dict(model_args, **kwargs))


@register_visionmix_model(_CARDS['swin_mlp_base_patch4_window7_224'])
def swin_mlp_base_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinMlp:
    """Swin-MLP-B (32 channels per head), 224x224. Official training: ``drop_path_rate=0.5``."""
    model_args = dict(img_size=224, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7)
    return _create_swin_mlp('swin_mlp_base_patch4_window7_224', pretrained, **dict(model_args, **kwargs))
