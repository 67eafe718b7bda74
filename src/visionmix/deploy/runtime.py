"""Running a model through a backend (eager, ``torch.compile``, ONNX Runtime) and comparing the backends.

:class:`OnnxRuntimeModel` runs an ONNX file on onnxruntime's CPU provider with torch tensors in and out;
``onnxruntime_model`` exports any ``nn.Module`` first (checked against eager, see
:func:`~visionmix.deploy.export.export_model`). :func:`backend_runner` gives one callable per backend, so
``predict`` and ``profile`` treat them alike, and :func:`compare_backends` times them interleaved on one input.
OpenVINO is not offered: measured on the same ONNX files (``benchmarks/bench_openvino.py``, results in
``benchmarks/results/openvino.md``; batch 8, 2 threads) it ran Mobile-Former-26M at 0.50x and SPACH-MS-XXS conv at
0.67x onnxruntime's speed, Hire-MLP-Tiny and Swin-MLP-Tiny at 1.03x / 1.06x: too little to carry a second runtime.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from ..errors import VisionmixError, first_line
from ..profile.counting import count_macs
from ..profile.measure import Stats, gemm_peak_gflops, num_threads
from .export import _default_size, _pair, export_model, max_rel_diff
from .onnxrt import OnnxRuntimeModel, require_onnx

__all__ = ['BACKENDS', 'BackendError', 'onnxruntime_model', 'backend_runner', 'compare_backends']

Backend = Literal['eager', 'compile', 'onnxruntime']
BACKENDS = ('eager', 'compile', 'onnxruntime')


class BackendError(VisionmixError):
    """A backend that does not exist or cannot run the model as asked."""


def onnxruntime_model(
        model: nn.Module,
        img_size: int | Sequence[int] | None = None,
        batch: int | Literal['dynamic'] = 'dynamic',
        *,
        dynamic_size: bool | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        in_chans: int = 3,
        opset: int | None = None,
        rtol: float = 1e-4,
) -> OnnxRuntimeModel:
    """Export ``model`` to ONNX (checked against eager) and open it.

    Args:
        model: Any ``nn.Module`` taking one image tensor; it is left in eval mode.
        img_size: N or (H, W) to export at; default: the model's ``pretrained_cfg`` size, else 224.
        batch: 'dynamic' or a fixed batch size.
        dynamic_size: As for :func:`export_model` (``None``: dynamic H / W where it works).
        threads: onnxruntime intra-op threads (default: torch's).
        cache_dir: Keep the file here, named by a hash of the weights and export options, and reuse it next
            time; default: a temp folder deleted once the session is open.
        in_chans: Input channels.
        opset: ONNX opset (default: the exporter's).
        rtol: Tolerance of the export check.
    """
    kwargs = dict(img_size=img_size, batch=batch, dynamic_size=dynamic_size, in_chans=in_chans, opset=opset,
                  rtol=rtol)
    require_onnx('onnx', 'onnxruntime', 'onnxscript')
    model.eval()
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix='visionmix-onnx-') as folder:
            result = export_model(model, Path(folder) / 'model.onnx', 'onnx', **kwargs)
            runner = OnnxRuntimeModel(result.path, threads)  # the session holds the model: the folder can go
        runner.export_info = result.to_dict()
        return runner
    path = Path(cache_dir) / f'{type(model).__name__}-{_cache_key(model, kwargs)}.onnx'
    info = path.with_suffix('.json')
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(json.dumps(export_model(model, path, 'onnx', **kwargs).to_dict(), indent=1))
    runner = OnnxRuntimeModel(path, threads)
    runner.export_info = json.loads(info.read_text()) if info.is_file() else None
    return runner


def _cache_key(model: nn.Module, kwargs: dict[str, Any]) -> str:
    """Hash of everything the exported file depends on: class, weights, export options, torch version."""
    digest = hashlib.sha256(f'{type(model).__module__}.{type(model).__qualname__}|{sorted(kwargs.items())}|'
                            f'{torch.__version__}'.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}'.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def backend_runner(
        model: nn.Module,
        backend: Backend,
        img_size: int | Sequence[int] | None = None,
        *,
        batch: int | Literal['dynamic'] = 'dynamic',
        dynamic_size: bool | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        in_chans: int = 3,
) -> Callable[[torch.Tensor], Any]:
    """A callable running ``model`` on a batch through ``backend``; the model is put in eval mode.

    Args:
        model: Any ``nn.Module`` taking one image tensor.
        backend: 'eager' (``torch.inference_mode``), 'compile' (``torch.compile``, inductor, static shapes: each new
            input size compiles again) or 'onnxruntime' (:meth:`OnnxRuntimeModel.from_module`).
        img_size: Export size for onnxruntime (N or (H, W)); ignored by the others.
        batch: onnxruntime export batch ('dynamic' or fixed).
        dynamic_size: onnxruntime export H / W mode (see :func:`export_model`).
        threads: onnxruntime intra-op threads (default: torch's); eager and compile use torch's setting.
        cache_dir: Where onnxruntime keeps exported files (default: not kept).
        in_chans: Input channels.

    Raises:
        BackendError: An unknown backend.
    """
    if backend not in BACKENDS:
        raise BackendError(f'unknown backend {backend!r}; choose from {", ".join(BACKENDS)}')
    model.eval()
    if backend == 'onnxruntime':
        return onnxruntime_model(model, img_size, batch, dynamic_size=dynamic_size, threads=threads,
                                            cache_dir=cache_dir, in_chans=in_chans)
    # static shapes: a symbolic size left by an earlier compile of the same class fails inductor on some models
    forward = torch.compile(model, dynamic=False) if backend == 'compile' else model

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return forward(x)

    return run


def _time_round_robin(fns: Sequence[Callable[[], Any]], warmup: int, iters: int) -> list[list[float]]:
    """Seconds of each call, running every function once per round (A B C A B C ...), so all see the same load."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return times


def _check_compare_args(backends: Sequence[str], batch_size: int, warmup: int, iters: int,
                        threads: int | None) -> list[str]:
    """The backends to run, eager first (the reference of the output check and the speed ratio)."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise BackendError(f'unknown backend {unknown[0] if unknown else "(none)"!r}; choose from '
                           f'{", ".join(BACKENDS)}')
    for label, value, low in (('batch size', batch_size, 1), ('iters', iters, 1), ('warmup', warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise BackendError(f'{label} must be an integer >= {low}, got {value!r}')
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise BackendError(f'threads must be an integer >= 1, got {threads!r}')
    return ['eager', *(b for b in dict.fromkeys(backends) if b != 'eager')]


def _runners(model: nn.Module, names: list[str], size: tuple[int, int], in_chans: int, threads: int,
             cache_dir: str | os.PathLike | None) -> dict[str, Callable[[torch.Tensor], Any]]:
    runners = {}
    for name in names:
        try:
            # one size is measured: a static H / W exports faster and lets onnxruntime plan fixed shapes
            runners[name] = backend_runner(model, name, size, dynamic_size=False, threads=threads,
                                           cache_dir=cache_dir, in_chans=in_chans)
        except VisionmixError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BackendError(f'backend {name} cannot run the model: {first_line(e)}') from e
    return runners


def _macs(model: nn.Module, input_size: tuple[int, int, int]) -> int | None:
    try:
        return count_macs(model, input_size)
    except Exception:  # noqa: BLE001 - GFLOP/s are a bonus; a model the counter cannot run just has none
        return None


def compare_backends(
        model: nn.Module,
        backends: Sequence[Backend] = BACKENDS,
        img_size: int | Sequence[int] | None = None,
        *,
        batch_size: int = 8,
        warmup: int = 3,
        iters: int = 10,
        threads: int | None = None,
        in_chans: int = 3,
        flops: bool = True,
        cache_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Time ``model`` through several backends in one interleaved run, and check their outputs against eager.

    Each timed round runs every backend once on the same batch (eager, then the others in the order given), so a
    burst of load from other processes hits all of them alike; the speed ratio is taken per round and its median
    reported. Eager always runs: it is the reference of the ratio and of the output check.

    Args:
        model: Any ``nn.Module`` taking one image tensor; it is left in eval mode.
        backends: Backends from :data:`BACKENDS` ('eager' is added first when missing).
        img_size: N or (H, W); default: the model's ``pretrained_cfg`` size, else 224. onnxruntime exports at it,
            with a dynamic batch and a static H / W.
        batch_size: Batch N of every call.
        warmup: Untimed rounds (the first call of each backend, where compilation happens, is never timed).
        iters: Timed rounds.
        threads: Torch threads and onnxruntime intra-op threads during the run; default: the current torch count.
        in_chans: Input channels.
        flops: Also report achieved GFLOP/s (from the model's MACs) and their share of this machine's fp32 GEMM
            peak (measured once per process, about a second).
        cache_dir: Where onnxruntime keeps its exported file (default: not kept).

    Returns:
        One dict per backend: ``backend``, ``input_size``, ``batch_size``, ``threads``, ``warmup``, ``iters``,
        ``img_s`` (median images/s), ``img_s_q1``, ``img_s_q3``, ``img_s_iqr``, ``ms`` (median ms per batch),
        ``speedup`` (median over rounds of eager time / backend time; > 1 is faster than eager), ``speedup_q1``,
        ``speedup_q3``, ``max_rel_diff`` (vs eager, on the timed batch), ``gmacs`` (per image), ``gflops``,
        ``gemm_peak_gflops``, ``peak_pct`` (``None`` without ``flops`` or MACs) and ``export`` (onnxruntime's
        exporter, opset and notes; ``''`` for the others).

    Raises:
        BackendError: An unknown backend, a bad argument, or a backend that cannot run the model.
        ExportError: The ONNX export fails or differs from eager (``ExportCheckError``).
    """
    names = _check_compare_args(backends, batch_size, warmup, iters, threads)
    size = _pair(img_size if img_size is not None else _default_size(model))
    input_size = (in_chans, *size)
    model.eval()
    with num_threads(threads) as used:
        runners = _runners(model, names, size, in_chans, used, cache_dir)
        x = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0))
        reference = runners['eager'](x)
        diffs = {}
        for name, runner in runners.items():  # also each backend's first (compiling) call, untimed
            try:
                diffs[name] = max_rel_diff(reference, runner(x))
            except Exception as e:  # noqa: BLE001
                raise BackendError(f'backend {name} failed at batch {batch_size}, input '
                                   f'{"x".join(map(str, input_size))}: {first_line(e)}') from e
        times = _time_round_robin([lambda run=run: run(x) for run in runners.values()], warmup, iters)
        macs = _macs(model, input_size) if flops else None
        peak = gemm_peak_gflops(used) if macs else None
    rows = []
    for name, samples in zip(runners, times):
        img_s = Stats.of([batch_size / t for t in samples])
        ratio = Stats.of([te / t for te, t in zip(times[0], samples)])
        gflops = 2 * macs * img_s.median / 1e9 if macs else None
        rows.append(dict(
            backend=name, input_size=input_size, batch_size=batch_size, threads=used, warmup=warmup, iters=iters,
            img_s=img_s.median, img_s_q1=img_s.q1, img_s_q3=img_s.q3, img_s_iqr=img_s.iqr,
            ms=Stats.of(samples).median * 1e3, speedup=ratio.median, speedup_q1=ratio.q1, speedup_q3=ratio.q3,
            max_rel_diff=diffs[name], gmacs=macs / 1e9 if macs else None, gflops=gflops, gemm_peak_gflops=peak,
            peak_pct=100 * gflops / peak if gflops and peak else None, export=_export_summary(runners[name])))
    return rows


def _export_summary(runner: Callable[[torch.Tensor], Any]) -> str:
    info = getattr(runner, 'export_info', None)
    if not info:
        return ''
    notes = '; '.join(info.get('notes') or [])
    return f'{info["exporter"]}, opset {info["opset"]}' + (f' ({notes})' if notes else '')
