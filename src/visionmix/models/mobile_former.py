"""Mobile-Former: a MobileNet and a few global tokens, bridged both ways by light cross-attention (Chen et al.,
"Mobile-Former: Bridging MobileNet and Transformer", CVPR 2022, arXiv:2108.05895).

Every block runs, in order: Mobile->Former (the tokens attend to the block's input map), Former (token
self-attention + FFN), the Mobile part (an inverted bottleneck whose activations are dynamic ReLUs driven by token 0),
and Former->Mobile (every pixel attends to the tokens). After the last block one more Mobile->Former bridge updates
the tokens; the classifier concatenates the pooled map with token 0.

Checked against the authors' release, github.com/AAboys/MobileFormer at commit
f44731062abb2d3ddf7fa3a0d4e7c38e7cbd6c6f; :func:`checkpoint_filter_fn` loads its checkpoints (``state_dict`` key)
strictly. Differences from it:

* Tokens are kept batch-first, ``(B, T, D)``; outputs are the same.
* Training with batch size 1 works. The classifier's ``BatchNorm1d`` sees one vector per channel then, whose batch
  variance is zero (PyTorch refuses it; if it did not, every output would collapse to the BN bias). With one sample
  it normalises with its running statistics instead, as in eval mode, and leaves them unchanged.
* ``drop_path_rate`` (token branch: both bridges and the Former) and ``cnn_drop_path_rate`` (the conv branch) are two
  separate arguments; the official code overwrites the second with the first. Stochastic depth on the tokens drops
  whole samples (the official ``(T, B, D)`` layout made timm's ``DropPath`` drop single tokens).
* Nothing is printed on construction.
* Faster on CPU than the official code (benchmarks/results/mobile_former.md, 2 threads; all seven variants at 1 thread
  in mobile_former_unext.md): the bridges lay attention scores out (tokens, pixels), the dynamic ReLU is a product
  and a PReLU, and in eval mode the conv + BN pairs fold BN into the conv weights (computed once while no gradient
  is recorded) and the dynamic ReLU's per-sample scale rides on the depthwise conv or the channel shuffle's copy
  (:func:`conv_dynamic_relu`) instead of a pass of its own.
* ``forward_features`` returns the head's map with token 0 broadcast as ``token_dim`` extra channels, so that the
  head (and ``forward_head``) needs nothing but that map: ``num_features = 6 * C_last + token_dim``.
  The head is pooling, a hidden layer (``head_hidden_size``: 1024 to 1920) and the classifier; as in timm,
  ``num_classes=0`` (or ``reset_classifier(0)``) removes only the classifier, so ``forward`` then returns the hidden
  vector that ``forward_head(..., pre_logits=True)`` gives; ``global_pool=''`` returns the map itself.
* Any input size works (the bridges are attention, there is no position-dependent weight); ``features_only`` gives
  the maps at reductions 2, 4, 8, 16, 32, and ``forward_intermediates(..., return_tokens=True)`` the tokens too.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from ..errors import VisionmixError
from ..layers.bridge import Former, FormerToMobile, MobileToFormer
from ..layers.dyrelu import DynamicReLU, prelu_per_sample, split_slopes
from ..layers.fold import bn_folds, conv_bn, folded_conv_bn, is_tracing
from ..checkpoint import unwrapping
from ..registry import ModelCard, card_to_pretrained_fields, register_visionmix_model
from ..layers.stride import plan_stages

__all__ = ['MobileFormer']

# one row per block: (type, e1, out channels, stride, e2); 'D' = DnaBlock, 'D3' = DnaBlock3
BlockArgs = tuple[str, int, int, int, int]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (g, C/g) -> (C/g, g) channel order."""
    B, C, H, W = x.shape
    return x.reshape(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


class ConvBn(nn.Module):
    """Conv (no bias, 'same' padding for its dilation) + BatchNorm."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 1,
            stride: int = 1,
            groups: int = 1,
            dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, dilation * (kernel_size // 2), dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn(self.conv, self.bn, x, self)

    def scales_by_sample(self) -> bool:
        """Whether :meth:`forward_scaled` folds its scale into the weights: eval mode, a depthwise conv (one input
        channel per group: per-sample weights then cost one conv over ``B * C`` channels, as the shared ones do),
        and eager execution (tracers and exporters want the batch size out of the conv's group count)."""
        return bn_folds(self.bn) and self.conv.in_channels == self.conv.groups and not is_tracing()

    def forward_scaled(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``self(x) * scale[:, :, None, None]`` for a per-sample, per-channel ``scale`` (B, C_out).

        With :meth:`scales_by_sample`, each sample gets its own copy of the (small) folded weights times its scale
        and the batch runs as one grouped conv, so the map is written once instead of written and then rescaled.
        """
        if not self.scales_by_sample():
            return self(x) * scale[:, :, None, None]
        weight, bias = folded_conv_bn(self.conv, self.bn, self)
        conv = self.conv
        B, _, H, W = x.shape
        weight = (weight[None] * scale[:, :, None, None, None]).flatten(0, 1)  # B * C_out, 1, k, k
        out = F.conv2d(x.reshape(1, -1, H, W), weight, (bias * scale).flatten(), conv.stride, conv.padding,
                       conv.dilation, conv.groups * B)
        return out.reshape(B, -1, *out.shape[-2:])


def conv_dynamic_relu(conv: ConvBn, act: DynamicReLU, x: torch.Tensor, token: torch.Tensor, shuffle: int = 1,
                      ) -> torch.Tensor:
    """``act(channel_shuffle(conv(x), shuffle), token)`` with fewer passes over the map in eval inference.

    The dynamic ReLU is ``prelu(y * hi, ratio)`` (:func:`split_slopes`). Without a shuffle after a depthwise conv,
    the per-sample scale ``hi`` goes into the conv's weights (:meth:`ConvBn.forward_scaled`); with a shuffle, the
    shuffle's copy and the scaling are one pass (the shuffled view is read, a contiguous map written).
    """
    if act.num_func != 2 or not bn_folds(conv.bn) or is_tracing():
        y = conv(x)
        return act(channel_shuffle(y, shuffle) if shuffle > 1 else y, token)
    hi, ratio = split_slopes(*act.slopes(token))
    if shuffle == 1:
        return prelu_per_sample(conv.forward_scaled(x, hi), ratio)
    y = conv(x)
    B, C, H, W = y.shape
    shuffled = y.reshape(B, shuffle, C // shuffle, H, W).transpose(1, 2)  # a view: (B, C / g, g, H, W)
    scale = hi.reshape(B, C // shuffle, shuffle, 1, 1)
    if torch.is_grad_enabled():  # out= does not record gradients
        scaled = (shuffled * scale).reshape(B, C, H, W)
    else:
        scaled = torch.mul(shuffled, scale, out=y.new_empty(shuffled.shape)).reshape(B, C, H, W)
    return prelu_per_sample(scaled, ratio)


class Bridges(nn.Module):
    """The token side of a Dna block: Mobile->Former, Former, and the Former->Mobile bridge (applied later)."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            token_dim: int,
            bridge_heads: int,
            former_heads: int,
            former_mlp_ratio: float,
            drop_path: float,
    ) -> None:
        super().__init__()
        self.mobile_to_former = MobileToFormer(in_chs, token_dim, bridge_heads, dynamic=True, drop_path=drop_path)
        self.former = Former(token_dim, former_heads, former_mlp_ratio, drop_path=drop_path)
        self.former_to_mobile = FormerToMobile(out_chs, token_dim, bridge_heads, drop_path=drop_path)


class DnaBlock(nn.Module):
    """Mobile-Former block with a pw -> dw -> pw bottleneck (stride 1 in every published model).

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        stride: Stride of the depthwise conv.
        exp_ratio: Bottleneck expansion e1.
        token_dim: Token width.
        group_num: Groups of the 1x1 convs (with a channel shuffle after each), 4 in Mobile-Former-26M.
        bridge_heads: Heads of both bridges.
        former_heads: Heads of the token self-attention.
        former_mlp_ratio: Expansion of the token FFN.
        hyper_reduction: Reduction of the dynamic-ReLU hyper-functions.
        drop_path: Stochastic depth of the token branch and the Former->Mobile bridge.
        cnn_drop_path: Stochastic depth of the conv branch.
        dilation: Dilation of the 3x3 convs after the strided one (a stage past the output stride).
        first_dilation: Dilation of the conv that strides, or would (timm's convention; ``dilation`` if None). The
            dw conv is this block's only 3x3 conv: it takes ``first_dilation``.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int,
            exp_ratio: float,
            token_dim: int,
            group_num: int = 1,
            bridge_heads: int = 2,
            former_heads: int = 4,
            former_mlp_ratio: float = 2.,
            hyper_reduction: int = 4,
            drop_path: float = 0.,
            cnn_drop_path: float = 0.,
            dilation: int = 1,
            first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        hidden = round(in_chs * exp_ratio)
        self.group_num = group_num
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv1 = ConvBn(in_chs, hidden, 1, groups=group_num)
        self.act1 = DynamicReLU(hidden, token_dim, reduction=hyper_reduction)
        self.conv2 = ConvBn(hidden, hidden, 3, stride, groups=hidden, dilation=first_dilation or dilation)
        self.act2 = DynamicReLU(hidden, token_dim, reduction=hyper_reduction)
        self.conv3 = ConvBn(hidden, out_chs, 1, groups=group_num)
        self.drop_path = DropPath(cnn_drop_path) if cnn_drop_path > 0. else nn.Identity()
        self.bridges = Bridges(in_chs, out_chs, token_dim, bridge_heads, former_heads, former_mlp_ratio, drop_path)

    def _shuffle(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.group_num) if self.group_num > 1 else x

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.bridges.former(self.bridges.mobile_to_former(x, tokens))
        token = tokens[:, 0]
        out = conv_dynamic_relu(self.conv1, self.act1, x, token, self.group_num)
        out = conv_dynamic_relu(self.conv2, self.act2, out, token)
        out = self._shuffle(self.conv3(out))
        if self.has_skip:
            out = self.drop_path(out) + x
        return self.bridges.former_to_mobile(out, tokens), tokens


class DnaBlock3(nn.Module):
    """Mobile-Former block that changes resolution / width: dw (stride) -> pw -> dw -> pw, with an inner skip.

    With ``exp_ratio2 == 0`` it is a plain dw-BN-ReLU6-pw-BN block with no bridge (the first block of every model).
    Arguments as :class:`DnaBlock`; ``exp_ratio`` expands the input for the first dw conv, ``exp_ratio2`` the output
    for the second. The first dw conv (the strided one) takes ``first_dilation``, the second ``dilation``.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int,
            exp_ratio: int,
            exp_ratio2: int,
            token_dim: int,
            group_num: int = 1,
            bridge_heads: int = 2,
            former_heads: int = 4,
            former_mlp_ratio: float = 2.,
            hyper_reduction: int = 4,
            drop_path: float = 0.,
            cnn_drop_path: float = 0.,
            dilation: int = 1,
            first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.group_num = group_num
        self.in_chs, self.out_chs = in_chs, out_chs
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_only = exp_ratio == 1 or exp_ratio2 == 0
        hidden1 = in_chs * exp_ratio
        if self.conv_only:
            self.conv_dw = ConvBn(in_chs, hidden1, 3, stride, groups=in_chs, dilation=first_dilation)
            self.conv_pw = ConvBn(hidden1, out_chs, 1, groups=group_num)
            self.bridges = None
            return
        hidden2 = out_chs * exp_ratio2
        self.conv1 = ConvBn(in_chs, hidden1, 3, stride, groups=in_chs, dilation=first_dilation)
        self.act1 = DynamicReLU(hidden1, token_dim, reduction=hyper_reduction)
        self.conv2 = ConvBn(hidden1, out_chs, 1, groups=group_num)
        self.conv3 = ConvBn(out_chs, hidden2, 3, 1, groups=out_chs, dilation=dilation)
        self.act3 = DynamicReLU(hidden2, token_dim, reduction=hyper_reduction)
        self.conv4 = ConvBn(hidden2, out_chs, 1, groups=group_num)
        self.drop_path = DropPath(cnn_drop_path) if cnn_drop_path > 0. else nn.Identity()
        self.bridges = Bridges(in_chs, out_chs, token_dim, bridge_heads, former_heads, former_mlp_ratio, drop_path)

    def _shuffle(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        # after a depthwise conv the official code shuffles with groups = its input channels
        return channel_shuffle(x, groups) if self.group_num > 1 else x

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bridges is None:
            out = F.relu6(self.conv_dw(x))
            out = self.conv_pw(self._shuffle(out, self.in_chs))
            return (out + x if self.has_skip else out), tokens
        tokens = self.bridges.former(self.bridges.mobile_to_former(x, tokens))
        token = tokens[:, 0]
        # after a depthwise conv the official code shuffles with groups = its input channels
        shuffle_in, shuffle_out = (self.in_chs, self.out_chs) if self.group_num > 1 else (1, 1)
        out_cp = self.conv2(conv_dynamic_relu(self.conv1, self.act1, x, token, shuffle_in))
        out = conv_dynamic_relu(self.conv3, self.act3, out_cp, token, shuffle_out)
        out = self.drop_path(self.conv4(out)) + out_cp
        out = self.bridges.former_to_mobile(out, tokens)
        return (out + x if self.has_skip else out), tokens


def _block_plans(block_args: Sequence[BlockArgs], output_stride: int, dilation: str) -> list[tuple[int, int, int, int]]:
    """``(stride, first_dilation, dilation, reduction)`` of every block at ``output_stride``.

    A stage is a strided block and the stride-1 blocks after it; blocks before the first strided one belong to the
    stem's stage (reduction 2).
    """
    stages: list[list[int]] = [[]]
    strides = [1]
    for i, row in enumerate(block_args):
        if row[3] != 1:
            stages.append([])
            strides.append(row[3])
        stages[-1].append(i)
    plans = plan_stages(strides, [len(blocks) for blocks in stages], output_stride, dilation, stem_reduction=2)
    out = []
    for blocks, plan in zip(stages, plans):
        for j in range(len(blocks)):
            first = (plan.stride, plan.first_rate) if j == 0 else (1, plan.rates[j])
            out.append((*first, plan.rates[j], plan.reduction))
    return out


@register_notrace_module  # reason: branches on the batch size in training
class BatchNorm1dAnyBatch(nn.BatchNorm1d):
    """BatchNorm1d that trains with batch size 1 by normalising with its running statistics (left unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0., self.eps)
        return super().forward(x)


class MobileFormerHead(nn.Module):
    """Pool the map part, h_swish, concat token 0, then Linear -> BN1d -> h_swish -> dropout -> Linear.

    Its input is ``forward_features``' map: ``map_chs`` channels of the head conv, then token 0 broadcast over
    ``token_dim`` channels. ``num_classes=0`` removes only the last linear layer (the hidden vector is returned, as
    ``pre_logits=True`` gives); ``pool_type=''`` (only with ``num_classes=0``) returns the map unchanged.
    """

    def __init__(
            self,
            map_chs: int,
            token_dim: int,
            hidden_dim: int,
            num_classes: int,
            pool_type: str = 'avg',
            drop_rate: float = 0.,
    ) -> None:
        super().__init__()
        self.map_chs = map_chs
        self.in_features = map_chs + token_dim
        self.hidden_dim = hidden_dim
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Linear | None = None
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none, timm's convention), keeping the hidden layer as it is."""
        if pool_type is not None:
            if pool_type not in ('avg', ''):
                raise VisionmixError(f"Mobile-Former pools with 'avg' (or '' for no pooling), got {pool_type!r}")
            self.pool_type = pool_type
        if num_classes > 0 and not self.pool_type:
            raise VisionmixError('an unpooled Mobile-Former head has no classifier: use num_classes=0 with '
                                 'global_pool=""')
        self.num_classes = num_classes
        if not self.pool_type:
            self.fc = self.norm = None
        elif self.fc is None:  # the hidden layer belongs to the pooled head, like timm's MobileNetV3 conv_head
            self.fc = nn.Linear(self.in_features, self.hidden_dim)
            self.norm = BatchNorm1dAnyBatch(self.hidden_dim)
            nn.init.normal_(self.fc.weight, 0, 0.01)
            nn.init.zeros_(self.fc.bias)
        self.classifier = nn.Linear(self.hidden_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.normal_(self.classifier.weight, 0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    @property
    def out_features(self) -> int:
        return self.hidden_dim if self.pool_type else self.in_features

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.pool_type:
            return x
        pooled = F.hardswish(x[:, :self.map_chs].mean((2, 3)))
        x = torch.cat([pooled, x[:, self.map_chs:, 0, 0]], dim=1)  # the token channels are constant over space
        x = self.drop(F.hardswish(self.norm(self.fc(x))))
        return x if pre_logits else self.classifier(x)


class MobileFormer(nn.Module):
    """Mobile-Former: stem, Dna blocks carrying learnable tokens, a last Mobile->Former bridge, merge classifier.

    Args:
        block_args: One ``(type, e1, out_chs, stride, e2)`` row per block, type ``'D'`` or ``'D3'``.
        stem_chs: Stem width.
        token_num: Number of global tokens.
        token_dim: Token width.
        group_num: Groups of the 1x1 convs (4 in Mobile-Former-26M).
        head_hidden: Hidden width of the classifier MLP.
        head_exp: Expansion of the head's 1x1 conv.
        num_classes: Classes; 0 for the pooled features.
        in_chans: Input channels.
        global_pool: ``'avg'`` or ``''``.
        drop_rate: Dropout before the last Linear.
        drop_path_rate: Stochastic depth of the token side (bridges, Former), linear over the blocks.
        cnn_drop_path_rate: Stochastic depth of the conv branches, linear over the blocks.
        bridge_heads: Heads of the bridges.
        former_heads: Heads of the token self-attention.
        former_mlp_ratio: Expansion of the token FFN.
        hyper_reduction: Reduction of the dynamic-ReLU hyper-functions.
        output_stride: 32, 16 or 8: the blocks past it keep their resolution. A stage is a stride-2 block and the
            stride-1 blocks after it; in a dilated stage the stride-2 block runs at stride 1, its strided dw conv
            dilated by the previous stage's rate (``'constant'``) or 1 (``'hdc'``), and every later 3x3 dw conv of
            block ``j`` of the stage by the stage's rate (``'constant'``: 2, then 4) or the HDC rate ``r_j``. The
            bridges are attention over the whole map and work on the larger one unchanged.
        dilation: ``'constant'`` or ``'hdc'`` (see :mod:`visionmix.models.dilated_resnet`).
    """

    def __init__(
            self,
            block_args: Sequence[BlockArgs],
            stem_chs: int = 16,
            token_num: int = 6,
            token_dim: int = 192,
            group_num: int = 1,
            head_hidden: int = 1920,
            head_exp: int = 6,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            cnn_drop_path_rate: float = 0.,
            bridge_heads: int = 2,
            former_heads: int = 4,
            former_mlp_ratio: float = 2.,
            hyper_reduction: int = 4,
            output_stride: int = 32,
            dilation: str = 'constant',
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.group_num = group_num
        self.grad_checkpointing = False
        self.tokens = nn.Parameter(torch.randn(token_num, token_dim))  # nn.Embedding's N(0, 1), as the official
        self.stem = nn.Sequential()
        self.stem.add_module('conv', nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False))
        self.stem.add_module('bn', nn.BatchNorm2d(stem_chs))
        self.stem.add_module('act', nn.ReLU6(inplace=True))

        common = dict(
            token_dim=token_dim, group_num=group_num, bridge_heads=bridge_heads, former_heads=former_heads,
            former_mlp_ratio=former_mlp_ratio, hyper_reduction=hyper_reduction)
        blocks = []
        chs = stem_chs
        plans = _block_plans(block_args, output_stride, dilation)
        self.feature_info = [dict(num_chs=chs, reduction=2, module='stem')]
        self._taps = [-1]  # block index after which each feature map is taken (-1: the stem)
        for i, (kind, e1, out_chs, stride, e2) in enumerate(block_args):
            rates = dict(drop_path=drop_path_rate * (i + 1) / len(block_args),
                         cnn_drop_path=cnn_drop_path_rate * (i + 1) / len(block_args))
            real_stride, first_dilation, rate, reduction = plans[i]
            dilations = dict(dilation=rate, first_dilation=first_dilation)
            if kind == 'D':
                blocks.append(DnaBlock(chs, out_chs, real_stride, e1, **common, **rates, **dilations))
            elif kind == 'D3':
                blocks.append(DnaBlock3(chs, out_chs, real_stride, e1, e2, **common, **rates, **dilations))
            else:
                raise VisionmixError(f"block type must be 'D' or 'D3', got {kind!r}")
            blocks[-1].has_skip = stride == 1 and chs == out_chs  # the official stride decides: dilating adds none
            chs = out_chs
            if stride == 2:  # a new feature level where the official model strides, dilated or not
                self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f'blocks.{i}'))
                self._taps.append(i)
            else:
                self.feature_info[-1] = dict(num_chs=chs, reduction=reduction, module=f'blocks.{i}')
                self._taps[-1] = i
        self.blocks = nn.ModuleList(blocks)
        self.mobile_to_former = MobileToFormer(chs, token_dim, bridge_heads, dynamic=True, drop_path=drop_path_rate)
        self.conv_head = ConvBn(chs, chs * head_exp, 1, groups=group_num)
        self.head = MobileFormerHead(chs * head_exp, token_dim, head_hidden, num_classes, global_pool, drop_rate)
        self.num_features = self.head.in_features
        self.head_hidden_size = self.head.out_features
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # fan-out ignoring groups, as the official init
                nn.init.normal_(m.weight, 0, math.sqrt(2. / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {'tokens'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r'^tokens|^stem', blocks=[(r'^blocks\.(\d+)', None), (r'^mobile_to_former|^conv_head', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)
        self.head_hidden_size = self.head.out_features if self.head.pool_type else self.num_features

    def _initial_tokens(self, x: torch.Tensor) -> torch.Tensor:
        # a copy, not an expanded view: views of a parameter made under no_grad trip module hooks (FlopCounterMode)
        return self.tokens.unsqueeze(0).repeat(x.shape[0], 1, 1)

    def _run_block(self, block: nn.Module, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x, tokens, use_reentrant=False)
        return block(x, tokens)

    def _head_map(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Final bridge, head conv, and token 0 appended as constant channels (the map itself once pruned)."""
        if self.conv_head is None:
            return x
        tokens = self.mobile_to_former(x, tokens)
        if self.group_num > 1:
            x = channel_shuffle(x, self.group_num)
        x = F.relu6(self.conv_head(x))
        B, _, H, W = x.shape
        return torch.cat([x, tokens[:, 0, :, None, None].expand(-1, -1, H, W)], dim=1)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            return_tokens: bool = False,
    ) -> Any:
        """Forward that also returns the maps at reductions 2, 4, 8, 16, 32 (selected by ``indices``).

        Args:
            x: Images (B, C, H, W).
            indices: Last ``n`` maps if int, all if None, else the listed indices.
            norm: Unused (no norm at the end of the trunk); accepted for timm's API.
            stop_early: Stop after the last selected map.
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the intermediates.
            return_tokens: Also return the tokens (B, T, D) at each selected map, as one more list.
        """
        if output_fmt != 'NCHW':
            raise VisionmixError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self._taps), indices)
        take_blocks = {self._taps[i] for i in take_indices}
        last_block = self._taps[max_index] if stop_early or intermediates_only else len(self.blocks) - 1
        intermediates, token_states = [], []
        tokens = self._initial_tokens(x)
        x = self.stem(x)
        if -1 in take_blocks:
            intermediates.append(x)
            token_states.append(tokens)
        for i, block in enumerate(self.blocks[:last_block + 1]):
            x, tokens = self._run_block(block, x, tokens)
            if i in take_blocks:
                intermediates.append(x)
                token_states.append(tokens)
        if intermediates_only:
            return (intermediates, token_states) if return_tokens else intermediates
        final = self._head_map(x, tokens)
        return (final, intermediates, token_states) if return_tokens else (final, intermediates)

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks after the last selected map; returns the kept indices.

        The trunk's end (final bridge + head conv, which is what ``norm`` means here) goes with ``prune_norm`` or
        when blocks were dropped (it reads the last block's map): ``forward_features`` then returns the last kept
        map and ``num_features`` is its width. The classifier goes with ``prune_head`` or when the end went.
        """
        take_indices, max_index = feature_take_indices(len(self._taps), indices)
        last = self._taps[max_index]
        pruned_end = last < len(self.blocks) - 1
        self.blocks = self.blocks[:last + 1]
        if prune_norm or pruned_end:
            self.mobile_to_former = self.conv_head = None
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or prune_norm or pruned_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._initial_tokens(x)
        x = self.stem(x)
        for block in self.blocks:
            x, tokens = self._run_block(block, x, tokens)
        return self._head_map(x, tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# official module names inside a block -> ours
_BLOCK_RENAMES = (
    (r'^conv\.0\.', 'conv_dw.conv.'), (r'^conv\.1\.', 'conv_dw.bn.'),
    (r'^conv\.4\.', 'conv_pw.conv.'), (r'^conv\.5\.', 'conv_pw.bn.'),
    (r'^(conv\d)\.0\.', r'\1.conv.'), (r'^(conv\d)\.1\.', r'\1.bn.'),
    (r'^hyper(\d)\.hyper\.0\.', r'act\1.fc1.'), (r'^hyper(\d)\.hyper\.2\.', r'act\1.fc2.'),
    (r'^local_global\.alpha\.0\.', 'bridges.mobile_to_former.alpha.'),
    (r'^local_global\.layer_norm\.', 'bridges.mobile_to_former.norm.'),
    (r'^local_global\.', 'bridges.mobile_to_former.'),
    (r'^global_block\.channel_mlp\.', 'bridges.former.proj.'),
    (r'^global_block\.layer_norm\.', 'bridges.former.norm1.'),
    (r'^global_block\.ffn\.0\.', 'bridges.former.fc1.'),
    (r'^global_block\.ffn\.2\.', 'bridges.former.fc2.'),
    (r'^global_block\.ffn_norm\.', 'bridges.former.norm2.'),
    (r'^global_block\.', 'bridges.former.'),
    (r'^global_local\.proj\.', 'bridges.former_to_mobile.v.'),
    (r'^global_local\.', 'bridges.former_to_mobile.'),
)
_TOP_RENAMES = (
    (r'^tokens\.weight$', 'tokens'),
    (r'^stem\.0\.', 'stem.conv.'), (r'^stem\.1\.', 'stem.bn.'),
    (r'^local_global\.alpha\.0\.', 'mobile_to_former.alpha.'),
    (r'^local_global\.layer_norm\.', 'mobile_to_former.norm.'),
    (r'^local_global\.', 'mobile_to_former.'),
    (r'^classifier\.conv\.1\.', 'conv_head.conv.'), (r'^classifier\.conv\.2\.', 'conv_head.bn.'),
    (r'^classifier\.fc\.0\.', 'head.fc.'), (r'^classifier\.fc\.1\.', 'head.norm.'),
    (r'^classifier\.classifier\.1\.', 'head.classifier.'),
)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the keys of an official Mobile-Former state dict (``features.N`` layout) to ours; ours passes through.

    Takes an unwrapped state dict (the official files hold ``{'state_dict': ...}`` with ``module.`` prefixes, which
    :func:`visionmix.checkpoint.unwrap_state_dict` removes).
    """
    if 'tokens.weight' not in state_dict and not any(k.startswith('features.') for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        m = re.match(r'features\.(\d+)\.(.*)', k)
        if m:
            rest = m.group(2)
            for old, new in _BLOCK_RENAMES:
                rest, n = re.subn(old, new, rest)
                if n:
                    break
            k = f'blocks.{m.group(1)}.{rest}'
        else:
            for old, new in _TOP_RENAMES:
                k, n = re.subn(old, new, k)
                if n:
                    break
        out[k] = v
    return out


def _create_mobile_former(variant: str, pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    return build_model_with_cfg(
        MobileFormer, variant, pretrained,
        pretrained_filter_fn=unwrapping(checkpoint_filter_fn),
        feature_cfg=dict(feature_cls='getter', out_indices=kwargs.pop('out_indices', (0, 1, 2, 3, 4))),
        **kwargs,
    )


_PAPER = 'Mobile-Former: Bridging MobileNet and Transformer'
_CODE = 'https://github.com/AAboys/MobileFormer'
_COMMIT = 'f44731062abb2d3ddf7fa3a0d4e7c38e7cbd6c6f'
_MACS_NOTE = ('gmacs counts conv, matmul and attention MACs only; the published MAdds (the number in the name) also '
              'count the dynamic-ReLU hyper-functions, element-wise and other work, hence the gap of {gap}.')
_VERIFIED = 'params exact, official layout loads strict'

# the classifier's hidden width, stem, tokens (num, dim), group_num, block rows
_SMALL = (('D3', 3, 12, 2, 0), ('D', 3, 12, 1, 3), ('D3', 6, 24, 2, 4), ('D', 3, 24, 1, 3), ('D3', 6, 48, 2, 4),
          ('D', 4, 48, 1, 4), ('D', 6, 64, 1, 4), ('D3', 6, 96, 2, 4), ('D', 6, 96, 1, 4))
_ARCHS: dict[str, dict[str, Any]] = {
    'mobile_former_508m': dict(head_hidden=1920, stem_chs=24, token_num=6, token_dim=192, block_args=(
        ('D3', 2, 24, 1, 0), ('D3', 6, 40, 2, 4), ('D', 3, 40, 1, 3), ('D3', 6, 72, 2, 4), ('D', 3, 72, 1, 3),
        ('D3', 6, 128, 2, 4), ('D', 4, 128, 1, 4), ('D', 6, 176, 1, 4), ('D', 6, 176, 1, 4), ('D3', 6, 240, 2, 4),
        ('D', 6, 240, 1, 4), ('D', 6, 240, 1, 4))),
    'mobile_former_294m': dict(head_hidden=1920, stem_chs=16, token_num=6, token_dim=192, block_args=(
        ('D3', 2, 16, 1, 0), ('D3', 6, 24, 2, 4), ('D', 4, 24, 1, 4), ('D3', 6, 48, 2, 4), ('D', 4, 48, 1, 4),
        ('D3', 6, 96, 2, 4), ('D', 4, 96, 1, 4), ('D', 6, 128, 1, 4), ('D', 6, 128, 1, 4), ('D3', 6, 192, 2, 4),
        ('D', 6, 192, 1, 4), ('D', 6, 192, 1, 4))),
    'mobile_former_214m': dict(head_hidden=1600, stem_chs=12, token_num=6, token_dim=192, block_args=(
        ('D3', 2, 12, 1, 0), ('D3', 6, 20, 2, 4), ('D', 3, 20, 1, 4), ('D3', 6, 40, 2, 4), ('D', 4, 40, 1, 4),
        ('D3', 6, 80, 2, 4), ('D', 4, 80, 1, 4), ('D', 6, 112, 1, 4), ('D', 6, 112, 1, 4), ('D3', 6, 160, 2, 4),
        ('D', 6, 160, 1, 4), ('D', 6, 160, 1, 4))),
    'mobile_former_151m': dict(head_hidden=1280, stem_chs=12, token_num=6, token_dim=192, block_args=(
        ('D3', 2, 12, 1, 0), ('D3', 6, 16, 2, 4), ('D', 3, 16, 1, 3), ('D3', 6, 32, 2, 4), ('D', 3, 32, 1, 3),
        ('D3', 6, 64, 2, 4), ('D', 4, 64, 1, 4), ('D', 6, 88, 1, 4), ('D', 6, 88, 1, 4), ('D3', 6, 128, 2, 4),
        ('D', 6, 128, 1, 4), ('D', 6, 128, 1, 4))),
    'mobile_former_96m': dict(head_hidden=1280, stem_chs=12, token_num=4, token_dim=128, block_args=(
        ('D3', 2, 12, 1, 0), ('D3', 6, 16, 2, 4), ('D3', 6, 32, 2, 4), ('D', 3, 32, 1, 3), ('D3', 6, 64, 2, 4),
        ('D', 4, 64, 1, 4), ('D', 6, 88, 1, 4), ('D3', 6, 128, 2, 4), ('D', 6, 128, 1, 4))),
    'mobile_former_52m': dict(head_hidden=1024, stem_chs=8, token_num=3, token_dim=128, block_args=_SMALL),
    'mobile_former_26m': dict(head_hidden=1024, stem_chs=8, token_num=3, token_dim=128, group_num=4,
                              block_args=_SMALL),
}

# name: (exact params, our GMACs at 224, published MAdds in G, top-1)
_FACTS = {
    'mobile_former_508m': (13_976_976, 0.49847, 0.508, 79.3),
    'mobile_former_294m': (11_422_648, 0.28673, 0.294, 77.9),
    'mobile_former_214m': (9_425_920, 0.20837, 0.214, 76.7),
    'mobile_former_151m': (7_595_828, 0.14625, 0.151, 75.2),
    'mobile_former_96m': (4_585_252, 0.09202, 0.096, 72.8),
    'mobile_former_52m': (3_469_092, 0.04929, 0.052, 68.7),
    'mobile_former_26m': (3_232_788, 0.02355, 0.026, 64.0),
}


def _card(name: str) -> ModelCard:
    params, gmacs, paper_gmacs, top1 = _FACTS[name]
    gap = f'{(gmacs / paper_gmacs - 1) * 100:+.1f}%'
    return ModelCard(
        name=name, family='hybrid', paper=_PAPER, arxiv='2108.05895', code_url=_CODE, code_commit=_COMMIT,
        params=params, gmacs=gmacs, paper_gmacs=paper_gmacs, top1=top1,
        top1_source='paper Table / official README (ImageNet-1k val, 224)', mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD, license='unspecified (the official repository has no license file)',
        verified=f'{_VERIFIED}, outputs equal the official code (random weights, 224 / 97x61 / 33x47), MACs {gap} vs '
                 'the published MAdds',
        notes=_MACS_NOTE.format(gap=gap) + ' Official weights: links in the official README (Google Drive), load '
        'them with checkpoint_path=...; no direct download URL is wired up.',
    )


_CARDS = {name: _card(name) for name in _FACTS}


def _cfg(name: str, **kwargs: Any) -> dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
        'interpolation': 'bilinear', 'first_conv': 'stem.conv', 'classifier': 'head.classifier',
        **card_to_pretrained_fields(_CARDS[name]), **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in _FACTS})


def _entry(name: str, pretrained: bool, kwargs: dict[str, Any]) -> MobileFormer:
    return _create_mobile_former(name, pretrained, **dict(_ARCHS[name], **kwargs))


@register_visionmix_model(_CARDS['mobile_former_26m'])
def mobile_former_26m(pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    """Mobile-Former-26M: 3.2M params, 64.0% top-1 (grouped 1x1 convs with channel shuffle)."""
    return _entry('mobile_former_26m', pretrained, kwargs)


@register_visionmix_model(_CARDS['mobile_former_52m'])
def mobile_former_52m(pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    """Mobile-Former-52M: 3.5M params, 68.7% top-1."""
    return _entry('mobile_former_52m', pretrained, kwargs)


@register_visionmix_model(_CARDS['mobile_former_96m'])
def mobile_former_96m(pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    """Mobile-Former-96M: 4.6M params, 72.8% top-1."""
    return _entry('mobile_former_96m', pretrained, kwargs)


@register_visionmix_model(_CARDS['mobile_former_151m'])
def mobile_former_151m(pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    """Mobile-Former-151M: 7.6M params, 75.2% top-1."""
    return _entry('mobile_former_151m', pretrained, kwargs)


@register_visionmix_model(_CARDS['mobile_former_214m'])
def mobile_former_214m(pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    """Mobile-Former-214M: 9.4M params, 76.7% top-1."""
    return _entry('mobile_former_214m', pretrained, kwargs)


@register_visionmix_model(_CARDS['mobile_former_294m'])
def mobile_former_294m(pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    """Mobile-Former-294M: 11.4M params, 77.9% top-1."""
    return _entry('mobile_former_294m', pretrained, kwargs)


@register_visionmix_model(_CARDS['mobile_former_508m'])
def mobile_former_508m(pretrained: bool = False, **kwargs: Any) -> MobileFormer:
    """Mobile-Former-508M: 14.0M params, 79.3% top-1."""
    return _entry('mobile_former_508m', pretrained, kwargs)
