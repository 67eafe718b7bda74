"""visionmix SPACH vs the official implementation on CPU, with identical weights: fidelity, memory and speed.

The official code is not part of visionmix; point this script at a checkout of microsoft/SPACH (its models need
``einops``, which visionmix does not depend on: ``pip install einops`` or put it on PYTHONPATH):

    python benchmarks/bench_spach.py /path/to/SPACH [--models spach_ms_xxs_patch4_224_mlp ...] [--batch 8]
        [--threads 2] [--iters 12] [--mode infer|train|both] [--no-memory] [--out FILE.md]

Results: benchmarks/results/spach.md (see :mod:`bench_common` for what is measured and how).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import types
import warnings
from pathlib import Path

import timm.models.registry

import visionmix
from visionmix.models.spach import HYBRID_MS_S_ARCH, VARIANTS, checkpoint_filter_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

TARGETS = (1.1, 1.0)  # inference, train step

# (official class, constructor arguments) per variant, from the official models/registry.py; the official repo
# has no constructor for S+, which is Hybrid-MS-S with its 'conv4' stem
OFFICIAL_ARGS = {
    'spach_xxs_patch16_224_conv': ('Spach', dict(hidden_dim=384, num_heads=12, channel_ratio=2.,
                                                 net_arch=[('pass', 12)])),
    'spach_xxs_patch16_224_attn': ('Spach', dict(hidden_dim=192, num_heads=6, channel_ratio=2.,
                                                 net_arch=[('attn', 12)])),
    'spach_xxs_patch16_224_mlp': ('Spach', dict(hidden_dim=384, num_heads=12, channel_ratio=2.,
                                                net_arch=[('mlp', 12)])),
    'spach_ms_xxs_patch4_224_conv': ('SpachMS', dict(hidden_dim=64, num_heads=2, channel_ratio=2., net_arch=[
        [('pass', 2)], [('pass', 2)], [('pass', 6)], [('pass', 2)]])),
    'spach_ms_xxs_patch4_224_attn': ('SpachMS', dict(hidden_dim=32, num_heads=1, channel_ratio=2., net_arch=[
        [('pass', 2)], [('attn', 2)], [('attn', 6)], [('attn', 2)]])),
    'spach_ms_xxs_patch4_224_mlp': ('SpachMS', dict(hidden_dim=64, num_heads=2, channel_ratio=2., net_arch=[
        [('pass', 2)], [('mlp', 2)], [('mlp', 6)], [('mlp', 2)]])),
    'spach_ms_s_patch4_224_hybrid': ('SpachMS', dict(hidden_dim=128, num_heads=4, channel_ratio=3.,
                                                     net_arch=HYBRID_MS_S_ARCH)),
    'spach_ms_s_plus_patch4_224_hybrid': ('SpachMS', dict(hidden_dim=128, num_heads=4, channel_ratio=3.,
                                                          net_arch=HYBRID_MS_S_ARCH, stem_type='conv4')),
}
DEFAULT_MODELS = ['spach_xxs_patch16_224_conv', 'spach_xxs_patch16_224_attn', 'spach_xxs_patch16_224_mlp',
                  'spach_ms_xxs_patch4_224_conv', 'spach_ms_xxs_patch4_224_attn', 'spach_ms_xxs_patch4_224_mlp',
                  'spach_ms_s_patch4_224_hybrid']


def load_official(repo: Path) -> object:
    if not (repo / 'models' / 'spach' / 'spach_ms.py').is_file():
        raise SystemExit(f'{repo}/models/spach not found: pass the root of a microsoft/SPACH checkout')
    sys.path.insert(0, str(repo / 'models'))  # the spach package alone, not the repo's timm registrations
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # it imports timm.models.layers, deprecated in timm 1.x
        try:
            return importlib.import_module('spach')
        except ModuleNotFoundError as e:
            raise SystemExit(f'the official code needs {e.name}: pip install {e.name}') from None


def load_official_registry(repo: Path) -> types.ModuleType:
    """The official ``models/registry.py`` (one constructor per variant), kept out of timm's registry."""
    pkg = types.ModuleType('official_spach_models')
    pkg.__path__ = [str(repo / 'models')]  # a bare package: its __init__ would register the models in timm
    sys.modules['official_spach_models'] = pkg
    original = timm.models.registry.register_model
    timm.models.registry.register_model = lambda fn: fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return importlib.import_module('official_spach_models.registry')
    finally:
        timm.models.registry.register_model = original


def build_official(official_pkg: object, name: str, repo: Path) -> object:
    """The official model of variant ``name``: from the constructor arguments above, else the official registry's
    function of that name (every variant but S+, which the official code cannot build)."""
    if name not in OFFICIAL_ARGS:
        return getattr(load_official_registry(repo), name)()
    cls, kwargs = OFFICIAL_ARGS[name]
    return getattr(official_pkg, cls)(img_size=224, patch_size=16 if cls == 'Spach' else 4, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('official_repo', type=Path, help='root of a microsoft/SPACH checkout')
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS,
                        choices=sorted(set(OFFICIAL_ARGS) | set(VARIANTS) - {'spach', 'spach_ms'}))
    bc.add_common_args(parser, 'spach.md')
    args = parser.parse_args(argv)

    official_pkg = load_official(args.official_repo)
    rows = [bc.compare(name, build_official(official_pkg, name, args.official_repo), visionmix.create_model(name),
                       checkpoint_filter_fn, 224, args) for name in args.models]
    commit = bc.official_commit(args.official_repo, args.official_commit)
    bc.write_report(bc.markdown('SPACH: visionmix vs the official code on CPU', rows, args,
                                [('microsoft/SPACH', commit)], TARGETS), args)


if __name__ == '__main__':
    main()
