"""Timing building blocks: robust statistics, timed loops, a training step and this machine's GEMM peak."""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ..models.detection import synthetic_targets

__all__ = ['Stats', 'time_calls', 'time_interleaved', 'gemm_peak_gflops', 'TrainStep', 'loss_of', 'num_threads']

TRAIN_STEP = 'zero_grad, forward, cross-entropy on random labels, backward, AdamW step'


@dataclass(frozen=True)
class Stats:
    """Median and interquartile range of repeated measurements (never a single run).

    Attributes:
        median: Median of the samples.
        q1: First quartile.
        q3: Third quartile.
        iqr: ``q3 - q1``.
        n: Number of samples.
    """

    median: float
    q1: float
    q3: float
    iqr: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError('no samples')
        values = sorted(values)
        if len(values) == 1:
            q1 = q3 = values[0]
        else:
            q1, _, q3 = statistics.quantiles(values, n=4, method='inclusive')
        return cls(median=statistics.median(values), q1=q1, q3=q3, iqr=q3 - q1, n=len(values))


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run a block with ``torch.set_num_threads(threads)`` and restore the previous count afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int,
               tick: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls.

    Every call is timed on its own so the caller can take a median and IQR instead of a mean that one preempted
    iteration would skew.
    """
    for _ in range(warmup):
        fn()
        if tick:
            tick()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if tick:
            tick()
    return times


def time_interleaved(fn_a: Callable[[], Any], fn_b: Callable[[], Any], warmup: int, iters: int,
                     tick: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """Seconds of A and B calls alternated A B A B, so both see the same machine load at nearly the same time."""
    for _ in range(warmup):
        fn_a()
        fn_b()
        if tick:
            tick()
    times_a, times_b = [], []
    for _ in range(iters):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        if tick:
            tick()
    return times_a, times_b


_GEMM_PEAK: dict[tuple[int, int], float] = {}


def gemm_peak_gflops(threads: int | None = None, n: int = 1024, repeats: int = 10) -> float:
    """This machine's attainable fp32 GFLOP/s: the best of ``repeats`` ``n x n`` matmuls at ``threads`` threads.

    Measured once per process and thread count (cached), because it takes about a second and does not change.
    The best run, not the median, is the peak: on a shared machine other load only ever slows a run down.
    """
    with num_threads(threads) as used:
        key = (used, n)
        if key not in _GEMM_PEAK:
            a, b = torch.randn(n, n), torch.randn(n, n)
            with torch.inference_mode():
                best = min(time_calls(lambda: torch.mm(a, b), warmup=2, iters=repeats))
            _GEMM_PEAK[key] = 2 * n ** 3 / best / 1e9
        return _GEMM_PEAK[key]


def _tensors(out: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in a model output (tensor, tuple, list, dict or namedtuple)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensors(item)]
    return []


def loss_of(out: Any, target: torch.Tensor | None = None) -> torch.Tensor:
    """A scalar loss for any model output: cross-entropy for ``(batch, classes)`` logits, a mean otherwise.

    Segmentation maps, feature lists and auxiliary-head tuples all get a loss that reaches every output, so the
    backward pass is the model's full backward.
    """
    if isinstance(out, dict) and out and all(k.startswith('loss') for k in out):  # a detector's losses: their sum
        return sum(out.values())
    tensors = _tensors(out)
    if not tensors:
        raise TypeError(f'model output of type {type(out).__name__} holds no floating-point tensor to train on')
    first = tensors[0]
    if first.ndim == 2 and target is not None:
        loss = F.cross_entropy(first, target % first.shape[1])
    else:
        loss = first.float().square().mean()
    for extra in tensors[1:]:
        loss = loss + extra.float().square().mean()
    return loss


class TrainStep:
    """One training step of ``model`` on a fixed batch: zero_grad, forward, loss, backward, AdamW step.

    AdamW because it is what MLP / transformer vision models train with; its state (two buffers per parameter)
    is created on the first step, so a memory measurement of the first step includes it.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None = None):
        self.model = model
        run = forward if forward is not None else model  # bool() of a compiled module raises
        if isinstance(model, GeneralizedRCNN):
            # torchvision's detectors train only with targets and return their losses: one box and mask per image
            self.forward = lambda images: run(list(images), synthetic_targets(images))
        else:
            self.forward = run
        self.x = x
        self.target = torch.randint(0, 1000, (x.shape[0],))
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-6) if params else None

    def __call__(self) -> None:
        self.model.train()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        loss = loss_of(self.forward(self.x), self.target)
        if loss.requires_grad:
            loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
