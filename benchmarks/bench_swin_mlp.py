"""visionmix Swin-MLP vs the official implementation on CPU, with identical weights: fidelity, memory and speed.

The official code is not part of visionmix; point this script at a checkout of microsoft/Swin-Transformer (only its
``models/swin_mlp.py`` is imported):

    python benchmarks/bench_swin_mlp.py /path/to/Swin-Transformer [--models swin_mlp_tiny_c24_patch4_window8_256 ...]
        [--batch 8] [--threads 2] [--iters 12] [--mode infer|train|both] [--no-memory] [--out FILE.md]

Results: benchmarks/results/swin_mlp.md (see :mod:`bench_common` for what is measured and how).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import torch.nn as nn

import visionmix
from visionmix.models.swin_mlp import checkpoint_filter_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

TARGETS = (1.25, 1.0)  # inference, train step

# constructor arguments of the official SwinMLP per variant (its configs/swinmlp/*.yaml)
OFFICIAL_ARGS = {
    'swin_mlp_tiny_c24_patch4_window8_256': dict(img_size=256, embed_dim=96, depths=[2, 2, 6, 2],
                                                 num_heads=[4, 8, 16, 32], window_size=8),
    'swin_mlp_tiny_c12_patch4_window8_256': dict(img_size=256, embed_dim=96, depths=[2, 2, 6, 2],
                                                 num_heads=[8, 16, 32, 64], window_size=8),
    'swin_mlp_tiny_c6_patch4_window8_256': dict(img_size=256, embed_dim=96, depths=[2, 2, 6, 2],
                                                num_heads=[16, 32, 64, 128], window_size=8),
    'swin_mlp_base_patch4_window7_224': dict(img_size=224, embed_dim=128, depths=[2, 2, 18, 2],
                                             num_heads=[4, 8, 16, 32], window_size=7),
}


def load_official_class(repo: Path) -> type[nn.Module]:
    path = repo / 'models' / 'swin_mlp.py'
    if not path.is_file():
        raise SystemExit(f'{path} not found: pass the root of a microsoft/Swin-Transformer checkout')
    spec = importlib.util.spec_from_file_location('official_swin_mlp', path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # it imports timm.models.layers, deprecated in timm 1.x
        spec.loader.exec_module(module)
    return module.SwinMLP


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('official_repo', type=Path, help='root of a microsoft/Swin-Transformer checkout')
    parser.add_argument('--models', nargs='+', default=['swin_mlp_tiny_c24_patch4_window8_256'],
                        choices=sorted(OFFICIAL_ARGS))
    bc.add_common_args(parser, 'swin_mlp.md')
    args = parser.parse_args(argv)

    official_cls = load_official_class(args.official_repo)
    rows = []
    for name in args.models:
        official_args = OFFICIAL_ARGS[name]
        # the official constructor defaults to stochastic depth 0.1, ours to 0: the same (none) for both
        official = official_cls(**official_args, drop_path_rate=0.)
        rows.append(bc.compare(name, official, visionmix.create_model(name), checkpoint_filter_fn,
                               official_args['img_size'], args))
    commit = bc.official_commit(args.official_repo, args.official_commit)
    bc.write_report(bc.markdown('Swin-MLP: visionmix vs the official code on CPU', rows, args,
                                [('microsoft/Swin-Transformer', commit)], TARGETS), args)


if __name__ == '__main__':
    main()
