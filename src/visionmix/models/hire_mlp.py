"""Hire-MLP: Vision MLP via Hierarchical Rearrangement (Guo et al., CVPR 2022, arXiv:2108.13341 v2).

A four-stage pyramid of Hire blocks (:class:`visionmix.layers.hire.HireMlp` token mixing + a 1x1-conv MLP), with
BatchNorm throughout, an overlapping conv stem (stride 4) and 3x3 stride-2 conv downsampling between stages.

Checked against the official code, github.com/ggjy/Hire-Wave-MLP.pytorch at commit
7ef7ddd784f97b6369d6fbaf913c4c1536949cf6 (``mlp_based/hire_mlp.py``); :func:`checkpoint_filter_fn` loads its
checkpoints losslessly.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ..errors import VisionmixError
from ..layers.fold import batch_norm_last, bn_folds, contiguous_grad, folded_conv_bn
from ..layers.fused import activate
from ..layers.hire import HireMlp, PointwiseMlp, hire_step
from ..layers.scratch import has_hooks
from ..checkpoint import unwrapping
from ..registry import ModelCard, card_to_pretrained_fields, register_visionmix_model
from ..layers.stride import plan_stages

__all__ = ['HireMlpNet', 'HireBlock', 'HireStage', 'checkpoint_filter_fn']


class ConvBnRelu(nn.Module):
    """Conv + BatchNorm + ReLU (keys ``conv``, ``norm``); in eval mode BN is folded into the conv weights.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Kernel size.
        stride: Stride.
        padding: Zero padding.
        dilation: Dilation.
        channels_last: In eval mode, run the conv on a channels-last input (the output is then channels-last too,
            i.e. a free view of the NHWC map the blocks work on); training always runs NCHW.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int, dilation: int = 1,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.norm = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU()
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm = self.conv, self.norm
        if not bn_folds(norm):
            # batch statistics on NCHW: PyTorch's channels-last CPU BatchNorm sums them less accurately (input
            # gradients 1e-2 off the official model's instead of 3e-6), see batch_norm_last; the blocks read the
            # result channels-last, so its gradient comes back channels-last: made contiguous for the NCHW backward
            return contiguous_grad(self.act(norm(conv(x.contiguous()))))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            weight, bias = folded_conv_bn(conv, norm, self, torch.channels_last)
        else:
            weight, bias = folded_conv_bn(conv, norm, self)
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        # in place on the fresh conv output in inference, unless a hook on ``act`` should see the call
        return self.act(x) if has_hooks(self.act) else activate(self.act, x)


