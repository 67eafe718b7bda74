"""Classic architectures reached through the visionmix registry, not rewritten.

timm and torchvision already implement these well; visionmix only gives them cards (facts and what we measured)
so that ``visionmix models``, ``profile`` and ``compare`` treat them like our own families. ``params`` and
``gmacs`` were measured with :mod:`visionmix.profile` on timm 1.0.31 / torchvision 0.29.1 and are re-checked by
``tests/models/test_classic.py``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch.nn as nn
import torchvision

from ..errors import UnknownModelError
from ..registry import Composite, ModelCard, count_parameters, register_composite, register_passthrough

TIMM_URL = 'https://github.com/huggingface/pytorch-image-models'
TV_URL = 'https://github.com/pytorch/vision'
_HALF = (0.5, 0.5, 0.5)
_VERIFIED = 'params exact, GMACs re-measured (test_classic.py)'


def _card(name: str, family: str, paper: str, arxiv: str | None, params: int, gmacs: float,
          top1: float | None, top1_source: str, license: str, size: int = 224, half_norm: bool = False,
          source: str = 'timm', notes: str = '') -> ModelCard:
    norm = dict(mean=_HALF, std=_HALF) if half_norm else {}
    return ModelCard(
        name=name, family=family, paper=paper, arxiv=arxiv, code_url=TIMM_URL if source == 'timm' else TV_URL,
        code_commit='timm 1.0.31' if source == 'timm' else 'torchvision 0.29.1', params=params, gmacs=gmacs,
        input_size=(3, size, size), top1=top1, top1_source=top1_source, license=license, verified=_VERIFIED,
        source=source, notes=notes, **norm)


_VIT = 'An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale'
_MIXER = 'MLP-Mixer: An all-MLP Architecture for Vision'
_INCEPTION4 = 'Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning'

CLASSIC_CARDS = [
    _card('vit_small_patch16_224', 'transformer', _VIT, '2010.11929', 22_050_664, 4.599, 81.4,
          'AugReg (arXiv 2106.10270), ImageNet-21k -> 1k, the weights timm loads', 'apache-2.0', half_norm=True),
    _card('vit_base_patch16_224', 'transformer', _VIT, '2010.11929', 86_567_656, 17.564, 85.1,
          'timm augreg2_in21k_ft_in1k weights, the ones timm loads', 'apache-2.0', half_norm=True),
    _card('swin_tiny_patch4_window7_224', 'transformer',
          'Swin Transformer: Hierarchical Vision Transformer using Shifted Windows', '2103.14030', 28_288_354, 4.491,
          81.2, 'Swin paper, Table 1(a)', 'mit'),
    _card('mixer_s16_224', 'mlp', _MIXER, '2105.01601', 18_528_264, 3.777, None,
          'no ImageNet-1k result published for S/16; timm has no weights', 'apache-2.0', half_norm=True),
    _card('mixer_b16_224', 'mlp', _MIXER, '2105.01601', 59_880_472, 12.602, 76.44,
          'Mixer paper, Table 2, ImageNet-21k pre-training', 'apache-2.0', half_norm=True),
    _card('mixer_l16_224', 'mlp', _MIXER, '2105.01601', 208_196_168, 44.548, 71.76,
          'Mixer paper, Table 2, ImageNet-21k pre-training', 'apache-2.0', half_norm=True),
    _card('vgg16_bn', 'conv', 'Very Deep Convolutional Networks for Large-Scale Image Recognition', '1409.1556',
          138_365_992, 15.470, 73.36, 'torchvision weights (tv_in1k), the ones timm loads', 'bsd-3-clause'),
    _card('googlenet', 'conv', 'Going Deeper with Convolutions', '1409.4842', 6_624_904, 1.498, 69.78,
          'torchvision IMAGENET1K_V1 weights', 'bsd-3-clause', source='torchvision',
          notes='torchvision model: no timm contract (forward_features, features_only); aux heads off by default'),
    _card('inception_v3', 'conv', 'Rethinking the Inception Architecture for Computer Vision', '1512.00567',
          23_834_568, 5.713, 77.29, 'torchvision weights (tv_in1k), the ones timm loads', 'apache-2.0', size=299,
          half_norm=True),
    _card('inception_v4', 'conv', _INCEPTION4, '1602.07261', 42_679_816, 12.254, 80.0,
          'Inception-v4 paper, Table 2, single crop', 'apache-2.0', size=299, half_norm=True),
    _card('inception_resnet_v2', 'conv', _INCEPTION4, '1602.07261', 55_843_464, 13.156, 80.1,
          'Inception-v4 paper, Table 2, single crop', 'apache-2.0', size=299, half_norm=True),
    _card('resnet50', 'conv', 'Deep Residual Learning for Image Recognition', '1512.03385', 25_557_032, 4.089, 80.4,
          'ResNet strikes back (arXiv 2110.00476) A1 recipe, the weights timm loads', 'apache-2.0'),
    _card('densenet121', 'conv', 'Densely Connected Convolutional Networks', '1608.06993', 7_978_856, 2.834, 74.98,
          'DenseNet paper, Table 3, single crop', 'apache-2.0'),
    _card('mobilenetv1_100', 'conv',
          'MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications', '1704.04861',
          4_231_976, 0.569, 70.6, 'MobileNet paper, Table 8', 'apache-2.0', half_norm=True),
    _card('mobilenetv2_100', 'conv', 'MobileNetV2: Inverted Residuals and Linear Bottlenecks', '1801.04381',
          3_504_872, 0.301, 72.0, 'MobileNetV2 paper, Table 4', 'apache-2.0'),
    _card('efficientnet_b0', 'conv', 'EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks',
          '1905.11946', 5_288_548, 0.386, 77.1, 'EfficientNet paper, Table 2', 'apache-2.0'),
    _card('regnetx_040', 'conv', 'Designing Network Design Spaces', '2003.13678', 22_118_248, 3.964, None,
          'not recorded', 'mit'),
    _card('regnety_040', 'conv', 'Designing Network Design Spaces', '2003.13678', 20_646_656, 3.973, None,
          'not recorded', 'apache-2.0'),
]


def googlenet(num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.2,
              transform_input: bool = False) -> nn.Module:
    """torchvision's GoogLeNet (Inception v1), randomly initialised, auxiliary classifiers off by default."""
    return torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=aux_logits,
                                        dropout=dropout, transform_input=transform_input, init_weights=True)


