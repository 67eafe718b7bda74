"""Named models with fixed builder arguments: the default study's small models, usable wherever a model name is.

``visionmix train --model SPACH-Conv`` builds what ``visionmix compare`` compares under that label. Names are looked
up case-insensitively. Every preset is sized for small inputs (32-64 px): three SPACH stages (patch 4, widths 24 / 48
/ 96, one block each), a one-bottleneck-per-stage ResNet, and the smallest Mobile-Former as published.
"""
from __future__ import annotations

from typing import Any

from ..registry import register_preset

__all__ = ['PRESETS']


def _spach(*stages: Any) -> dict[str, Any]:
    """A 3-stage SPACH-MS: patch 4, widths 24 / 48 / 96, one block per stage."""
    return dict(net_arch=[list(s) for s in stages], embed_dim=24, num_heads=2)


# name -> (model, kwargs, what mixes space, family)
PRESETS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    'SPACH-Conv': ('spach_ms', _spach(('pass', 1), ('pass', 1), ('pass', 1)), 'conv', 'conv'),
    'SPACH-Attn': ('spach_ms', _spach(('attn', 1), ('attn', 1), ('attn', 1)), 'attention', 'transformer'),
    'SPACH-MLP': ('spach_ms', _spach(('mlp', 1), ('mlp', 1), ('mlp', 1)), 'token MLP', 'mlp'),
    'SPACH-Hybrid': ('spach_ms', _spach(('pass', 1), ('pass', 1), ('attn', 1)), 'conv + attention', 'hybrid'),
    'SPACH-Hire': ('spach_ms', _spach(('hire', 1), ('hire', 1), ('hire', 1)), 'Hire-MLP', 'mlp'),
    'SPACH-WindowMLP': ('spach_ms', _spach(('window_mlp', 1, {'window_size': 4}), ('window_mlp', 1, {'window_size': 4}),
                                           ('window_mlp', 1, {'window_size': 2})), 'window MLP', 'mlp'),
    'SPACH-Shift': ('spach_ms', _spach(('shift', 1), ('shift', 1), ('shift', 1)), 'axial shift', 'mlp'),
    # timm's ResNet-50 code at 1 bottleneck per stage, widths 16..128, output stride 8 (32x32 -> 4x4 features;
    # at stride 32 the features are 1x1 and it reaches only ~82% on digits in the compare budget)
    'ResNet-tiny': ('resnet50', dict(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128], stem_width=16,
                                     output_stride=8), 'conv (classic CNN)', 'conv'),
    # the smallest official Mobile-Former as is: ~0.5 MMACs at 32x32
    'Mobile-Former-26M': ('mobile_former_26m', {}, 'Mobile-Former bridge', 'hybrid'),
}

for _name, (_model, _kwargs, _spatial, _family) in PRESETS.items():
    register_preset(_name, _model, _kwargs, description=_spatial, family=_family)