class HireBlock(nn.Module):
    """``x + hire(BN(x))`` then ``x + mlp(BN(x))``, each branch with stochastic depth, on (B, H, W, C) maps.

    In eval mode both BatchNorms are folded into the weights that read their output (the Hire module's input
    layers and the MLP's fc1): no pass over the map is spent on them.
    """

    def __init__(
            self,
            dim: int,
            region_size: int,
            step: int = 0,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.token_mixer = HireMlp(dim, region_size=region_size, step=step, proj_drop=proj_drop)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = PointwiseMlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = self._branch(self.token_mixer.forward_nhwc, self.norm1, x)
        # that sum is a fresh map no hook sees (forward_nhwc bypasses module calls): the MLP may accumulate into it
        return self._branch(partial(self.mlp.forward_nhwc, owns_residual=True), self.norm2, x)

    def _branch(self, fn: Callable[..., torch.Tensor], norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x + drop_path(fn(norm(x)))``; the norm is folded into ``fn``'s input weights in eval mode, and without
        stochastic depth the shortcut is added by ``fn``'s output GEMM."""
        if bn_folds(norm):
            y, in_norm = x, norm
        else:
            y, in_norm = batch_norm_last(norm, x), None
        if isinstance(self.drop_path, nn.Identity):
            return fn(y, in_norm, residual=x)
        return x + self.drop_path(fn(y, in_norm))


class HireStage(nn.Module):
    """Optional 3x3 conv downsampling (stride 2, or stride 1 dilated by ``down_dilation``) followed by Hire blocks."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            region_size: int,
            step_stride: int,
            step_dilation: int,
            downsample: bool = True,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path_rates: Sequence[float] | None = None,
            down_stride: int = 2,
            down_dilation: int = 1,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        # a stride-1 (dilated) downsampler keeps the map size with padding = dilation
        padding = 1 if down_stride == 2 else down_dilation
        self.downsample = ConvBnRelu(in_chs, out_chs, 3, down_stride, padding, down_dilation) if downsample \
            else nn.Identity()
        drop_path_rates = drop_path_rates or [0.] * depth
        self.blocks = nn.Sequential(*[
            HireBlock(out_chs, region_size, step, mlp_ratio=mlp_ratio, proj_drop=proj_drop, drop_path=dpr)
            for step, dpr in zip((hire_step(j, step_stride, step_dilation) for j in range(depth)), drop_path_rates)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C', H', W'): a permuted view of the channels-last map the blocks work on."""
        x = self.downsample(x).permute(0, 2, 3, 1).contiguous()  # a no-op view after a channels-last conv
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class HireHead(nn.Module):
    """BatchNorm on the map, then global pooling and a linear classifier.

    The norm sits before the pooling (as in the official code) so that in training mode it normalises with
    statistics over all positions, not over pooled vectors.
    """

    def __init__(self, in_features: int, num_classes: int, pool_type: str = 'avg', drop_rate: float = 0.) -> None:
        super().__init__()
        self.in_features = in_features
        self.norm = nn.BatchNorm2d(in_features)
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(self.norm(x))
        x = self.drop(x)
        if pre_logits:
            return x
        if self.global_pool.is_identity():  # unpooled: classify every position
            return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(x)


class HireMlpNet(nn.Module):
    """Hire-MLP: conv stem, four stages of Hire blocks, BN + average pool + linear head."""

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 4, 2),
            dims: Sequence[int] = (64, 128, 320, 512),
            region_sizes: Sequence[int] = (4, 3, 3, 2),
            step_strides: Sequence[int] = (2, 2, 3, 2),
            step_dilations: Sequence[int] = (2, 2, 1, 1),
            mlp_ratio: float = 4.,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            output_stride: int = 32,
            dilation: str = 'constant',
    ) -> None:
        """
        Args:
            depths: Blocks per stage.
            dims: Channels per stage.
            region_sizes: Tokens per region of the Hire module, per stage.
            step_strides: Block ``j`` of a stage shifts by ``(j % step_stride) * step_dilation``.
            step_dilations: See ``step_strides``.
            mlp_ratio: Hidden width of the channel MLP relative to the stage width.
            in_chans: Input channels.
            num_classes: Classifier outputs; 0 for pooled features.
            global_pool: ``'avg'`` or ``''`` (no pooling).
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout inside the blocks (after the Hire projection and in the MLP).
            drop_path_rate: Stochastic depth of the last block; it rises linearly from 0 over all blocks.
            output_stride: 32, 16 or 8: the stages past it keep their resolution (their downsampling conv runs at
                stride 1, dilated by the previous stage's rate with ``'constant'``, by 1 with ``'hdc'``); the Hire
                region mixers run on the larger maps. The blocks hold no k x k conv to dilate, so both schedules
                differ only in the downsampling conv of the second dilated stage (output stride 8: 2 vs 1).
            dilation: ``'constant'`` or ``'hdc'`` (see :mod:`visionmix.models.dilated_resnet`).
        """
        super().__init__()
        num_stages = len(depths)
        if not all(len(v) == num_stages for v in (dims, region_sizes, step_strides, step_dilations)):
            raise VisionmixError('depths, dims, region_sizes, step_strides and step_dilations need one entry per stage')
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = ConvBnRelu(in_chans, dims[0], 7, 4, 2)
        total = sum(depths)
        # the official schedule divides by (total - 1) so the last block gets exactly drop_path_rate
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        plans = plan_stages([1] + [2] * (num_stages - 1), depths, output_stride, dilation, stem_reduction=4)
        stages = []
        self.feature_info = []
        prev, first = dims[0], 0
        for i, plan in enumerate(plans):
            stages.append(HireStage(
                prev, dims[i], depths[i], region_sizes[i], step_strides[i], step_dilations[i], downsample=i > 0,
                mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate, drop_path_rates=dpr[first:first + depths[i]],
                down_stride=plan.stride, down_dilation=plan.first_rate,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=plan.reduction, module=f'stages.{i}'))
            prev, first = dims[i], first + depths[i]
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.head = HireHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
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
                (r'^head\.norm', (99999,)),
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
        """Replace the classifier; ``num_classes=0`` returns pooled features, ``global_pool=''`` unpooled maps."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the outputs of the selected stages.

        Args:
            x: Images (B, C, H, W).
            indices: Last ``n`` stages if int, all if None, else the listed stage indices.
            norm: Apply the head norm to the last stage's intermediate (the only one it fits).
            stop_early: Stop after the last selected stage.
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise VisionmixError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self.head.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and head) not needed for ``indices``; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:  # the head norm is sized for the last stage
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.head = HireHead(self.num_features, 0, pool_type='')
        if prune_norm or prune_end:
            self.head.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# official name -> ours, inside a Hire block (the official ``HireMLP`` module is ``attn``)
_BLOCK_RENAMES = (
    ('attn.mlp_h1_norm.', 'token_mixer.height.norm.'),
    ('attn.mlp_w1_norm.', 'token_mixer.width.norm.'),
    ('attn.mlp_h1.', 'token_mixer.height.fc1.'),
    ('attn.mlp_h2.', 'token_mixer.height.fc2.'),
    ('attn.mlp_w1.', 'token_mixer.width.fc1.'),
    ('attn.mlp_w2.', 'token_mixer.width.fc2.'),
    ('attn.mlp_c.', 'token_mixer.channel.'),
    ('attn.reweight.', 'token_mixer.reweight.'),
    ('attn.proj.', 'token_mixer.proj.'),
)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the keys of an official Hire-MLP state dict (``network.N`` layout) to ours; ours passes through.

    Takes an unwrapped state dict (:func:`visionmix.checkpoint.unwrap_state_dict` prefers ``model_ema``, as the
    official evaluation does).
    """
    if not any(k.startswith(('patch_embed.', 'network.')) for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        if k.startswith('patch_embed.'):
            k = k.replace('patch_embed.proj.', 'stem.conv.').replace('patch_embed.norm.', 'stem.norm.')
        elif k.startswith('network.'):
            # stages sit at even indices, the downsampling before stage i + 1 at odd index 2 * i + 1
            m = re.match(r'network\.(\d+)\.(.*)', k)
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2:
                rest = rest.replace('proj.', 'conv.', 1)
                k = f'stages.{idx // 2 + 1}.downsample.{rest}'
            else:
                for old, new in _BLOCK_RENAMES:
                    rest = rest.replace(old, new, 1)
                k = f'stages.{idx // 2}.blocks.{rest}'
        elif k.startswith('norm.'):
            k = 'head.' + k
        elif k.startswith('head.'):
            k = 'head.fc.' + k[len('head.'):]
        out[k] = v
    return out


def _create_hire_mlp(variant: str, pretrained: bool = False, **kwargs: Any) -> HireMlpNet:
    num_stages = len(kwargs.get('depths', (2, 2, 4, 2)))
    out_indices = kwargs.pop('out_indices', tuple(range(num_stages)))
    return build_model_with_cfg(
        HireMlpNet, variant, pretrained,
        pretrained_filter_fn=unwrapping(checkpoint_filter_fn),
        feature_cfg=dict(out_indices=out_indices, flatten_sequential=True),
        **kwargs,
    )


_PAPER = 'Hire-MLP: Vision MLP via Hierarchical Rearrangement'
_CODE = 'https://github.com/ggjy/Hire-Wave-MLP.pytorch'
_COMMIT = '7ef7ddd784f97b6369d6fbaf913c4c1536949cf6'
_RELEASE = f'{_CODE}/releases/download/log'
_EMA_NOTE = ('The official checkpoint holds "model" and "model_ema"; the official evaluation loads "model_ema", and '
             'so do pretrained=True and visionmix.load_checkpoint (use_ema=False takes "model").')
_VERIFIED = ('params exact, MACs equal the paper at its printed precision ({macs}), official layout loads strict, '
             'outputs equal the official code with the same random weights at 224 (eval max abs diff {abs}, {rel} x '
             'output scale; train mode {train} x: benchmarks/results/hire_mlp_fidelity.md)')

# benchmarks/results/hire_mlp_fidelity.md
_FIDELITY = {
    'hire_mlp_tiny': dict(abs='2.4e-06', rel='3.3e-06', train='2.6e-06'),
    'hire_mlp_small': dict(abs='2.8e-06', rel='3.3e-06', train='2.8e-06'),
    'hire_mlp_base': dict(abs='3.2e-06', rel='4.9e-06', train='2.8e-06'),
    'hire_mlp_large': dict(abs='3.8e-06', rel='5.5e-06', train='3.0e-06'),
}


def _card(name: str, params: int, gmacs: float, paper_gmacs: float, top1: float, notes: str) -> ModelCard:
    return ModelCard(
        name=name, family='mlp', paper=_PAPER, arxiv='2108.13341', code_url=_CODE, code_commit=_COMMIT,
        params=params, gmacs=gmacs, paper_gmacs=paper_gmacs, top1=top1,
        top1_source='paper and official README (ImageNet-1k val, 224)', mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD, license='mit', notes=notes,
        verified=_VERIFIED.format(macs=f'{gmacs} vs {paper_gmacs}G', **_FIDELITY[name]),
    )


# MACs as run (FlopCounterMode): they include the few pooled-vector GEMMs (0.15%) that give the reweighting its input
# without a pass over the branch maps, where the official code takes a mean over the map
_CARDS = {
    'hire_mlp_tiny': _card('hire_mlp_tiny', 18_041_672, 2.147, 2.1, 79.7, _EMA_NOTE),
    'hire_mlp_small': _card('hire_mlp_small', 33_113_848, 4.238, 4.2, 82.1, _EMA_NOTE),
    'hire_mlp_base': _card('hire_mlp_base', 58_226_856, 8.123, 8.1, 83.2, _EMA_NOTE),
    'hire_mlp_large': _card(
        'hire_mlp_large', 95_723_944, 13.442, 13.4, 83.8,
        'No official weights are published for this variant (the official README lists no checkpoint).'),
}


def _cfg(name: str, url: str = '', **kwargs: Any) -> dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.9,
        'interpolation': 'bicubic', 'first_conv': 'stem.conv', 'classifier': 'head.fc',
        **card_to_pretrained_fields(_CARDS[name]), **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'hire_mlp_tiny.in1k': _cfg('hire_mlp_tiny', url=f'{_RELEASE}/hire_mlp_tiny.pth'),
    'hire_mlp_small.in1k': _cfg('hire_mlp_small', url=f'{_RELEASE}/hire_mlp_small.pth'),
    'hire_mlp_base.in1k': _cfg('hire_mlp_base', url=f'{_RELEASE}/hire_mlp_base.pth'),
    'hire_mlp_large': _cfg('hire_mlp_large'),
})


