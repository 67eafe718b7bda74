"""``profile_model`` and ``compare_speed``: what a model costs, measured the same way for every model."""
from __future__ import annotations

import copy
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import timm
import torch
import torch.nn as nn

from ..errors import VisionmixError, first_line
from ..registry import ModelCard, MACS_COUNTER, create_model, model_card, takes_img_size
from .counting import count_macs, count_params
from .measure import TRAIN_STEP, Stats, TrainStep, gemm_peak_gflops, num_threads, time_calls, time_interleaved
from .memory import MemoryResult, measure_peak_memory

__all__ = ['ProfileError', 'ProfileResult', 'PairedTiming', 'Comparison', 'profile_model', 'profile_models',
           'compare_speed']

Mode = Literal['infer', 'train', 'both']
MODES = ('infer', 'train', 'both')
# A training step costs about three forward passes (backward computes gradients of inputs and of weights).
TRAIN_FLOPS_PER_MAC = 6


class ProfileError(VisionmixError):
    """A model cannot be profiled as asked (bad argument, an input size it cannot take, a failing step)."""


@dataclass
class ProfileResult:
    """Everything ``profile_model`` measured for one model; every figure says how it was obtained.

    Attributes:
        model: Registry name, or the name given for a user's module (its class name by default).
        source: 'visionmix', 'timm', 'torchvision', or 'module' for a user's ``nn.Module``.
        input_size: (C, H, W) of every measurement.
        batch_size: Batch N of the throughput, training and memory measurements.
        threads: Torch intra-op threads.
        channels_last: Channels-last memory format was used.
        compiled: The model ran through ``torch.compile`` (timings only; MACs and memory are eager).
        mode: 'infer', 'train' or 'both'.
        warmup: Untimed iterations before each timed loop.
        iters: Timed iterations per loop.
        params: Parameters (each shared tensor once).
        trainable_params: Parameters with ``requires_grad``.
        card_params: The model card's published figure (``None`` for a module).
        gmacs: Multiply-accumulates per image (x 1e9) at ``input_size``.
        macs_counter: The counter behind ``gmacs``.
        paper_gmacs: The reference: card ``paper_gmacs`` if set, else card ``gmacs``.
        macs_deviation_pct: ``gmacs`` vs ``paper_gmacs`` in %; ``None`` unless at the card's input size.
        latency_ms: Inference latency at batch 1 (ms), fp32, ``torch.inference_mode``.
        infer_img_s: Inference throughput at batch N (images/s).
        train_img_s: Training-step throughput at batch N (images/s).
        train_step: What one training step does.
        forward_peak_mb: Peak memory of a forward pass at batch N (MiB over the resident model and input).
        train_peak_mb: Peak memory of a training step at batch N (MiB over the resident model and input).
        memory_method: How memory was measured.
        memory_note: Why a memory figure is missing.
        infer_gflops: Achieved inference GFLOP/s = 2 * MACs * img/s.
        train_gflops: Achieved training GFLOP/s = 6 * MACs * img/s (backward ~ 2 forwards).
        gemm_peak_gflops: This machine's fp32 GEMM peak at ``threads`` (best large matmul).
        infer_peak_pct: ``infer_gflops`` as % of ``gemm_peak_gflops``.
        train_peak_pct: ``train_gflops`` as % of ``gemm_peak_gflops``.
        torch_version: torch version.
        timm_version: timm version.
        cpu: Processor description.
    """

    model: str
    source: str
    input_size: tuple[int, int, int]
    batch_size: int
    threads: int
    channels_last: bool
    compiled: bool
    mode: str
    warmup: int
    iters: int
    params: int
    trainable_params: int
    card_params: int | None
    gmacs: float
    macs_counter: str
    paper_gmacs: float | None
    macs_deviation_pct: float | None
    latency_ms: Stats | None = None
    infer_img_s: Stats | None = None
    train_img_s: Stats | None = None
    train_step: str = TRAIN_STEP
    forward_peak_mb: float | None = None
    train_peak_mb: float | None = None
    memory_method: str = 'not measured'
    memory_note: str = ''
    infer_gflops: float | None = None
    train_gflops: float | None = None
    gemm_peak_gflops: float | None = None
    infer_peak_pct: float | None = None
    train_peak_pct: float | None = None
    torch_version: str = torch.__version__
    timm_version: str = timm.__version__
    cpu: str = field(default_factory=lambda: _cpu_name())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairedTiming:
    """A against B for one kind of step, run interleaved A B A B.

    Attributes:
        mode: 'infer' or 'train'.
        a_ms: A's time per iteration (ms), one entry per pair.
        b_ms: B's time per iteration (ms), one entry per pair.
        ratios: Per pair, A's speed over B's (``b_ms / a_ms``): > 1 means A is faster.
        ratio: Median and IQR of ``ratios``.
        a_img_s: A's throughput (images/s).
        b_img_s: B's throughput (images/s).
    """

    mode: str
    a_ms: list[float]
    b_ms: list[float]
    ratios: list[float]
    ratio: Stats
    a_img_s: Stats
    b_img_s: Stats


