"""Peak host memory of a forward pass and of a training step, measured in a fresh child process.

The child is started with the ``spawn`` method (never ``fork``: OpenMP thread pools can deadlock in a forked
child). It builds the model and input, then for each measurement frees what it can (``malloc_trim``), resets the
kernel's peak-RSS mark by writing ``5`` to ``/proc/self/clear_refs``, records ``VmRSS`` as the baseline, runs the
step and reads ``VmHWM``: peak = VmHWM - baseline. Large allocations are forced through ``mmap`` in the child
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave RSS at once and the next measurement starts clean.

Without a writable ``/proc/self/clear_refs`` it falls back to ``resource.getrusage`` max RSS, which cannot be reset
and is therefore only a lower bound; when neither works, or the model cannot be sent to the child, the result says
why instead of failing.
"""
from __future__ import annotations

import copy
import ctypes
import multiprocessing as mp
import os
import pickle
import resource
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import first_line
from .measure import TrainStep, num_threads

__all__ = ['MemoryResult', 'measure_peak_memory', 'PROC_METHOD', 'RUSAGE_METHOD']

PROC_METHOD = ('peak RSS over the built model+input in a spawned child: VmHWM reset via /proc/self/clear_refs, '
               'peak = VmHWM - VmRSS baseline, first call')
RUSAGE_METHOD = ('peak RSS in a spawned child from resource.getrusage ru_maxrss (cannot be reset: lower bound), '
                 'first call')


@dataclass(frozen=True)
class MemoryResult:
    """Peak memory (MiB) above the resident model and input, or ``None`` with the reason in ``note``.

    Attributes:
        forward_mb: Peak of one forward pass (eval, ``torch.inference_mode``) at ``batch_size``.
        train_mb: Peak of one training step at ``batch_size``: activations, gradients and the optimizer state
            that the first step creates.
        method: How it was measured.
        note: Why a figure is missing, if one is.
    """

    forward_mb: float | None
    train_mb: float | None
    method: str
    note: str = ''


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise OSError(f'{field} not in /proc/self/status')


def _trim() -> None:
    """Hand freed heap memory back to the kernel so the next baseline is the live set only."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _Peak:
    """Peak-RSS probe: /proc when it can be reset, getrusage otherwise."""

    def __init__(self) -> None:
        try:
            self._reset_proc()
            _status_kib('VmHWM')
            self.method = PROC_METHOD
        except OSError:
            self.method = RUSAGE_METHOD

    @staticmethod
    def _reset_proc() -> None:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')

    def start(self) -> int:
        _trim()
        if self.method == PROC_METHOD:
            self._reset_proc()
            return _status_kib('VmRSS')
        return self._maxrss_kib()

    def peak_since(self, baseline: int) -> float:
        now = _status_kib('VmHWM') if self.method == PROC_METHOD else self._maxrss_kib()
        return max(now - baseline, 0) / 1024

    @staticmethod
    def _maxrss_kib() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss // 1024 if sys.platform == 'darwin' else rss  # bytes on macOS, KiB elsewhere


def _measure(spec: tuple, input_size: tuple[int, int, int], batch_size: int, channels_last: bool, forward: bool,
             train: bool) -> dict[str, Any]:
    """Build the model and input, then measure each requested step against its own baseline."""
    if spec[0] == 'name':
        from ..registry import create_model
        model = create_model(spec[1], **spec[2])
    else:
        model = spec[1]
    x = torch.randn(batch_size, *input_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    probe = _Peak()
    result: dict[str, Any] = {'method': probe.method, 'forward_mb': None, 'train_mb': None}
    if forward:
        model.eval()
        base = probe.start()
        with torch.inference_mode():
            out = model(x)
        result['forward_mb'] = probe.peak_since(base)
        del out
    if train:
        step = TrainStep(model, x)
        base = probe.start()
        step()
        result['train_mb'] = probe.peak_since(base)
    return result


def _child(conn: Any, threads: int, *args: Any) -> None:
    """Child-process body: measure and send a dict back (errors are sent, not raised)."""
    try:
        torch.set_num_threads(threads)
        conn.send(_measure(*args))
    except BaseException as e:  # the parent reports it; a child traceback would only be noise
        conn.send({'error': first_line(e)})
    finally:
        conn.close()


def _in_child(args: tuple, timeout: float) -> dict[str, Any]:
    """Run :func:`_measure` in a spawned child; its answer, or ``{'error': ...}``."""
    ctx = mp.get_context('spawn')
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, *args), daemon=True)
    # the child inherits the environment at start; a fixed mmap threshold makes freed tensors leave RSS at once
    saved = os.environ.get('MALLOC_MMAP_THRESHOLD_')
    os.environ['MALLOC_MMAP_THRESHOLD_'] = str(256 * 1024)
    try:
        process.start()
    except Exception as e:  # noqa: BLE001 - e.g. a module that pickles but not under spawn
        return {'error': f'could not start: {first_line(e)}'}
    finally:
        if saved is None:
            os.environ.pop('MALLOC_MMAP_THRESHOLD_', None)
        else:
            os.environ['MALLOC_MMAP_THRESHOLD_'] = saved
    sender.close()
    try:
        if not receiver.poll(timeout):
            return {'error': f'no answer within {timeout:.0f} s'}
        return receiver.recv()
    except EOFError:
        return {'error': 'the child died without an answer (out of memory?)'}
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()


def measure_peak_memory(
        model_or_name: nn.Module | str,
        input_size: tuple[int, int, int],
        batch_size: int,
        *,
        threads: int | None = None,
        channels_last: bool = False,
        forward: bool = True,
        train: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        timeout: float = 900.0,
        in_process: bool = False,
) -> MemoryResult:
    """Peak memory of one forward pass and / or one training step, in a spawned child process.

    Args:
        model_or_name: A registered name (built in the child) or a module (pickled to the child).
        input_size: (C, H, W).
        batch_size: Batch of the measured step.
        threads: Torch threads in the child; default: this process's count.
        channels_last: Run model and input in channels-last memory format.
        forward: Measure a forward pass.
        train: Measure a training step.
        model_kwargs: Builder arguments for a registered name.
        timeout: Seconds before the child is stopped and the result reports a timeout.
        in_process: Measure in this process instead of a child: no start-up cost, but what this process
            allocated and freed before can hide part of the peak. For tests and already-fresh processes.

    Returns:
        A :class:`MemoryResult`; figures are ``None`` with ``note`` set when they could not be measured.
    """
    if isinstance(model_or_name, str):
        spec: tuple = ('name', model_or_name, dict(model_kwargs or {}))
    elif in_process:
        spec = ('module', copy.deepcopy(model_or_name))
    else:
        try:
            pickle.dumps(model_or_name)
        except Exception as e:  # noqa: BLE001 - any pickling failure means the same thing here
            return MemoryResult(None, None, 'not measured', f'model cannot be pickled to the child: {first_line(e)}')
        spec = ('module', model_or_name)
    measure_args = (spec, tuple(input_size), batch_size, channels_last, forward, train)
    if in_process:
        with num_threads(threads):
            try:
                result = _measure(*measure_args)
            except Exception as e:  # noqa: BLE001
                return MemoryResult(None, None, 'not measured', f'measurement failed: {first_line(e)}')
        return MemoryResult(result['forward_mb'], result['train_mb'], result['method'].replace(
            'in a spawned child', 'in this process'))
    result = _in_child((threads or torch.get_num_threads(), *measure_args), timeout)
    if 'error' in result:
        return MemoryResult(None, None, 'not measured', f'memory child failed: {result["error"]}')
    return MemoryResult(result['forward_mb'], result['train_mb'], result['method'])
