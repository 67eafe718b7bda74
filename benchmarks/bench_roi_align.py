"""Mask R-CNN training step with visionmix's RoIAlign (forward and gradient) vs torchvision's, on the CPU.

Two copies of one ``maskrcnn:BACKBONE`` model (same weights): one pools with
:class:`visionmix.layers.roi_align.FastMultiScaleRoIAlign` (the default), the other with torchvision's
:class:`~torchvision.ops.MultiScaleRoIAlign`. Each step (forward with losses, backward, AdamW step) runs on both with
the same ``shapes-inst`` batch, interleaved A B A B in one process; the report gives the median of the per-pair time
ratios (above 1: ours is faster) and checks first that both give the same gradients.

    python benchmarks/bench_roi_align.py --steps 40 --threads 2 --out benchmarks/results/roi_align.md
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.ops import MultiScaleRoIAlign

import visionmix
from visionmix.data.instance_sets import InstanceDataset, InstanceTransform, collate_instances
from visionmix.data.instances import SHAPE_CLASSES, shapes_inst_splits
from visionmix.layers.roi_align import FastMultiScaleRoIAlign

REPO_ROOT = Path(__file__).resolve().parents[1]


def torchvision_pools(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose plain RoIAligns are torchvision's own (same arguments)."""
    model = copy.deepcopy(model)
    heads = model.roi_heads
    for name in ('box_roi_pool', 'mask_roi_pool'):
        pool = getattr(heads, name)
        if type(pool) is FastMultiScaleRoIAlign:
            setattr(heads, name, MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio,
                                                    canonical_scale=pool.canonical_scale,
                                                    canonical_level=pool.canonical_level))
    return model


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: list, targets: list) -> float:
    start = time.perf_counter()
    loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='maskrcnn:spach_ms_xxs_patch4_224_conv')
    p.add_argument('--model-kwargs', default='{"mask_classifier": true}', help='JSON')
    p.add_argument('--img-size', type=int, default=96)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--warmup', type=int, default=5, help='steps of each model before timing (not timed)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', help='Markdown report to write')
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, _ = shapes_inst_splits(400, size=args.img_size)
    data = InstanceDataset(train, SHAPE_CLASSES, transform=InstanceTransform(0.5))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collate_instances,
                        generator=torch.Generator().manual_seed(0))
    ours = visionmix.create_model(args.model, num_classes=len(SHAPE_CLASSES) + 1, img_size=args.img_size,
                                  **json.loads(args.model_kwargs)).train()
    theirs = torchvision_pools(ours).train()

    # same gradients first (one batch, no step)
    images, targets = next(iter(loader))
    grads = []
    for model in (ours, theirs):
        model.zero_grad()
        with torch.random.fork_rng():  # the RoI sampler draws numbers: the same draws for both
            sum(model(images, targets).values()).backward()
        grads.append(torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None]))
    rel = float((grads[0] - grads[1]).abs().max() / grads[1].abs().max())

    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ours, theirs)]
    times: list[tuple[float, float]] = []
    batches = iter(loader)
    for i in range(args.warmup + args.steps):
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        pair = []
        for model, opt in zip((ours, theirs), opts):
            with torch.random.fork_rng():
                pair.append(step(model, opt, images, targets))
        if i >= args.warmup:
            times.append((pair[0], pair[1]))
    ratios = sorted(b / a for a, b in times)
    median = statistics.median(ratios)
    q = len(ratios) // 4
    t_ours = statistics.median(a for a, _ in times)
    t_theirs = statistics.median(b for _, b in times)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        f'# Mask R-CNN training step: visionmix RoIAlign vs torchvision ({datetime.date.today()})', '',
        f'`{shlex.join(["python", *sys.argv])}` at visionmix {commit}, torch {torch.__version__}, '
        f'{args.threads} threads, batch {args.batch_size} of {args.img_size} px `shapes-inst` images, '
        f'{args.model} {args.model_kwargs}; {args.steps} interleaved step pairs after {args.warmup} warm-up pairs.', '',
        '| | step (median) | ratio torchvision / ours (median) | interquartile ratios | gradient max rel. diff |',
        '|---|---|---|---|---|',
        f'| torchvision RoIAlign | {1e3 * t_theirs:.0f} ms | | | |',
        f'| visionmix RoIAlign (separable, forward and backward) | {1e3 * t_ours:.0f} ms | **{median:.2f}x** | '
        f'{ratios[q]:.2f}-{ratios[-q - 1]:.2f}x | {rel:.1e} |', '']
    text = '\n'.join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == '__main__':
    main()