@dataclass
class Comparison:
    """The result of :func:`compare_speed`.

    Attributes:
        a: Name of A.
        b: Name of B.
        input_size: (C, H, W).
        batch_size: Batch N of every step.
        threads: Torch threads.
        channels_last: Channels-last memory format was used.
        compiled: Both ran through ``torch.compile``.
        warmup: Untimed pairs before timing.
        iters: Timed pairs.
        a_params: A's parameters.
        b_params: B's parameters.
        a_gmacs: A's GMACs per image.
        b_gmacs: B's GMACs per image.
        macs_counter: The counter behind the GMACs.
        infer: Inference pairs (``None`` in train mode).
        train: Training-step pairs (``None`` in infer mode).
    """

    a: str
    b: str
    input_size: tuple[int, int, int]
    batch_size: int
    threads: int
    channels_last: bool
    compiled: bool
    warmup: int
    iters: int
    a_params: int
    b_params: int
    a_gmacs: float
    b_gmacs: float
    macs_counter: str = MACS_COUNTER
    infer: PairedTiming | None = None
    train: PairedTiming | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_name() -> str:
    """The processor's model name (``platform.processor()`` is empty on most Linux systems)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _size_str(input_size: Sequence[int]) -> str:
    return 'x'.join(str(s) for s in input_size)


def _check_args(batch_size: int, warmup: int, iters: int, mode: str, threads: int | None) -> None:
    for label, value, low in (('batch size', batch_size, 1), ('iters', iters, 1), ('warmup', warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ProfileError(f'{label} must be an integer >= {low}, got {value!r}')
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ProfileError(f'threads must be an integer >= 1, got {threads!r}')
    if mode not in MODES:
        raise ProfileError(f'mode must be one of {", ".join(MODES)}, got {mode!r}')


def _input_size(img_size: int | Sequence[int] | None, default: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) from an int (square), (H, W) or (C, H, W); channels default to the model's."""
    if img_size is None:
        size = tuple(default)
    elif isinstance(img_size, int):
        size = (default[0], img_size, img_size)
    elif len(img_size) == 2:
        size = (default[0], *img_size)
    elif len(img_size) == 3:
        size = tuple(img_size)
    else:
        raise ProfileError(f'image size must be N, (H, W) or (C, H, W), got {img_size!r}')
    if not all(isinstance(s, int) and s > 0 for s in size):
        raise ProfileError(f'image size must be positive integers, got {_size_str(size)}')
    return size  # type: ignore[return-value]


@dataclass
class _Subject:
    """A model ready to measure: built (or copied) once, with what the report needs to say about it."""

    name: str
    source: str
    model: nn.Module
    card: ModelCard | None
    spec: nn.Module | str  # what the memory child gets: the name (built there) or the module
    input_size: tuple[int, int, int]
    build_kwargs: dict[str, Any] = field(default_factory=dict)  # the builder arguments of a name


def _subject(model_or_name: nn.Module | str, img_size: int | Sequence[int] | None, name: str | None,
             model_kwargs: dict[str, Any] | None) -> _Subject:
    if isinstance(model_or_name, str):
        card = model_card(model_or_name)  # UnknownModelError (a ValueError) with suggestions
        size = _input_size(img_size, card.input_size)
        kwargs = dict(model_kwargs or {})
        if img_size is not None and takes_img_size(model_or_name):  # size-tied models are built for the size asked
            kwargs.setdefault('img_size', size[1:])
        model = create_model(model_or_name, **kwargs)
        return _Subject(name or card.name, card.source, model, card, model_or_name, size, kwargs)
    if not isinstance(model_or_name, nn.Module):
        raise ProfileError(f'expected a model name or an nn.Module, got {type(model_or_name).__name__}')
    if model_kwargs:
        raise ProfileError('model_kwargs only apply to a registered model name')
    cfg = getattr(model_or_name, 'pretrained_cfg', None) or {}
    default = tuple(cfg.get('input_size', (3, 224, 224)))
    try:  # work on a copy: channels-last conversion and training steps must not touch the caller's model
        model = copy.deepcopy(model_or_name)
    except Exception as e:  # noqa: BLE001
        raise ProfileError(f'cannot copy the model to profile it: {first_line(e)}') from None
    return _Subject(name or type(model_or_name).__name__, 'module', model, None, model_or_name,
                    _input_size(img_size, default))


