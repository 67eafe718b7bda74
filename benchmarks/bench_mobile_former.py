"""visionmix Mobile-Former and UNeXt vs the official implementations on CPU, with identical weights: fidelity, memory
and speed.

The official code is not part of visionmix: pass checkouts of github.com/AAboys/MobileFormer and / or
github.com/jeya-maria-jose/UNeXt-pytorch. Their files import helpers that are not in the repositories (Mobile-Former:
``.layers`` of the timm 0.3.4 tree it lived in, and its ``.helpers`` / ``.registry`` copies are stubbed; UNeXt:
``utils``, ``mmcv``, ``matplotlib``); those imports are served from stubs / today's timm, nothing else is changed. The
official Mobile-Former prints its modules on construction; that output is swallowed.

Results: benchmarks/results/mobile_former.md and unext.md (see :mod:`bench_common` for what is measured and how).

Usage:
    python benchmarks/bench_mobile_former.py --mobile-former /path/to/MobileFormer --unext /path/to/UNeXt-pytorch \
        [--models NAME ...] [--batch 8] [--threads 2] [--iters 12] [--mode infer|train|both] [--no-memory]
        [--out FILE.md] [--unext-out FILE.md]
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

import visionmix
from visionmix.models import mobile_former, unext

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

TARGETS = (1.25, 1.0)  # inference, train step

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mobile-former', type=Path, help='root of a github.com/AAboys/MobileFormer checkout')
    parser.add_argument('--unext', type=Path, help='root of a github.com/jeya-maria-jose/UNeXt-pytorch checkout')
    parser.add_argument('--models', nargs='*', default=list(MOBILE_FORMERS))
    parser.add_argument('--unext-models', nargs='*', default=['unext', 'unext_s'], choices=['unext', 'unext_s'])
    parser.add_argument('--unext-out', type=Path, default=bc.RESULTS / 'unext.md', help='UNeXt table ("-": none)')
    bc.add_common_args(parser, 'mobile_former.md')
    args = parser.parse_args()
    if args.mobile_former:
        off = load_official_mobile_former(args.mobile_former)
        rows = []
        for name in args.models:
            with contextlib.redirect_stdout(io.StringIO()):  # the official model prints itself
                official = getattr(off, name)()
            rows.append(bc.compare(name, official, visionmix.create_model(name), mobile_former.checkpoint_filter_fn,
                                   224, args))
        commit = bc.official_commit(args.mobile_former, args.official_commit)
        bc.write_report(bc.markdown('Mobile-Former: visionmix vs the official code on CPU', rows, args,
                                    [('AAboys/MobileFormer', commit)], TARGETS), args)
    if args.unext:
        off = load_official_unext(args.unext)
        classes = {'unext': off.UNext, 'unext_s': off.UNext_S}
        rows = [bc.compare(name, classes[name](num_classes=1), visionmix.create_model(name), unext.checkpoint_filter_fn,
                           256, args) for name in args.unext_models]
        commit = bc.official_commit(args.unext, args.official_commit)
        args.out = args.unext_out
        bc.write_report(bc.markdown('UNeXt: visionmix vs the official code on CPU', rows, args,
                                    [('jeya-maria-jose/UNeXt-pytorch', commit)], TARGETS), args)


if __name__ == '__main__':
    main()