_TORCHVISION_BUILDERS = {'googlenet': googlenet}

for _card_ in CLASSIC_CARDS:
    register_passthrough(_card_, builder=_TORCHVISION_BUILDERS.get(_card_.name))


# --------------------------------------------------------------------------------- tv:NAME, any torchvision classifier

@functools.cache
def torchvision_names() -> list[str]:
    """torchvision's classification models (``torchvision.models.list_models(module=torchvision.models)``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


_TV_MODULE_FAMILIES = {'vision_transformer': 'transformer', 'swin_transformer': 'transformer', 'maxvit': 'hybrid'}


def _tv_family(name: str) -> str:
    """The family from the torchvision module that defines the model (every other one is a CNN)."""
    module = torchvision.models.get_model_builder(name).__module__.rsplit('.', 1)[-1]
    return _TV_MODULE_FAMILIES.get(module, 'conv')


def _tv_builder(name: str) -> Callable[..., nn.Module]:
    if name in _TORCHVISION_BUILDERS:  # our defaults (aux heads off) for the curated ones
        return _TORCHVISION_BUILDERS[name]

    def build(**kwargs: Any) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _resolve_tv(name: str) -> tuple[ModelCard, Callable[..., nn.Module]]:
    if name not in torchvision_names():
        import difflib

        close = difflib.get_close_matches(name, torchvision_names(), n=5, cutoff=0.5)
        hint = f' Did you mean: {", ".join("tv:" + c for c in close)}?' if close else ''
        raise UnknownModelError(f'torchvision has no classification model {name!r}.{hint}')
    builder = _tv_builder(name)
    card = ModelCard(
        name=f'tv:{name}', family=_tv_family(name), paper='see the torchvision documentation', arxiv=None,
        code_url=TV_URL, code_commit=f'torchvision {torchvision.__version__}', params=count_parameters(builder),
        gmacs=None, top1_source='not recorded', license='bsd-3-clause', source='torchvision', curated=False,
        verified='generic card: params measured, nothing else checked by visionmix',
        notes='torchvision model: no timm contract (forward_features, features_only); randomly initialised',
        input_size=(3, 299, 299) if name == 'inception_v3' else (3, 224, 224))
    return card, builder


register_composite(Composite('tv', _resolve_tv, '(any torchvision classifier, e.g. tv:resnet18)',
                             names=torchvision_names, source='torchvision'))
