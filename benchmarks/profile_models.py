"""Profile every native visionmix model at its card's input size and write a Markdown table.

Columns: params, GMACs (our counter), the paper's GMACs and the deviation, inference img/s at batch N (median and
IQR), achieved GFLOP/s and its share of this machine's fp32 GEMM peak. Memory is skipped unless asked for (each
measurement starts a fresh process).

Usage:
    python benchmarks/profile_models.py results.md [--pattern '*tiny*'] [--batch-size 8] [--iters 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys

import torch

import visionmix
from visionmix.profile import ProfileResult, profile_models
from visionmix.profile.report import markdown_table


def row(r: ProfileResult) -> dict[str, object]:
    return {
        'model': r.model,
        'input': 'x'.join(map(str, r.input_size)),
        'params (M)': f'{r.params / 1e6:.2f}',
        'card params (M)': '-' if r.card_params is None else f'{r.card_params / 1e6:.2f}',
        'GMACs': f'{r.gmacs:.3f}',
        'paper GMACs': '-' if r.paper_gmacs is None else f'{r.paper_gmacs:.3f}',
        'dev %': '-' if r.macs_deviation_pct is None else f'{r.macs_deviation_pct:+.1f}',
        f'img/s b{r.batch_size}': f'{r.infer_img_s.median:.1f} (IQR {r.infer_img_s.iqr:.1f})',
        'latency ms b1': f'{r.latency_ms.median:.1f} (IQR {r.latency_ms.iqr:.1f})',
        'GFLOP/s': f'{r.infer_gflops:.1f}',
        '% GEMM peak': f'{r.infer_peak_pct:.1f}',
        'fwd peak MB': '-' if r.forward_peak_mb is None else f'{r.forward_peak_mb:.0f}',
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('output', help='Markdown file to write')
    parser.add_argument('--pattern', default=None, help="wildcard over native model names, e.g. '*tiny*'")
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--memory', action='store_true', help='also measure forward peak memory (slow)')
    args = parser.parse_args(argv)

    names = visionmix.list_models(args.pattern, source='visionmix')
    if not names:
        sys.exit(f'no native model matches {args.pattern!r}')
    results = profile_models(names, mode='infer', batch_size=args.batch_size, warmup=args.warmup, iters=args.iters,
                             threads=args.threads, memory=args.memory)
    first = results[0]
    header = [
        '# visionmix native models: profile at the card input size', '',
        f'- machine: {first.cpu}, {first.threads} torch threads, '
        f'torch {torch.__version__}, timm {first.timm_version}',
        f'- fp32 GEMM peak: {first.gemm_peak_gflops:.1f} GFLOP/s (best large matmul, same threads)',
        f'- MACs: {first.macs_counter}; dev % is against the paper figure (card)',
        f'- speed: torch.inference_mode, warm-up {args.warmup}, {args.iters} timed iterations, median (IQR); '
        f'GFLOP/s = 2 x MACs x img/s',
        f'- memory: {first.memory_method if args.memory else "skipped (pass --memory)"}', '', '',
    ]
    text = '\n'.join(header) + markdown_table([row(r) for r in results])
    with open(args.output, 'w') as f:
        f.write(text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