def _count_macs(subject: _Subject) -> int:
    """MACs per image; a model that cannot take the input size fails here, with a one-line reason."""
    try:
        return count_macs(subject.model, subject.input_size)
    except Exception as e:  # noqa: BLE001 - any failure of the forward means the same thing to the user
        raise ProfileError(f'model {subject.name} cannot take input {_size_str(subject.input_size)}: '
                           f'{first_line(e)}') from None


def _prepare(subject: _Subject, channels_last: bool, compile: bool) -> tuple[nn.Module, Callable]:
    """The module to train / time and the callable to run it (compiled or eager)."""
    model = subject.model
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, (torch.compile(model) if compile else model)


def _make_input(batch: int, input_size: tuple[int, int, int], channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, *input_size)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _guard(subject: _Subject, what: str, batch: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn``, turning any failure into a one-line :class:`ProfileError` naming model, step and input."""
    try:
        return fn()
    except ProfileError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ProfileError(f'model {subject.name} failed {what} at batch {batch}, input '
                           f'{_size_str(subject.input_size)}: {first_line(e)}') from None


class _Ticker:
    """Advances one rich progress task per timed loop, or does nothing without a progress bar."""

    def __init__(self, progress: Any | None) -> None:
        self.progress = progress
        self.task = None

    def start(self, description: str, total: int) -> Callable[[], None] | None:
        if self.progress is None:
            return None
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)
        return lambda: self.progress.advance(self.task)

    def done(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


def profile_model(
        model_or_name: nn.Module | str,
        *,
        img_size: int | Sequence[int] | None = None,
        batch_size: int = 8,
        threads: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        mode: Mode = 'both',
        warmup: int = 3,
        iters: int = 10,
        memory: bool = True,
        name: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        progress: Any | None = None,
) -> ProfileResult:
    """Measure one model: parameters, MACs, inference latency / throughput, training throughput, peak memory.

    Works on every registered model (built with :func:`visionmix.create_model`) and on any ``nn.Module``; a module
    is deep-copied, so the caller's weights and mode are never changed.

    Args:
        model_or_name: Registered model name or an ``nn.Module``.
        img_size: N (square), (H, W) or (C, H, W); default: the card's input size (a module's ``pretrained_cfg``,
            else 3x224x224).
        batch_size: Batch N for throughput, training and memory (latency is always batch 1).
        threads: Torch intra-op threads during the run (restored afterwards); default: the current count.
        channels_last: Model and input in channels-last memory format.
        compile: Time the model through ``torch.compile`` (MACs and memory stay eager).
        mode: 'infer', 'train' or 'both'.
        warmup: Untimed iterations before each timed loop.
        iters: Timed iterations per loop; statistics are median and IQR over them.
        memory: Measure peak memory in a spawned child process (takes a few seconds).
        name: Name in the report; default: the registry name or the module's class name.
        model_kwargs: Builder arguments for a registered name (e.g. ``depth=1``); the memory child uses them too.
        progress: A ``rich.progress.Progress`` to show the timed loops on.

    Returns:
        A :class:`ProfileResult`.

    Raises:
        UnknownModelError: Unknown model name (the message lists the closest names).
        ProfileError: A bad argument, an input size the model cannot take, or a failing step.
    """
    _check_args(batch_size, warmup, iters, mode, threads)
    subject = _subject(model_or_name, img_size, name, model_kwargs)
    ticker = _Ticker(progress)
    with num_threads(threads) as used_threads:
        macs = _count_macs(subject)
        result = _new_result(subject, macs, batch_size, used_threads, channels_last, compile, mode, warmup, iters)
        model, run = _prepare(subject, channels_last, compile)
        if mode in ('infer', 'both'):
            _time_inference(subject, result, model, run, ticker)
        if mode in ('train', 'both'):
            _time_training(subject, result, model, run, ticker)
        ticker.done()
        _achieved_gflops(result, macs)
        mem = MemoryResult(None, None, 'not measured', 'switched off (--no-memory)')
        if memory:
            task = progress.add_task(f'{subject.name}: peak memory (child process)', total=None) if progress else None
            mem = measure_peak_memory(
                subject.spec, subject.input_size, batch_size, threads=used_threads, channels_last=channels_last,
                forward=mode in ('infer', 'both'), train=mode in ('train', 'both'), model_kwargs=subject.build_kwargs)
            if progress is not None:
                progress.remove_task(task)
        result.forward_peak_mb, result.train_peak_mb = mem.forward_mb, mem.train_mb
        result.memory_method, result.memory_note = mem.method, mem.note
    return result


def _new_result(subject: _Subject, macs: int, batch_size: int, threads: int, channels_last: bool, compile: bool,
                mode: Mode, warmup: int, iters: int) -> ProfileResult:
    """The result with everything known before timing: params, MACs and their deviation from the card."""
    card, gmacs = subject.card, macs / 1e9
    reference = None if card is None else (card.paper_gmacs if card.paper_gmacs is not None else card.gmacs)
    deviation = None
    if reference and tuple(card.input_size) == subject.input_size:
        deviation = (gmacs - reference) / reference * 100
    return ProfileResult(
        model=subject.name, source=subject.source, input_size=subject.input_size, batch_size=batch_size,
        threads=threads, channels_last=channels_last, compiled=compile, mode=mode, warmup=warmup, iters=iters,
        params=count_params(subject.model), trainable_params=count_params(subject.model, trainable_only=True),
        card_params=None if card is None else card.params, gmacs=gmacs, macs_counter=MACS_COUNTER,
        paper_gmacs=reference, macs_deviation_pct=deviation)


def _time_inference(subject: _Subject, result: ProfileResult, model: nn.Module, run: Callable,
                    ticker: _Ticker) -> None:
    """Batch-1 latency and batch-N throughput, each over ``warmup + iters`` calls."""
    model.eval()
    for batch in sorted({1, result.batch_size}):
        x = _make_input(batch, subject.input_size, result.channels_last)

        def forward(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                run(x)

        tick = ticker.start(f'{subject.name}: inference, batch {batch}', result.warmup + result.iters)
        times = _guard(subject, 'inference', batch, lambda: time_calls(forward, result.warmup, result.iters, tick))
        if batch == 1:
            result.latency_ms = Stats.of([t * 1e3 for t in times])
        if batch == result.batch_size:
            result.infer_img_s = Stats.of([batch / t for t in times])


def _time_training(subject: _Subject, result: ProfileResult, model: nn.Module, run: Callable,
                   ticker: _Ticker) -> None:
    batch = result.batch_size
    step = TrainStep(model, _make_input(batch, subject.input_size, result.channels_last), forward=run)
    tick = ticker.start(f'{subject.name}: training step, batch {batch}', result.warmup + result.iters)
    times = _guard(subject, 'a training step', batch, lambda: time_calls(step, result.warmup, result.iters, tick))
    result.train_img_s = Stats.of([batch / t for t in times])
    model.eval()


def _achieved_gflops(result: ProfileResult, macs: int) -> None:
    """GFLOP/s of the median throughputs and their share of this machine's measured fp32 GEMM peak."""
    peak = gemm_peak_gflops()
    result.gemm_peak_gflops = peak
    if result.infer_img_s is not None:
        result.infer_gflops = 2 * macs * result.infer_img_s.median / 1e9
        result.infer_peak_pct = 100 * result.infer_gflops / peak
    if result.train_img_s is not None:
        result.train_gflops = TRAIN_FLOPS_PER_MAC * macs * result.train_img_s.median / 1e9
        result.train_peak_pct = 100 * result.train_gflops / peak


