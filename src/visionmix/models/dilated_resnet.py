"""HDC rates for the classic ResNets reached through timm (``create_model('resnet50', output_stride=8,
dilation='hdc')``).

timm builds a ResNet with ``output_stride=16 | 8`` with one dilation rate per dilated stage (DeepLab's constant
schedule); :func:`hdc_dilate_resnet` re-dilates each block's 3x3 conv to the Hybrid Dilated Convolution sawtooth of
:mod:`visionmix.layers.stride`, and :func:`dilate_timm_model` is what the registry applies for ``dilation=`` on a timm
model (timm itself takes no such argument).
"""
from __future__ import annotations

import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from ..errors import ConfigError
from ..layers.stride import check_output_stride, plan_stages, set_conv_dilation
from ..registry import register_timm_option

__all__ = ['hdc_dilate_resnet', 'dilate_timm_model']


def _resnet_layers(model: nn.Module) -> list[nn.Sequential]:
    """``layer1``... of a timm ResNet or of its ``features_only`` wrapper; one-line error for anything else."""
    layers = []
    for i in range(1, 5):
        layer = getattr(model, f'layer{i}', None) if isinstance(model, nn.Module) else None
        if layer is None:
            break
        layers.append(layer)
    if not layers or not all(isinstance(b, (BasicBlock, Bottleneck)) for layer in layers for b in layer):
        raise ConfigError(f"dilation='hdc' for a timm model needs a ResNet of timm.models.resnet (resnet*, resnext*, "
                          f"seresnet*, wide_resnet*: BasicBlock / Bottleneck stages layer1-layer4), got "
                          f'{type(model).__name__}')
    return layers


def hdc_dilate_resnet(model: nn.Module, output_stride: int) -> nn.Module:
    """Reset the 3x3 conv dilations of a timm ResNet's dilated stages to the HDC sawtooth, in place.

    ``model`` is a timm ResNet (or its ``features_only`` wrapper) built with ``output_stride=output_stride``, where
    timm set constant rates (``layer4``: 1, 2, 2 at 16; ``layer3``: 1, 2, ..., ``layer4``: 2, 4, 4 at 8). Block ``j``
    of a dilated stage gets rate ``r_j`` of :func:`hdc_stage_rates` on its 3x3 convs (a Bottleneck's ``conv2``, both
    convs of a BasicBlock), with the padding that keeps the map size: resnet50 at output stride 8 gets ``layer3``
    1, 2, 5, 1, 2, 5 and ``layer4`` 1, 2, 5. Output shapes equal timm's constant-rate model; no parameter changes.

    Args:
        model: The ResNet.
        output_stride: The output stride it was built with (8, 16; 32 returns it unchanged).

    Returns:
        ``model``, re-dilated.

    Raises:
        ConfigError: Not a timm ResNet, a bad ``output_stride``, or a model built with another output stride.
    """
    output_stride, _ = check_output_stride(output_stride)
    layers = _resnet_layers(model)
    plans = plan_stages((1, 2, 2, 2)[:len(layers)], [len(layer) for layer in layers], output_stride, 'hdc', 4)
    if any(layer[0].stride != plan.stride for layer, plan in zip(layers, plans)):
        built = 4
        for layer in layers[1:]:
            built *= layer[0].stride
        raise ConfigError(f'the ResNet was built with output_stride={built}: build it with '
                          f'timm.create_model(name, output_stride={output_stride}) before hdc_dilate_resnet')
    for layer, plan in zip(layers, plans):
        if not plan.dilated:
            continue
        for block, rate in zip(layer, plan.rates):
            convs = (block.conv1, block.conv2) if isinstance(block, BasicBlock) else (block.conv2,)
            for conv in convs:
                set_conv_dilation(conv, rate)
    return model


def dilate_timm_model(model: nn.Module, output_stride: int | None = None, dilation: str | None = None) -> nn.Module:
    """Apply ``dilation=`` to a model timm built with ``output_stride=output_stride`` (timm takes no ``dilation``).

    ``'constant'`` (or None) is what timm already did: the model is returned as it is. ``'hdc'`` re-dilates a timm
    ResNet with :func:`hdc_dilate_resnet`; any other model raises a one-line :class:`ConfigError`.
    """
    output_stride, dilation = check_output_stride(output_stride, dilation)
    return model if dilation == 'constant' else hdc_dilate_resnet(model, output_stride)


register_timm_option('dilation', lambda model, value, kwargs: dilate_timm_model(model, kwargs.get('output_stride'),
                                                                                 value))
