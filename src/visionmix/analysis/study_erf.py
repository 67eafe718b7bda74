"""Effective receptive fields of a comparison's models, drawn side by side into its report.

``visionmix compare --task segmentation`` adds this section: for a decoder model (``fpn:BACKBONE``) the field is the
backbone's (its last feature map, what the decoder sees at the coarsest level), for any other model its own last
feature map; every model at random initialisation, at the comparison's input size, on the same random inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from ..checkpoint import atomic_write
from ..errors import VisionmixError, first_line
from ..models.decoders import DECODERS, resolve_backbone
from ..registry import create_model, takes_img_size
from ..sizes import check_size, hw
from .rf import erf_report, plot_erfs, to_json

__all__ = ['field_model', 'add_erf_section']

ERF_FILE = 'erf.png'


def field_model(model: str, kwargs: dict[str, Any], img_size: Any) -> nn.Module:
    """The network whose field a comparison entry shows: a decoder model's backbone, else the model itself."""
    prefix, sep, rest = model.partition(':')
    if sep and prefix in DECODERS:
        name, base = resolve_backbone(rest)
        options = {**base, **kwargs.get('backbone_kwargs', {})}
    else:
        name, options = model, dict(kwargs)
    if takes_img_size(name):
        options.setdefault('img_size', img_size)
    built = create_model(name, **options)
    built.pretrained_cfg = dict(getattr(built, 'pretrained_cfg', None) or {}, architecture=name)
    return built


def add_erf_section(results: dict[str, Any], out: Path, samples: int = 8) -> list[str]:
    """Measure every model's ERF, draw ``erf.png`` and append a section to ``report.md``; returns notes for the
    models whose field could not be measured (e.g. no spatial feature map)."""
    size = hw(check_size(results['img_size']))
    models, labels, notes = [], [], []
    for row in results['models']:
        try:
            models.append(field_model(row['model'], row['kwargs'], size))
            labels.append(row['label'])
        except VisionmixError as e:
            notes.append(f'{row["label"]}: no receptive field ({first_line(e)})')
    if not models:
        return notes
    reports = erf_report(models, img_size=size, samples=samples)
    for report, label in zip(reports, labels):
        report['name'] = label
    plot_erfs(reports, out / ERF_FILE, title=f'effective receptive fields at {size[0]}x{size[1]}, random init, '
                                             f'{samples} samples')
    atomic_write(out / 'erf.json', lambda tmp: Path(tmp).write_text(to_json(reports)))
    lines = ['', '## Effective receptive fields', '',
             'Gradient of the centre of each backbone\'s last feature map with respect to the input (Luo et al. '
             '2016), random initialisation: r50 / r90 are the radii (px) holding 50% / 90% of the gradient mass.', '',
             '| model | last map | r50 px | r90 px | share of image |', '|---|---|---:|---:|---:|']
    lines += [f'| {r["name"]} | {"x".join(map(str, r["feature_shape"][-2:]))} | {r["r50"]:.1f} | {r["r90"]:.1f} | '
              f'{100 * r["nonzero_share"]:.0f}% |' for r in reports]
    lines += ['', f'![effective receptive fields]({ERF_FILE})'] + [f'- {n}' for n in notes]
    report_md = out / 'report.md'
    text = report_md.read_text().rstrip('\n') + '\n' + '\n'.join(lines) + '\n'
    atomic_write(report_md, lambda tmp: Path(tmp).write_text(text))
    return notes
