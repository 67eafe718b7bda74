"""``bpr:BACKBONE``: the refinement network of BPR (Boundary Patch Refinement, Tang et al., CVPR 2021) on any backbone.

The network sees one boundary patch at a time: the image patch (RGB, ImageNet mean / std) and the coarse-mask patch
(mapped to {-1, +1}) stacked as one 4-channel tensor ``(B, 4, S, S)`` (``S`` = 128 in the official hrnet18s_128),
and returns 2-class logits ``(B, 2, S, S)`` (background, foreground) at the input size.
:func:`visionmix.bpr.refine_mask` drives it through :meth:`Refiner.refine_patches`; ``visionmix train --model
bpr:BACKBONE --dataset bpr-patches:DIR`` trains it.

Against the official code (``HRNetRefine`` + ``FCNHead`` of the BPR mmsegmentation fork):

* **Default backbone**: ``bpr:`` (no backbone named) is ``bpr:hrnet_w18_small_v2``. The official HRNetV2-W18-Small
  (mmseg ``hrnetv2_w18_small``: branches of 18 / 36 / 72 / 144 channels, 270 in the head) is timm's
  ``hrnet_w18_small_v2``; timm's ``hrnet_w18_small`` is the lighter v1 (16 / 32 / 64 / 128 channels, one module per
  stage), available as ``bpr:hrnet_w18_small``. HRNet backbones are built with ``feature_location=''`` so the head
  reads the raw branch outputs, as the official head does (timm's default would add its classification
  ``incre`` modules).
* **Mask entry**: a 4-channel first convolution (timm's ``in_chans=4``), not a separate ``conv_mask``. For HRNet the
  two are the same function: the official ``conv1(img) + conv_mask(mask)`` adds two bias-free 3x3 stride-2 padding-1
  convolutions with 64 outputs, which is one bias-free 3x3 stride-2 convolution over the 4 stacked channels (weights
  ``[conv1.weight, conv_mask.weight]`` along the input axis). The 4-channel form needs nothing of the backbone but
  timm's ``in_chans``, so every backbone takes the mask the same way. With ``backbone_checkpoint`` the RGB weights of
  the first convolution are loaded and the mask channel keeps its fresh initialisation: the official pretrained
  ``conv1`` plus a new ``conv_mask``.
* **Head**: every backbone map at stride >= 4 (HRNet: the 4 branches; the stride-2 stem map is left out, as the
  official ``in_index=(0, 1, 2, 3)`` does) is resized bilinearly (``align_corners=False``) to the largest and
  concatenated (``resize_concat``); one 1x1 convolution with as many channels as the concatenation + BatchNorm
  (SyncBN in the official multi-GPU config) + ReLU, no dropout, and a 1x1 classifier to 2 classes; the logits are
  upsampled bilinearly to the input size (mmseg's ``encode_decode``).
* **Weights**: nothing is downloaded. The official model starts from ImageNet HRNet weights
  (``open-mmlab://msra/hrnetv2_w18_small``); here ``backbone_checkpoint=`` loads such local weights (timm's or
  visionmix's key layout), otherwise the backbone starts from its random initialisation.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checkpoint
from ..bpr import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, UnknownModelError, VisionmixError
from ..registry import Composite, ModelArgumentError, ModelCard, count_parameters, model_card, register_composite
from ..registry import takes_img_size as backbone_takes_img_size
from .decoders import resolve_backbone

__all__ = ['Refiner', 'ResizeConcatHead', 'bpr_refiner', 'DEFAULT_BACKBONE', 'DEFAULT_OUT_SIZE', 'IN_CHANS',
           'BPR_URL']

DEFAULT_BACKBONE = 'hrnet_w18_small_v2'  # = mmseg's hrnetv2_w18_small, the backbone of the official hrnet18s_128
DEFAULT_OUT_SIZE = 128  # patch side the network sees (hrnet18s_128; hrnet48_256 uses 256)
IN_CHANS = 4  # RGB + the coarse mask in {-1, +1}
NUM_CLASSES = 2  # background / foreground logits; the foreground probability is softmax[:, 1]
# The official configs normalise every patch with ImageNet's mean / std whatever the backbone (visionmix.bpr's
# constants, on 0-255 values), so the card and pretrained_cfg say so on timm's 0-1 scale.
MEAN = tuple(round(v / 255, 6) for v in IMAGENET_MEAN)
STD = tuple(round(v / 255, 6) for v in IMAGENET_STD)
MIN_REDUCTION = 4  # backbone maps at a finer stride (HRNet's stem) do not enter the head
BPR_URL = 'https://github.com/chenhang98/BPR'
BPR_PAPER = 'Look Closer to Segment Better: Boundary Patch Refinement for Instance Segmentation'


class ResizeConcatHead(nn.Module):
    """The official ``FCNHead`` with ``input_transform='resize_concat'``, one 1x1 conv and no dropout.

    Args:
        in_channels: Channels of each backbone map the head reads.
        num_classes: Output maps.
        channels: Width of the 1x1 convolution (official: the sum of ``in_channels``).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int = NUM_CLASSES, channels: int | None = None) -> None:
        super().__init__()
        total = sum(in_channels)
        channels = channels or total
        self.fuse = nn.Sequential(nn.Conv2d(total, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        x = torch.cat([m if m.shape[-2:] == size else F.interpolate(m, size=size, mode='bilinear', align_corners=False)
                       for m in maps], dim=1)
        return self.classifier(self.fuse(x))


class Refiner(nn.Module):
    """Backbone with a 4-channel input + :class:`ResizeConcatHead`: ``(B, 4, S, S)`` -> logits ``(B, 2, S, S)``.

    Args:
        backbone: A timm ``features_only`` model built with ``in_chans=4``; returns a list of maps.
        levels: Indices of the backbone maps the head reads.
        in_channels: Channels of those maps.
        name: The model spec, for error messages.
        head_channels: Width of the head's 1x1 convolution (default: the sum of ``in_channels``).
    """

    def __init__(self, backbone: nn.Module, levels: Sequence[int], in_channels: Sequence[int], name: str = 'bpr',
                 head_channels: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.levels = tuple(levels)
        self.name = name
        self.head = ResizeConcatHead(in_channels, NUM_CLASSES, head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != IN_CHANS:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise VisionmixError(f'{self.name}: expected (B, 4, H, W) patches (RGB normalised + the coarse mask in '
                                 f'{{-1, +1}}), got {got}')
        maps = self.backbone(x)
        logits = self.head([maps[i] for i in self.levels])
        return F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=False)

    def refine_patches(self, image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        """The refiner callable of :func:`visionmix.bpr.refine_mask`: the two inputs stacked into one tensor."""
        return self(torch.cat([image_patches, mask_patches], dim=1))


# ----------------------------------------------------------------------------------------------- backbone weights

def _checkpoint_value(state: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
    """A model key's tensor in a classifier's state dict: same name, or without the ``model.`` prefix timm's
    ``FeatureGetterNet`` adds to the wrapped model's keys."""
    for candidate in (key, key.removeprefix('model.')):
        if candidate in state:
            return state[candidate]
    return None


def load_backbone_weights(backbone: nn.Module, path: str | Path, name: str) -> None:
    """Load a 3-channel classifier checkpoint into a 4-channel ``features_only`` backbone.

    Every backbone tensor must be in the file with its shape, except the first convolution, which has one more input
    channel: its RGB weights are copied and the mask channel keeps its initialisation (the official pretrained
    ``conv1`` + a new ``conv_mask``). Classifier-head tensors of the file are ignored.
    """
    state = checkpoint.unwrap_state_dict(checkpoint.read_state_dict(path))
    own = backbone.state_dict()
    missing, wrong, adapted = [], [], 0
    for key, target in own.items():
        value = _checkpoint_value(state, key)
        if value is None:
            missing.append(key)
        elif value.shape == target.shape:
            own[key] = value.to(target.dtype)
        elif value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == IN_CHANS and \
                value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:] and not adapted:
            own[key] = torch.cat([value.to(target.dtype), target[:, 3:]], dim=1)  # the mask channel stays fresh
            adapted += 1
        else:
            wrong.append(f'{key} {tuple(value.shape)} vs {tuple(target.shape)}')
    if missing or wrong or not adapted:
        why = (f'{len(missing)} backbone tensor(s) missing, e.g. {missing[0]}' if missing else
               f'shape mismatch {wrong[0]}' if wrong else 'no 3-channel first convolution found')
        raise CheckpointError(f'{name}: backbone_checkpoint {str(path)!r} does not fit the backbone ({why})')
    backbone.load_state_dict(own)


# ---------------------------------------------------------------------------------------------------- building

def _features(backbone: str, kwargs: dict[str, Any]) -> nn.Module:
    """The 4-channel ``features_only`` backbone (raw branches for HRNet), or a one-line error naming why not."""
    kwargs = dict(kwargs)
    if backbone.startswith('hrnet'):
        kwargs.setdefault('feature_location', '')  # the branch outputs, not timm's classification incre modules
    try:
        return timm.create_model(backbone, features_only=True, in_chans=IN_CHANS, **kwargs)
    except VisionmixError:
        raise
    except (TypeError, RuntimeError, NotImplementedError, AttributeError, ValueError, AssertionError) as e:
        msg = (str(e).splitlines() or [''])[0]
        raise UnknownModelError(f'bpr:{backbone}: the backbone cannot be built with features_only and in_chans=4 '
                                f'({type(e).__name__}: {msg}); use a timm CNN or a visionmix family, e.g. '
                                f'bpr:{DEFAULT_BACKBONE} or bpr:resnet18') from None


def _head_levels(reductions: Sequence[int]) -> list[int]:
    """The maps the head reads: all at stride >= 4; all of them when none is (a backbone of stride-2 maps only)."""
    levels = [i for i, r in enumerate(reductions) if r >= MIN_REDUCTION]
    return levels or list(range(len(reductions)))


def bpr_refiner(
        backbone: str = DEFAULT_BACKBONE,
        num_classes: int = NUM_CLASSES,
        img_size: int | Sequence[int] = DEFAULT_OUT_SIZE,
        backbone_checkpoint: str | None = None,
        head_channels: int | None = None,
        drop_path_rate: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
) -> Refiner:
    """The BPR refinement network on ``backbone`` (see the module docstring).

    Args:
        backbone: Any registered model name with timm ``features_only`` support (timm CNNs, visionmix families,
            presets); default the official HRNetV2-W18-Small.
        num_classes: Must be 2 (background / foreground), as the official model; the training task passes it.
        img_size: Patch side the network is trained on (128 official); passed to backbones built for one size.
        backbone_checkpoint: Local 3-channel backbone weights (e.g. ImageNet), see :func:`load_backbone_weights`.
        head_channels: Width of the head's 1x1 convolution (default: the sum of the maps' channels, as official).
        drop_path_rate: Stochastic depth of the backbone (where it has one).
        backbone_kwargs: More arguments for the backbone's builder.
    """
    name = f'bpr:{backbone}'
    if num_classes != NUM_CLASSES:
        raise ModelArgumentError(f'{name}: the refiner predicts background / foreground, num_classes must be 2, got '
                                 f'{num_classes!r}')
    timm_name, kwargs = resolve_backbone(backbone)
    kwargs.update(backbone_kwargs or {})
    if drop_path_rate:
        kwargs['drop_path_rate'] = drop_path_rate
    if backbone_takes_img_size(backbone):
        kwargs['img_size'] = img_size
    features = _features(timm_name, kwargs)
    levels = _head_levels(features.feature_info.reduction())
    if backbone_checkpoint is not None:
        load_backbone_weights(features, backbone_checkpoint, name)
    channels = [features.feature_info.channels()[i] for i in levels]
    model = Refiner(features, levels, channels, name, head_channels)
    size = img_size if isinstance(img_size, int) else int(img_size[0])
    model.pretrained_cfg = dict(architecture=name, input_size=(IN_CHANS, size, size), mean=MEAN, std=STD,
                                num_classes=NUM_CLASSES, crop_pct=1.0, interpolation='bilinear')
    return model


def _resolve(rest: str) -> tuple[ModelCard, Any]:
    backbone = rest or DEFAULT_BACKBONE
    try:
        base = model_card(backbone)
    except UnknownModelError as e:
        raise UnknownModelError(f'bpr:{backbone}: {e}') from None
    if ':' in backbone:
        raise UnknownModelError(f'bpr:{backbone}: a composite model is not a backbone; use e.g. '
                                f'bpr:{DEFAULT_BACKBONE} or bpr:resnet18')
    resolve_backbone(backbone)  # a torchvision model fails here, by name
    builder = functools.partial(bpr_refiner, backbone)
    card = ModelCard(
        name=f'bpr:{backbone}', family='segmentation', task='refinement', paper=BPR_PAPER, arxiv='2104.05239',
        code_url=BPR_URL, code_commit='a6158280db11b329a264ee5f20818bfc87b73f3a', params=count_parameters(builder),
        gmacs=None, input_size=(IN_CHANS, DEFAULT_OUT_SIZE, DEFAULT_OUT_SIZE), mean=MEAN, std=STD,
        top1_source='not applicable (patch refinement)',
        license='see the official repository (BPR); backbone: ' + (base.license or '?'),
        verified='trains on bpr-patches and refines shapes-inst masks (tests/test_bpr_pipeline.py)', curated=False,
        notes=f'BPR refiner over {backbone}: 4-channel first conv (RGB + coarse mask in {{-1, +1}}), resize-concat '
              f'head, 2-class logits at the input size; see visionmix.models.refiner')
    return card, builder


# No `bpr` preset for the bare name: a preset counts its parameters at import, 0.46 s of HRNet on the meta device
# added to every command; `bpr:` (empty backbone) is the default instead.
register_composite(Composite('bpr', _resolve, f'(BPR boundary-patch refiner over a backbone; bpr: alone is the '
                                              f'official bpr:{DEFAULT_BACKBONE})', check_input=False))
