"""Inference speed of visionmix Hire-MLP vs the official implementation, on CPU, with identical weights.

The official code is not part of visionmix: pass the path of a checkout of github.com/ggjy/Hire-Wave-MLP.pytorch.
Only its ``mlp_based/hire_mlp.py`` is imported (nothing else of it is needed); its ``@register_model`` is kept out of
timm's registry so it cannot clash with ours.

Usage:
    python benchmarks/bench_hire_mlp.py /path/to/Hire-Wave-MLP.pytorch [--models hire_mlp_tiny ...] [--batch 8]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import statistics
import sys
import time
import types
from pathlib import Path

import timm.layers
import timm.models.registry
import torch
import torch.nn as nn

import visionmix
from visionmix.models.hire_mlp import checkpoint_filter_fn


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


def random_state(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights and BN statistics, so the comparison does not ride on init values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v
        elif k.endswith('running_var'):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        else:
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
    return out


@torch.inference_mode()
def time_pairs(a: nn.Module, b: nn.Module, x: torch.Tensor, warmup: int, runs: int) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately, so load from other processes on a shared machine hits both alike."""
    for _ in range(warmup):
        a(x)
        b(x)
    t_a, t_b = [], []
    for i in range(runs):
        for model, times in ((a, t_a), (b, t_b)) if i % 2 == 0 else ((b, t_b), (a, t_a)):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return t_a, t_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('official_repo', type=Path, help='checkout of ggjy/Hire-Wave-MLP.pytorch')
    parser.add_argument('--models', nargs='+', default=['hire_mlp_tiny', 'hire_mlp_small'])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--runs', type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    official = load_official(args.official_repo)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    print(f'torch {torch.__version__}, {args.threads} threads, fp32, batch {args.batch}, {args.size}x{args.size}, '
          f'{args.runs} alternating runs each')
    for name in args.models:
        with contextlib.redirect_stdout(io.StringIO()):  # the official constructor prints per block
            ref = getattr(official, name)()
        state = random_state(ref)
        ref.load_state_dict(state)
        ours = visionmix.create_model(name)
        ours.load_state_dict(checkpoint_filter_fn(state, ours), strict=True)
        ref.eval()
        ours.eval()
        with torch.inference_mode():
            diff = (ref(x) - ours(x)).abs().max().item()
        if diff > 1e-4:
            sys.exit(f'{name}: outputs differ (max abs diff {diff:.3g}); timing would be meaningless')
        t_ref, t_ours = time_pairs(ref, ours, x, args.warmup, args.runs)
        ratio = statistics.median(o / r for o, r in zip(t_ours, t_ref))
        print(f'{name}: max abs diff {diff:.2e} | official {1e3 * statistics.median(t_ref):.1f} ms | '
              f'visionmix {1e3 * statistics.median(t_ours):.1f} ms | '
              f'visionmix/official time ratio {ratio:.3f} (median over pairs)')


if __name__ == '__main__':
    main()
