"""visionmix Mobile-Former and UNeXt vs the official implementations on CPU, with identical weights: outputs and speed.

The official code is not part of visionmix: pass checkouts of github.com/AAboys/MobileFormer and / or
github.com/jeya-maria-jose/UNeXt-pytorch. Their files import helpers that are not in the repositories (Mobile-Former:
``.layers`` of the timm 0.3.4 tree it lived in, and its ``.helpers`` / ``.registry`` copies are stubbed; UNeXt:
``utils``, ``mmcv``, ``matplotlib``); those imports are served from stubs / today's timm, nothing else is changed. The
official Mobile-Former prints its modules on construction; that output is swallowed.

Measured (CPU, 1 thread, batch 8, 12 interleaved pairs, median ratio of visionmix / official images per second,
loaded 2-core machine; full output in benchmarks/results/mobile_former_unext.md): Mobile-Former 1.22x-1.32x faster in
inference and 1.33x-1.47x faster per training step over all seven variants; UNeXt 1.20x / 1.19x, UNeXt-S 1.22x /
1.16x. Outputs equal within 9e-7 relative (random weights and BN statistics).

Usage:
    python benchmarks/bench_mobile_former.py --mobile-former /path/to/MobileFormer --unext /path/to/UNeXt-pytorch \
        [--batch 8] [--iters 10] [--threads 1] [--mode infer|train|both] [--models NAME ...]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import types
from pathlib import Path

import timm.layers
import torch
import torch.nn as nn

import visionmix
from visionmix.models import mobile_former, unext
from visionmix.profile import compare_speed

MOBILE_FORMERS = tuple(f'mobile_former_{s}' for s in ('26m', '52m', '96m', '151m', '214m', '294m', '508m'))


def _exec(name: str, path: Path, package: str | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if package:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_official_mobile_former(repo: Path) -> types.ModuleType:
    """Import the official ``mobile_former.py`` as a package module whose missing siblings are stubs."""
    if not (repo / 'mobile_former.py').is_file():
        sys.exit(f'{repo}/mobile_former.py not found: pass the root of a MobileFormer checkout')
    pkg = types.ModuleType('official_mf')
    pkg.__path__ = [str(repo)]
    sys.modules['official_mf'] = pkg
    sys.modules['official_mf.layers'] = types.SimpleNamespace(DropPath=timm.layers.DropPath)
    sys.modules['official_mf.helpers'] = types.SimpleNamespace(
        build_model_with_cfg=lambda cls, variant, pretrained, default_cfg=None, **kw: cls(**kw),
        default_cfg_for_features=None)
    sys.modules['official_mf.registry'] = types.SimpleNamespace(register_model=lambda fn: fn)
    _exec('official_mf.dna_blocks', repo / 'dna_blocks.py', 'official_mf')
    return _exec('official_mf.mobile_former', repo / 'mobile_former.py', 'official_mf')


def load_official_unext(repo: Path) -> types.ModuleType:
    """Import the official ``archs.py`` with its unused imports (utils, mmcv, matplotlib) stubbed."""
    if not (repo / 'archs.py').is_file():
        sys.exit(f'{repo}/archs.py not found: pass the root of a UNeXt-pytorch checkout')
    for name in ('utils', 'mmcv', 'mmcv.cnn', 'matplotlib', 'matplotlib.pyplot'):
        stub = sys.modules.setdefault(name, types.ModuleType(name))
        parent, _, child = name.rpartition('.')
        if parent:
            setattr(sys.modules[parent], child, stub)
    sys.modules['mmcv.cnn'].ConvModule = None
    sys.modules.setdefault('timm.models.layers', timm.layers)
    return _exec('official_unext_archs', repo / 'archs.py')


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Random weights, norms and BN statistics, so the comparison does not ride on init values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not v.is_floating_point():
                continue
            if k.endswith('running_var'):
                v.copy_(0.5 + torch.rand(v.shape, generator=g))
            elif k.endswith(('norm.weight', 'bn.weight')) or '.1.weight' in k:
                v.copy_(0.5 + torch.rand(v.shape, generator=g))
            else:
                v.copy_(0.1 * torch.randn(v.shape, generator=g))


def compare(name: str, official: nn.Module, ours: nn.Module, filter_fn, img: int, args: argparse.Namespace) -> None:
    randomise(official)
    official.eval()
    ours.load_state_dict(filter_fn(official.state_dict(), ours), strict=True)
    ours.eval()
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = official(x), ours(x)
    diff = (ref - out).abs().max().item() / ref.abs().max().item()
    result = compare_speed(ours, official, img_size=img, batch_size=args.batch, threads=args.threads,
                           iters=args.iters, mode=args.mode, names=(f'visionmix {name}', f'official {name}'))
    print(f'{name:18s} {img:4d}  max rel diff {diff:.1e}')
    for mode, pairs in (('inference', result.infer), ('train step', result.train)):
        if pairs is not None:
            r = pairs.ratio
            print(f'    {mode:10s} speed visionmix / official: {r.median:.2f}x (IQR {r.q1:.2f}-{r.q3:.2f}; '
                  f'{pairs.a_img_s.median:.1f} vs {pairs.b_img_s.median:.1f} img/s)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mobile-former', type=Path, help='root of a github.com/AAboys/MobileFormer checkout')
    parser.add_argument('--unext', type=Path, help='root of a github.com/jeya-maria-jose/UNeXt-pytorch checkout')
    parser.add_argument('--models', nargs='*', default=list(MOBILE_FORMERS))
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--mode', choices=('infer', 'train', 'both'), default='both',
                        help='time inference, a training step (forward, loss, backward, AdamW step), or both')
    args = parser.parse_args()
    if args.mobile_former:
        off = load_official_mobile_former(args.mobile_former)
        for name in args.models:
            with contextlib.redirect_stdout(io.StringIO()):  # the official model prints itself
                official = getattr(off, name)()
            compare(name, official, visionmix.create_model(name), mobile_former.checkpoint_filter_fn, 224, args)
    if args.unext:
        off = load_official_unext(args.unext)
        for name, cls in (('unext', off.UNext), ('unext_s', off.UNext_S)):
            compare(name, cls(num_classes=1), visionmix.create_model(name), unext.checkpoint_filter_fn, 256, args)


if __name__ == '__main__':
    main()
