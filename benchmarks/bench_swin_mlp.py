"""CPU inference speed of visionmix's Swin-MLP against the official implementation, with the same weights.

The official code is not part of visionmix; point this script at a checkout of microsoft/Swin-Transformer:

    python benchmarks/bench_swin_mlp.py /path/to/Swin-Transformer [--model swin_mlp_tiny_c24_patch4_window8_256]

It builds both models, copies random weights from the official one into ours through ``checkpoint_filter_fn``,
checks that the outputs agree and prints the median time per batch of each and their ratio.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import visionmix
from visionmix.models.swin_mlp import checkpoint_filter_fn

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


@torch.inference_mode()
def time_models(models: list[nn.Module], x: torch.Tensor, warmup: int, iters: int) -> list[float]:
    """Median seconds per forward pass of each model, runs interleaved so that load drift hits all alike."""
    for _ in range(warmup):
        for model in models:
            model(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(iters):
        for model, t in zip(models, times):
            start = time.perf_counter()
            model(x)
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('official_repo', type=Path, help='root of a microsoft/Swin-Transformer checkout')
    parser.add_argument('--model', default='swin_mlp_tiny_c24_patch4_window8_256', choices=sorted(OFFICIAL_ARGS))
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=10)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    official_args = OFFICIAL_ARGS[args.model]
    official = load_official_class(args.official_repo)(**official_args).eval()
    with torch.no_grad():  # random non-trivial weights everywhere, norms and biases included
        for name, p in official.named_parameters():
            p.normal_(1.0 if 'norm' in name and name.endswith('weight') else 0.0, 0.05)
    ours = visionmix.create_model(args.model).eval()
    ours.load_state_dict(checkpoint_filter_fn(official.state_dict(), ours), strict=True)

    size = official_args['img_size']
    x = torch.randn(args.batch_size, 3, size, size)
    with torch.inference_mode():
        diff = (official(x) - ours(x)).abs().max().item()
    print(f'{args.model} fp32, batch {args.batch_size}, {size}x{size}, {args.threads} threads, '
          f'torch {torch.__version__}')
    print(f'max abs diff of logits: {diff:.3g}')
    if diff > 1e-4:
        sys.exit('outputs differ: not timing')

    t_official, t_ours = time_models([official, ours], x, args.warmup, args.iters)
    print(f'official : {t_official * 1e3:8.1f} ms/batch  {args.batch_size / t_official:7.1f} img/s')
    print(f'visionmix: {t_ours * 1e3:8.1f} ms/batch  {args.batch_size / t_ours:7.1f} img/s')
    print(f'time ratio visionmix / official: {t_ours / t_official:.3f}')


if __name__ == '__main__':
    main()
