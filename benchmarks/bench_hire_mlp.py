"""visionmix Hire-MLP vs the official implementation on CPU, with identical weights: fidelity, memory and speed.

The official code is not part of visionmix: pass the path of a checkout of github.com/ggjy/Hire-Wave-MLP.pytorch.
Only its ``mlp_based/hire_mlp.py`` is imported (nothing else of it is needed); its ``@register_model`` is kept out of
timm's registry so it cannot clash with ours, and the helper module it imports from an old timm path is served from
today's timm. The official constructor prints one line per block; that output is swallowed.

Results: benchmarks/results/hire_mlp.md (see :mod:`bench_common` for what is measured and how).

Usage:
    python benchmarks/bench_hire_mlp.py /path/to/Hire-Wave-MLP.pytorch [--models hire_mlp_tiny ...] [--batch 8]
        [--threads 2] [--iters 12] [--mode infer|train|both] [--no-memory] [--out FILE.md]
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
import timm.models.registry

import visionmix
from visionmix.models.hire_mlp import checkpoint_filter_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

TARGETS = (1.25, 1.0)  # inference, train step


def load_official(repo: Path) -> types.ModuleType:
    """Import the official classification model file without registering it in timm."""
    path = repo / 'mlp_based' / 'hire_mlp.py'
    if not path.is_file():
        sys.exit(f'{path} not found: pass the root of a Hire-Wave-MLP.pytorch checkout')
    # the file imports a helper module that newer timm versions moved; serve it from its new home
    sys.modules.setdefault('timm.models.layers.helpers', types.SimpleNamespace(to_2tuple=timm.layers.to_2tuple))
    original = timm.models.registry.register_model
    timm.models.registry.register_model = lambda fn: fn
    try:
        spec = importlib.util.spec_from_file_location('official_hire_mlp', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        timm.models.registry.register_model = original
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('official_repo', type=Path, help='checkout of ggjy/Hire-Wave-MLP.pytorch')
    parser.add_argument('--models', nargs='+', default=['hire_mlp_tiny', 'hire_mlp_small'])
    parser.add_argument('--size', type=int, default=224)
    bc.add_common_args(parser, 'hire_mlp.md')
    args = parser.parse_args()

    official = load_official(args.official_repo)
    rows = []
    for name in args.models:
        with contextlib.redirect_stdout(io.StringIO()):  # the official constructor prints per block
            ref = getattr(official, name)()
        rows.append(bc.compare(name, ref, visionmix.create_model(name), checkpoint_filter_fn, args.size, args))
    commit = bc.official_commit(args.official_repo, args.official_commit)
    bc.write_report(bc.markdown('Hire-MLP: visionmix vs the official code on CPU', rows, args,
                                [('ggjy/Hire-Wave-MLP.pytorch', commit)], TARGETS), args)


if __name__ == '__main__':
    main()
