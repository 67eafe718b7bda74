"""CPU inference speed of visionmix's SPACH against the official implementation, with the same weights.

The official code is not part of visionmix; point this script at a checkout of microsoft/SPACH (its models need
``einops``, which visionmix does not depend on: ``pip install einops`` or put it on PYTHONPATH):

    python benchmarks/bench_spach.py /path/to/SPACH [--model spach_ms_xxs_patch4_224_mlp ...]

For each model it builds both implementations, copies random weights from the official one into ours through
``checkpoint_filter_fn``, checks that the logits agree and prints the median time per batch (the two timed
alternately) and the ratio.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import visionmix
from visionmix.models.spach import HYBRID_MS_S_ARCH, checkpoint_filter_fn

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
DEFAULT_MODELS = ['spach_xxs_patch16_224_mlp', 'spach_ms_xxs_patch4_224_conv', 'spach_ms_xxs_patch4_224_attn',
                  'spach_ms_xxs_patch4_224_mlp']


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


@torch.inference_mode()
def time_pair(a: nn.Module, b: nn.Module, x: torch.Tensor, warmup: int, iters: int) -> tuple[float, float]:
    """Median seconds per forward pass of each model, timed alternately so load changes hit both alike."""
    for _ in range(warmup):
        a(x)
        b(x)
    times_a, times_b = [], []
    for _ in range(iters):
        for model, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('official_repo', type=Path, help='root of a microsoft/SPACH checkout')
    parser.add_argument('--model', nargs='+', default=DEFAULT_MODELS, choices=sorted(OFFICIAL_ARGS))
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--iters', type=int, default=8)
    args = parser.parse_args(argv)

    official_pkg = load_official(args.official_repo)
    torch.set_num_threads(args.threads)
    print(f'fp32, batch {args.batch_size}, 224x224, {args.threads} threads, torch {torch.__version__}')
    failed = False
    for name in args.model:
        torch.manual_seed(0)
        cls, kwargs = OFFICIAL_ARGS[name]
        official = getattr(official_pkg, cls)(img_size=224, patch_size=16 if cls == 'Spach' else 4, **kwargs).eval()
        with torch.no_grad():  # the official init zeroes the head: random non-trivial weights everywhere instead
            for pname, p in official.named_parameters():
                p.normal_(1.0 if 'norm' in pname and pname.endswith('weight') else 0.0, 0.05)
        ours = visionmix.create_model(name).eval()
        ours.load_state_dict(checkpoint_filter_fn(official.state_dict(), ours), strict=True)
        x = torch.randn(args.batch_size, 3, 224, 224)
        with torch.inference_mode():
            diff = (official(x) - ours(x)).abs().max().item()
        if diff > 1e-4:
            print(f'{name}: outputs differ (max abs diff {diff:.3g}): not timing')
            failed = True
            continue
        t_official, t_ours = time_pair(official, ours, x, args.warmup, args.iters)
        print(f'{name:36s} max|diff| {diff:.1e}  official {t_official * 1e3:7.1f} ms  visionmix {t_ours * 1e3:7.1f} ms'
              f'  ratio visionmix/official {t_ours / t_official:.3f}', flush=True)
    if failed:
        sys.exit(1)


if __name__ == '__main__':
    main()