@register_visionmix_model(_CARDS['hire_mlp_tiny'])
def hire_mlp_tiny(pretrained: bool = False, **kwargs: Any) -> HireMlpNet:
    """Hire-MLP-Tiny: 18.0M params, 79.7% top-1."""
    args = dict(depths=(2, 2, 4, 2), dims=(64, 128, 320, 512))
    return _create_hire_mlp('hire_mlp_tiny', pretrained, **dict(args, **kwargs))


@register_visionmix_model(_CARDS['hire_mlp_small'])
def hire_mlp_small(pretrained: bool = False, **kwargs: Any) -> HireMlpNet:
    """Hire-MLP-Small: 33.1M params, 82.1% top-1."""
    args = dict(depths=(3, 4, 10, 3), dims=(64, 128, 320, 512))
    return _create_hire_mlp('hire_mlp_small', pretrained, **dict(args, **kwargs))


@register_visionmix_model(_CARDS['hire_mlp_base'])
def hire_mlp_base(pretrained: bool = False, **kwargs: Any) -> HireMlpNet:
    """Hire-MLP-Base: 58.2M params, 83.2% top-1."""
    args = dict(depths=(4, 6, 24, 3), dims=(64, 128, 320, 512))
    return _create_hire_mlp('hire_mlp_base', pretrained, **dict(args, **kwargs))


@register_visionmix_model(_CARDS['hire_mlp_large'])
def hire_mlp_large(pretrained: bool = False, **kwargs: Any) -> HireMlpNet:
    """Hire-MLP-Large: 95.7M params, 83.8% top-1 (no official weights published)."""
    args = dict(depths=(4, 6, 24, 3), dims=(96, 192, 384, 768))
    return _create_hire_mlp('hire_mlp_large', pretrained, **dict(args, **kwargs))
