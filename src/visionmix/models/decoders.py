"""Any backbone + a segmentation decoder: ``unet:``, ``fpn:``, ``deeplabv3plus:`` and ``upernet:`` model specs.

The decoders are segmentation-models-pytorch's (the library segmentation users already use); the backbone is any
model name with a feature pyramid: ours (registered in timm, so smp's ``tu-`` encoders build them with
``features_only``), any timm name, or a preset. ``fpn:hire_mlp_tiny``, ``deeplabv3plus:SPACH-Conv``,
``unet:resnet50`` build through ``create_model`` like every other name and train with the segmentation task.

What visionmix adds around smp:

* any input size: the image is padded (zeros, bottom / right) to a multiple of the decoder's stride and the logits
  are cropped back, as UNeXt does;
* the backbone is checked, built on the meta device with the caller's arguments, for the pyramid the decoders read:
  one map per stride 4, 8, 16, 32 (a 3-stage SPACH is refused with that reason);
* ``deeplabv3plus`` runs the backbone at output stride 16 by default (8 allowed: ``output_stride=8``), with the
  backbone's own dilation (``dilation='constant' | 'hdc'``);
* one-line errors for a backbone that cannot serve (no feature pyramid, a torchvision model) or an unknown decoder.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnknownModelError, VisionmixError
from ..registry import Composite, ModelCard, count_parameters, list_presets, model_card, register_composite
from ..registry import takes_img_size as backbone_takes_img_size
from .dilated_resnet import dilate_timm_model

__all__ = ['SegmentationNet', 'DECODERS', 'resolve_backbone']

# arch -> (smp class name, the output strides the decoder supports, its default)
DECODERS: dict[str, tuple[str, tuple[int, ...], int]] = {
    'unet': ('Unet', (32,), 32),
    'fpn': ('FPN', (32,), 32),
    'deeplabv3plus': ('DeepLabV3Plus', (8, 16), 16),
    'upernet': ('UPerNet', (32,), 32),
}


class SegmentationNet(nn.Module):
    """An smp segmentation model that takes any H, W: padded to ``divisor`` and cropped back.

    Args:
        net: The smp model (encoder + decoder + head).
        divisor: The stride the input size must be a multiple of.
        num_classes: Output maps.
    """

    def __init__(self, net: nn.Module, divisor: int, num_classes: int) -> None:
        super().__init__()
        self.net, self.divisor, self.num_classes = net, divisor, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.divisor, (-w) % self.divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.net(x)[..., :h, :w]


def resolve_backbone(name: str) -> tuple[str, dict[str, Any]]:
    """(timm name, builder kwargs) of a backbone name: a preset stands for its model and arguments."""
    preset = {k.lower(): v for k, v in list_presets().items()}.get(name.lower())
    if preset is not None:
        return preset[0], dict(preset[1])
    card = model_card(name)  # UnknownModelError with suggestions for a misspelt backbone
    if card.source == 'torchvision' or not timm.is_model(name):
        raise VisionmixError(f'{name} cannot be a decoder backbone: it has no timm feature pyramid (features_only); '
                             f'use one of ours (hire_mlp_*, swin_mlp_*, spach_ms*, mobile_former_*) or a timm CNN')
    return name, {}


def _levels(backbone: str, kwargs: dict[str, Any]) -> list[int]:
    """The reductions of the backbone's feature maps, built with the caller's arguments on the meta device."""
    try:
        with torch.device('meta'):
            features = timm.create_model(backbone, features_only=True, **kwargs)
    except VisionmixError:
        raise
    except (TypeError, RuntimeError, NotImplementedError, AttributeError) as e:
        raise VisionmixError(f'{backbone} cannot be a decoder backbone: building it with features_only failed '
                             f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from None
    return list(features.feature_info.reduction())


def _check_pyramid(backbone: str, levels: list[int]) -> None:
    """The decoders read one map per stride 4, 8, 16 and 32 (smp's depth 5; a stride-2 map may come first)."""
    if levels not in ([4, 8, 16, 32], [2, 4, 8, 16, 32]):
        raise VisionmixError(f'{backbone} cannot be a decoder backbone: its feature maps have reductions {levels}; '
                             f'the decoders need one map at each stride 4, 8, 16 and 32 (a 4-stage model)')


def _build(arch: str, backbone: str, base_kwargs: dict[str, Any], num_classes: int = 1, in_chans: int = 3,
           img_size: Any = None, output_stride: int | None = None, dilation: str | None = None,
           backbone_kwargs: dict[str, Any] | None = None, **decoder_kwargs: Any) -> SegmentationNet:
    import segmentation_models_pytorch as smp

    smp_name, strides, default = DECODERS[arch]
    output_stride = default if output_stride is None else output_stride
    if output_stride not in strides:
        raise VisionmixError(f'{arch} decodes features at output stride {" or ".join(map(str, strides))}, got '
                             f'output_stride={output_stride!r}')
    kwargs = {**base_kwargs, **(backbone_kwargs or {})}
    if img_size is not None and backbone_takes_img_size(backbone):
        kwargs['img_size'] = img_size
    native = model_card(backbone).source == 'visionmix'
    if dilation is not None and native:  # ours take dilation=; a timm ResNet is re-dilated after it is built
        kwargs['dilation'] = dilation
    _check_pyramid(backbone, _levels(backbone, kwargs))
    options: dict[str, Any] = dict(encoder_depth=5)
    if arch == 'deeplabv3plus':
        options['encoder_output_stride'] = output_stride
    net = getattr(smp, smp_name)(encoder_name=f'tu-{backbone}', encoder_weights=None, in_channels=in_chans,
                                 classes=num_classes, **options, **decoder_kwargs, **kwargs)
    if dilation is not None and not native:
        dilate_timm_model(net.encoder.model, output_stride, dilation)
    model = SegmentationNet(net, 32, num_classes)  # every decoder reads the stride-32 level (or its dilated twin)
    card = model_card(backbone)
    model.pretrained_cfg = dict(architecture=f'{arch}:{backbone}', input_size=card.input_size, mean=card.mean,
                                std=card.std, num_classes=num_classes, crop_pct=1.0, interpolation='bilinear')
    return model


def _resolver(arch: str) -> Callable[[str], tuple[ModelCard, Callable[..., nn.Module]]]:
    def resolve(rest: str) -> tuple[ModelCard, Callable[..., nn.Module]]:
        if not rest:
            raise UnknownModelError(f'{arch}:BACKBONE needs a backbone, e.g. {arch}:resnet50 or {arch}:hire_mlp_tiny')
        backbone, base_kwargs = resolve_backbone(rest)
        _check_pyramid(rest, _levels(backbone, base_kwargs))  # a backbone that cannot serve fails here, by name
        builder = functools.partial(_build, arch, backbone, base_kwargs)
        base = model_card(rest)
        card = ModelCard(
            name=f'{arch}:{rest}', family='segmentation', paper=f'segmentation-models-pytorch {DECODERS[arch][0]} '
            f'decoder on {rest} ({base.paper})', arxiv=base.arxiv, code_url='https://github.com/qubvel-org/'
            'segmentation_models.pytorch', code_commit=base.code_commit, params=count_parameters(builder),
            gmacs=None, input_size=base.input_size, mean=base.mean, std=base.std, top1_source='n/a (segmentation)',
            verified='composite: params measured; decoder from smp, backbone as its own card says',
            source='visionmix', curated=False, notes=f'{arch} decoder (smp) on the {rest} backbone; any input size '
            f'(padded to the decoder stride, logits cropped back)')
        return card, builder

    return resolve


for _arch in DECODERS:
    register_composite(Composite(_arch, _resolver(_arch), f'({DECODERS[_arch][0]} decoder on any backbone, e.g. '
                                                          f'{_arch}:hire_mlp_tiny)'))
