"""UNeXt: a U-Net whose two deepest levels are tokenised shifted-MLP stages (Valanarasu & Patel, "UNeXt: MLP-based
Rapid Medical Image Segmentation Network", MICCAI 2022, arXiv:2203.04967).

Encoder: three conv stages (conv3x3 -> BN -> max-pool 2 -> ReLU), then two tokenised stages (overlapping 3x3 stride-2
patch embedding + LayerNorm, one shifted-MLP block, LayerNorm). Decoder: conv3x3 -> BN -> bilinear x2 -> ReLU, plus
the encoder map of the same size, with a shifted-MLP block + LayerNorm after the first two; a last conv3x3 -> x2
(no BN), and a 1x1 conv to ``num_classes`` logits. The shifted MLP is
:class:`~visionmix.layers.shift.AxialShiftMlp` (shift along H -> fc1 -> depthwise conv -> GELU -> shift along W ->
fc2), the same axial shift as SPACH's ``'shift'`` spatial function.

Checked against the official code, github.com/jeya-maria-jose/UNeXt-pytorch at commit
6ad0855114a35afbf81decf5dc912cd8de70476a (``archs.py``, classes ``UNext`` and ``UNext_S``); the channel widths are
the code's (16/32/128/160/256), not the paper text's. :func:`checkpoint_filter_fn` loads its checkpoints strictly.
Differences from it:

* ``in_chans`` is real (the official model hard-wires 3 input channels and ignores its argument).
* Any H, W work: the input is zero-padded at the bottom / right to the next multiple of 32 and the logits are
  cropped back (the official model needs multiples of 32). At multiples of 32 nothing is padded, so the result is
  the official one.

The segmentation contract: ``forward`` returns logits (B, num_classes, H, W); ``forward_features`` the bottleneck
map (B, 256, H/32, W/32, of the padded input); ``features_only`` / ``forward_intermediates`` the five encoder maps at
reductions 2 to 32 (cropped to ``ceil(H / r)``). The official training uses ``0.5 * BCE-with-logits + (1 - Dice)`` on
``sigmoid(logits)`` for one class, and thresholds ``sigmoid(logits) > 0.5``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from ..errors import VisionmixError
from ..layers.fold import conv_bn
from ..layers.shift import AxialShiftMlp
from ..checkpoint import unwrapping
from ..registry import ModelCard, card_to_pretrained_fields, register_visionmix_model

__all__ = ['UNeXt']

_MULTIPLE = 32  # total reduction of the encoder


@register_notrace_function  # reason: the padding depends on the input size
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a (B, C, H, W) map at the bottom / right so H and W are multiples of ``multiple`` (no-op if so)."""
    H, W = x.shape[-2:]
    pad_h, pad_w = (-H) % multiple, (-W) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class ConvBnPool(nn.Module):
    """Encoder conv stage: conv3x3 (bias) -> BN -> max-pool 2 -> ReLU."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.max_pool2d(conv_bn(self.conv, self.bn, x, self), 2, 2))


class ConvBnUp(nn.Module):
    """Decoder stage: conv3x3 (bias) -> BN (optional) -> bilinear x2 -> ReLU."""

    def __init__(self, in_chs: int, out_chs: int, norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_chs) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn(self.conv, self.bn, x, self)
        return F.relu(F.interpolate(x, scale_factor=2., mode='bilinear', align_corners=False))


class ShiftedBlock(nn.Module):
    """Pre-norm residual shifted MLP on a channels-last map: ``x + drop_path(mlp(norm(x)))``."""

    def __init__(self, dim: int, shift_size: int = 5, drop: float = 0., drop_path: float = 0.) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = AxialShiftMlp(dim, dim, shift_size=shift_size, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.drop_path, nn.Identity):
            return self.mlp(self.norm(x), residual=x)  # the shortcut added by fc2's GEMM
        return x + self.drop_path(self.mlp(self.norm(x)))


class TokenStage(nn.Module):
    """Tokenised encoder stage: 3x3 stride-2 conv + LayerNorm (overlapping patch embedding), block, LayerNorm."""

    def __init__(self, in_chs: int, dim: int, drop: float = 0., drop_path: float = 0.) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, 3, stride=2, padding=1)
        self.embed_norm = nn.LayerNorm(dim)
        self.block = ShiftedBlock(dim, drop=drop, drop_path=drop_path)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.proj(x).permute(0, 2, 3, 1))
        return self.norm(self.block(x)).permute(0, 3, 1, 2)


class TokenDecoderStage(nn.Module):
    """Tokenised decoder stage: conv up-stage, + skip, shifted-MLP block, LayerNorm."""

    def __init__(self, in_chs: int, dim: int, drop: float = 0., drop_path: float = 0.) -> None:
        super().__init__()
        self.up = ConvBnUp(in_chs, dim)
        self.block = ShiftedBlock(dim, drop=drop, drop_path=drop_path)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = (self.up(x) + skip).permute(0, 2, 3, 1)
        return self.norm(self.block(x)).permute(0, 3, 1, 2)


class UNeXt(nn.Module):
    """UNeXt segmentation network.

    Args:
        dims: Widths of the five encoder levels (reductions 2, 4, 8, 16, 32); the last two are tokenised.
        num_classes: Output channels (logits); 1 for binary segmentation.
        in_chans: Input channels.
        drop_rate: Dropout inside the shifted MLPs.
        drop_path_rate: Stochastic depth; the official schedule gives the H/16 blocks 0 and the H/32 / first decoder
            block ``drop_path_rate / 2``.
    """

    def __init__(
            self,
            dims: Sequence[int] = (16, 32, 128, 160, 256),
            num_classes: int = 1,
            in_chans: int = 3,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ) -> None:
        super().__init__()
        if len(dims) != 5:
            raise VisionmixError(f'UNeXt has five encoder levels, got dims={tuple(dims)}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.dims = tuple(dims)
        dpr = [drop_path_rate * i / 2 for i in range(3)]  # torch.linspace(0, rate, 3), as the official
        self.enc1 = ConvBnPool(in_chans, dims[0])
        self.enc2 = ConvBnPool(dims[0], dims[1])
        self.enc3 = ConvBnPool(dims[1], dims[2])
        self.enc4 = TokenStage(dims[2], dims[3], drop_rate, dpr[0])
        self.enc5 = TokenStage(dims[3], dims[4], drop_rate, dpr[1])
        self.dec1 = TokenDecoderStage(dims[4], dims[3], drop_rate, dpr[0])
        self.dec2 = TokenDecoderStage(dims[3], dims[2], drop_rate, dpr[1])
        self.dec3 = ConvBnUp(dims[2], dims[1])
        self.dec4 = ConvBnUp(dims[1], dims[0])
        self.dec5 = ConvBnUp(dims[0], dims[0], norm=False)
        self.head = nn.Conv2d(dims[0], num_classes, 1)
        self.num_features = self.head_hidden_size = dims[4]
        self.feature_info = [dict(num_chs=c, reduction=2 ** (i + 1), module=f'enc{i + 1}') for i, c in enumerate(dims)]
        for stage in (self.enc4, self.enc5, self.dec1, self.dec2):  # the official init touches only these
            stage.apply(self._init_weights)
        for stage in (self.dec1, self.dec2):  # ... but not their conv up-stages (plain modules in the official)
            stage.up.apply(self._reset)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2. / fan_out))
            nn.init.zeros_(m.bias)

    @staticmethod
    def _reset(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.reset_parameters()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder / decoder level in the backward pass instead of keeping its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def _run(self, stage: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(stage, *args, use_reentrant=False)
        return stage(*args)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the 1x1 logits conv (``num_classes`` output channels, at least 1)."""
        if num_classes < 1:
            raise VisionmixError('a segmentation head needs num_classes >= 1')
        self.num_classes = num_classes
        self.head = nn.Conv2d(self.dims[0], num_classes, 1)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, _MULTIPLE)
        # Inference runs channels-last: on CPU the convs, max-pools and upsamplings are 1.2-7x faster on NHWC maps,
        # and the tokenised stages then read their input without a transposing copy. Training keeps NCHW, where
        # PyTorch's BatchNorm kernel sums its statistics more accurately.
        # (one contiguous call in both modes, so traced graphs have the same node names in train and eval)
        return x.contiguous(memory_format=torch.contiguous_format if self.training else torch.channels_last)

    def _encode(self, x: torch.Tensor, stop: int = 4) -> list[torch.Tensor]:
        maps = []
        for stage in (self.enc1, self.enc2, self.enc3, self.enc4, self.enc5)[:stop + 1]:
            x = self._run(stage, x)
            maps.append(x)
        return maps

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder maps at reductions 2, 4, 8, 16, 32, cropped to ``ceil(H / r)``; ``final`` is the bottleneck.

        Args:
            x: Images (B, C, H, W).
            indices: Last ``n`` maps if int, all if None, else the listed indices.
            norm: Unused (the tokenised stages end in their own LayerNorm); accepted for timm's API.
            stop_early: Stop after the last selected map.
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise VisionmixError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(5, indices)
        H, W = x.shape[-2:]
        maps = self._encode(self._pad(x), max_index if stop_early or intermediates_only else 4)
        intermediates = [maps[i][..., :-(-H // 2 ** (i + 1)), :-(-W // 2 ** (i + 1))] for i in take_indices]
        return intermediates if intermediates_only else (maps[-1], intermediates)

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the decoder, the head and the encoder levels after the last selected one (``forward_features`` then
        ends at that level, and ``num_features`` is its width)."""
        take_indices, max_index = feature_take_indices(5, indices)
        for i in range(max_index + 1, 5):
            setattr(self, f'enc{i + 1}', nn.Identity())
        self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head:
            for name in ('dec1', 'dec2', 'dec3', 'dec4', 'dec5', 'head'):
                setattr(self, name, nn.Identity())
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck map (B, dims[4], H/32, W/32) of the padded input."""
        return self._encode(self._pad(x))[-1]

    def forward_head(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode the bottleneck ``x`` with the four encoder ``skips`` (reductions 2, 4, 8, 16) into logits."""
        t1, t2, t3, t4 = skips
        x = self._run(self.dec1, x, t4)
        x = self._run(self.dec2, x, t3)
        x = self._run(self.dec3, x) + t2
        x = self._run(self.dec4, x) + t1
        return self.head(self._run(self.dec5, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        maps = self._encode(self._pad(x))
        # NCHW logits in every mode (a no-op for one class)
        return self.forward_head(maps[-1], maps[:-1])[..., :H, :W].contiguous()


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the keys of an official UNeXt state dict (``UNext`` / ``UNext_S`` attribute names) to ours; ours
    passes through.

    The official training saves a bare ``state_dict`` (``model.pth``), often with DataParallel's ``module.``
    prefixes, which :func:`visionmix.checkpoint.unwrap_state_dict` removes before this filter runs.
    """
    if 'encoder1.weight' not in state_dict:
        return state_dict
    renames = {
        'encoder1.': 'enc1.conv.', 'encoder2.': 'enc2.conv.', 'encoder3.': 'enc3.conv.',
        'ebn1.': 'enc1.bn.', 'ebn2.': 'enc2.bn.', 'ebn3.': 'enc3.bn.',
        'patch_embed3.proj.': 'enc4.proj.', 'patch_embed3.norm.': 'enc4.embed_norm.',
        'block1.0.': 'enc4.block.', 'norm3.': 'enc4.norm.',
        'patch_embed4.proj.': 'enc5.proj.', 'patch_embed4.norm.': 'enc5.embed_norm.',
        'block2.0.': 'enc5.block.', 'norm4.': 'enc5.norm.',
        'decoder1.': 'dec1.up.conv.', 'dbn1.': 'dec1.up.bn.', 'dblock1.0.': 'dec1.block.', 'dnorm3.': 'dec1.norm.',
        'decoder2.': 'dec2.up.conv.', 'dbn2.': 'dec2.up.bn.', 'dblock2.0.': 'dec2.block.', 'dnorm4.': 'dec2.norm.',
        'decoder3.': 'dec3.conv.', 'dbn3.': 'dec3.bn.', 'decoder4.': 'dec4.conv.', 'dbn4.': 'dec4.bn.',
        'decoder5.': 'dec5.conv.', 'final.': 'head.',
    }
    out = {}
    for k, v in state_dict.items():
        for old, new in renames.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        k = k.replace('.block.norm2.', '.block.norm.').replace('.mlp.dwconv.dwconv.', '.mlp.dwconv.')
        out[k] = v
    return out


def _create_unext(variant: str, pretrained: bool = False, **kwargs: Any) -> UNeXt:
    return build_model_with_cfg(
        UNeXt, variant, pretrained,
        pretrained_filter_fn=unwrapping(checkpoint_filter_fn),
        feature_cfg=dict(feature_cls='getter', out_indices=kwargs.pop('out_indices', (0, 1, 2, 3, 4))),
        **kwargs,
    )


_PAPER = 'UNeXt: MLP-based Rapid Medical Image Segmentation Network'
_CODE = 'https://github.com/jeya-maria-jose/UNeXt-pytorch'
_COMMIT = '6ad0855114a35afbf81decf5dc912cd8de70476a'
_NOTES = ('Segmentation: params at num_classes=1 (not 1000), MACs at 256x256. Loss as the official training: '
          '0.5 * BCE-with-logits + (1 - soft Dice) for num_classes=1; predict sigmoid(logits) > 0.5. Inputs are '
          'normalised with the ImageNet mean/std (albumentations Normalize() defaults, as the official pipeline). No '
          'official weights are published. Any H, W: padded to a multiple of 32, logits cropped back.')

# benchmarks/results/unext_fidelity.md
_MAX_DIFF = {'unext': '2.4e-06', 'unext_s': '8.0e-07'}


def _card(name: str, params: int, gmacs: float, paper_gmacs: float | None, extra: str = '') -> ModelCard:
    max_diff = _MAX_DIFF[name]
    return ModelCard(
        name=name, family='segmentation', paper=_PAPER, arxiv='2203.04967', code_url=_CODE, code_commit=_COMMIT,
        params=params, gmacs=gmacs, paper_gmacs=paper_gmacs, input_size=(3, 256, 256), top1=None,
        top1_source='none (segmentation; paper: ISIC-2018 Dice 89.70 for UNeXt)', mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD, license='mit', notes=_NOTES + extra,
        verified=('params exact at num_classes=1, official layout loads strict, MACs within 2% of the reference, '
                  f'outputs equal the official code (same random weights at 256x256, max abs diff {max_diff}: '
                  'benchmarks/results/unext_fidelity.md)'),
    )


_CARDS = {
    'unext': _card('unext', 1_471_921, 0.5620, 0.57),
    'unext_s': _card(
        'unext_s', 253_561, 0.09923, None, " UNeXt-S is the official code's UNext_S (widths 8/16/32/64/128)."),
}


def _cfg(name: str, **kwargs: Any) -> dict[str, Any]:
    return {
        'url': '', 'num_classes': 1, 'input_size': (3, 256, 256), 'pool_size': None, 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'first_conv': 'enc1.conv', 'classifier': 'head',
        **card_to_pretrained_fields(_CARDS[name]), **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in _CARDS})


@register_visionmix_model(_CARDS['unext'])
def unext(pretrained: bool = False, **kwargs: Any) -> UNeXt:
    """UNeXt: 1.47M params (num_classes=1), 0.56 GMACs at 256x256."""
    return _create_unext('unext', pretrained, **dict(dict(dims=(16, 32, 128, 160, 256)), **kwargs))


@register_visionmix_model(_CARDS['unext_s'])
def unext_s(pretrained: bool = False, **kwargs: Any) -> UNeXt:
    """UNeXt-S: 0.25M params (num_classes=1), 0.10 GMACs at 256x256."""
    return _create_unext('unext_s', pretrained, **dict(dict(dims=(8, 16, 32, 64, 128)), **kwargs))