def profile_models(models: Sequence[nn.Module | str], *, show_progress: bool = True,
                   **kwargs: Any) -> list[ProfileResult]:
    """:func:`profile_model` for several models, with one rich progress bar on stderr for the whole run.

    Args:
        models: Registered names and / or modules.
        show_progress: Show the progress bar (only drawn when stderr is a terminal).
        **kwargs: Passed to :func:`profile_model` for every model.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    disable = not (show_progress and console.is_terminal)
    with Progress(TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=disable) as progress:
        overall = progress.add_task('models', total=len(models))
        results = []
        for model in models:
            results.append(profile_model(model, progress=progress, **kwargs))
            progress.advance(overall)
    return results


def _step(kind: str, model: nn.Module, run: Callable, x: torch.Tensor) -> Callable[[], Any]:
    """One timed call: an inference forward, or a whole training step."""
    if kind == 'train':
        return TrainStep(model, x, forward=run)
    model.eval()

    def forward() -> None:
        with torch.inference_mode():
            run(x)

    return forward


def _paired_timing(kind: str, sa: _Subject, sb: _Subject, fn_a: Callable, fn_b: Callable, comparison: Comparison,
                   ticker: _Ticker) -> PairedTiming:
    """A and B timed interleaved (A B A B ...), with per-pair ratios."""
    batch = comparison.batch_size
    # check each side alone first, so an error names the model that failed
    _guard(sa, 'inference' if kind == 'infer' else 'a training step', batch, fn_a)
    _guard(sb, 'inference' if kind == 'infer' else 'a training step', batch, fn_b)
    tick = ticker.start(f'{sa.name} vs {sb.name}: {kind}, batch {batch}', comparison.warmup + comparison.iters)
    times_a, times_b = time_interleaved(fn_a, fn_b, comparison.warmup, comparison.iters, tick)
    ratios = [tb / ta for ta, tb in zip(times_a, times_b)]
    return PairedTiming(mode=kind, a_ms=[t * 1e3 for t in times_a], b_ms=[t * 1e3 for t in times_b], ratios=ratios,
                        ratio=Stats.of(ratios), a_img_s=Stats.of([batch / t for t in times_a]),
                        b_img_s=Stats.of([batch / t for t in times_b]))


def compare_speed(
        a: nn.Module | str,
        b: nn.Module | str,
        *,
        img_size: int | Sequence[int] | None = None,
        batch_size: int = 8,
        threads: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        mode: Mode = 'infer',
        warmup: int = 3,
        iters: int = 10,
        names: tuple[str | None, str | None] = (None, None),
        model_kwargs: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None),
        progress: Any | None = None,
) -> Comparison:
    """Hold two models (or two implementations of one) against each other in one process, interleaved A B A B.

    Each timed iteration of A is followed by one of B, and the ratio is taken per pair, so a burst of load from
    other processes hits both sides of a pair alike; the median of the per-pair ratios is the comparison.

    Args:
        a: Registered name or ``nn.Module``.
        b: Registered name or ``nn.Module``.
        img_size: N, (H, W) or (C, H, W); default: A's input size.
        batch_size: Batch N of every step.
        threads: Torch threads during the run.
        channels_last: Both in channels-last memory format.
        compile: Both through ``torch.compile``.
        mode: 'infer', 'train' or 'both'.
        warmup: Untimed pairs.
        iters: Timed pairs.
        names: Report names for A and B (default: registry or class names).
        model_kwargs: Builder arguments for A and B when they are names.
        progress: A ``rich.progress.Progress`` to show the loops on.

    Returns:
        A :class:`Comparison`; ``ratio`` > 1 means A is faster.
    """
    _check_args(batch_size, warmup, iters, mode, threads)
    sa = _subject(a, img_size, names[0], model_kwargs[0])
    sb = _subject(b, sa.input_size, names[1], model_kwargs[1])
    ticker = _Ticker(progress)
    with num_threads(threads) as used_threads:
        comparison = Comparison(
            a=sa.name, b=sb.name, input_size=sa.input_size, batch_size=batch_size, threads=used_threads,
            channels_last=channels_last, compiled=compile, warmup=warmup, iters=iters,
            a_params=count_params(sa.model), b_params=count_params(sb.model),
            a_gmacs=_count_macs(sa) / 1e9, b_gmacs=_count_macs(sb) / 1e9)
        (model_a, run_a), (model_b, run_b) = _prepare(sa, channels_last, compile), _prepare(sb, channels_last, compile)
        x = _make_input(batch_size, sa.input_size, channels_last)
        for kind in ('infer', 'train'):
            if mode in (kind, 'both'):
                fn_a, fn_b = _step(kind, model_a, run_a, x), _step(kind, model_b, run_b, x)
                setattr(comparison, kind, _paired_timing(kind, sa, sb, fn_a, fn_b, comparison, ticker))
        ticker.done()
    return comparison
