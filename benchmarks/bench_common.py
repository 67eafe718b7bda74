"""Shared machinery of the ``bench_*.py`` scripts: visionmix against an official implementation, same weights.

Every script builds pairs (official model, visionmix model), randomises the official weights (norm affines
included), sets its BatchNorm statistics to those of a random batch (:func:`calibrate_bn`), copies them into ours
through the family's ``checkpoint_filter_fn`` and then, per pair:

* fidelity: the largest output difference over the largest official output in eval mode, in train mode (batch
  statistics) and of the gradient with respect to the input (train mode, mean-square loss);
* peak memory of one forward pass and of one training step, both models measured the same way in this process;
* speed: :func:`visionmix.profile.compare_speed`, visionmix and official interleaved A B A B in one process, the
  median of the per-pair throughput ratios (above 1: visionmix is faster), for inference and for a training step
  (zero_grad, forward, cross-entropy, backward, AdamW step). With ``--processes N`` each model is timed in N fresh
  processes one after another and the report gives the median of their medians with the lowest and highest: the
  time of memory-bound CPU code depends on the allocator's state (how much freed memory glibc kept rather than
  returning it to the kernel, to be faulted in again on the next allocation), which differs from process to
  process and with whatever ran before in it; measured here, the same pair gave 1.12x in one process and 1.26x in
  another.

The scripts write a Markdown table with the exact command line, the visionmix commit and the official commit.
Nothing here imports official code: each script loads its own.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from visionmix.profile import compare_speed
from visionmix.profile.core import _cpu_name
from visionmix.profile.measure import TRAIN_STEP
from visionmix.profile.memory import measure_peak_memory

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / 'benchmarks' / 'results'
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def add_common_args(parser: argparse.ArgumentParser, out: str) -> None:
    """The measurement options every script shares; ``out`` is the default Markdown file in benchmarks/results."""
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=12, help='timed interleaved pairs (median over them)')
    parser.add_argument('--mode', choices=('infer', 'train', 'both'), default='both')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--fidelity-only', action='store_true',
                        help='only compare outputs and gradients (no memory, no speed): for the variants a card cites')
    parser.add_argument('--out', type=Path, default=RESULTS / out, help='Markdown table to write ("-": none)')
    parser.add_argument('--official-commit', default=None,
                        help='commit of the official checkout, when it is not a git work tree')
    parser.add_argument('--processes', type=positive_int, default=1,
                        help='time each model in this many fresh processes, one after another (see the module doc)')
    parser.add_argument('--row-json', type=Path, default=None, help=argparse.SUPPRESS)  # a child's result file


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Random weights, norm affines and BN statistics, so a comparison does not ride on init values.

    Matrices and kernels get ``N(0, 1 / fan_in)`` (activations keep their scale through deep stacks), norm weights
    ``U(0.5, 1.5)``, running variances ``U(0.5, 1.5)``, everything else (biases, running means, layer scales)
    ``0.1 * N(0, 1)``.
    """
    g = torch.Generator().manual_seed(seed)
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, NORMS) and m.weight is not None}
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            if id(t) in norm_weights or name.endswith('running_var'):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim >= 2 and t.shape[0] > 1:
                t.copy_(torch.randn(t.shape, generator=g) / (t.numel() // t.shape[0]) ** 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))


@torch.no_grad()
def calibrate_bn(model: nn.Module, size: tuple[int, int], seed: int = 2) -> None:
    """Set every BatchNorm's running statistics to the batch statistics of one random batch (8 images).

    Random running statistics do not match the activations they normalise, and through a deep BN network the
    mismatch compounds: Hire-MLP-Small's eval logits reach ~1e4, where float rounding differences of any two
    implementations are amplified to 1e-1 (the train-mode outputs, with batch statistics, agree to 1e-6). Trained
    statistics match their data, and so do these.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    saved = [(m, m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    was_training = model.training
    model.train()
    model(torch.randn(8, 3, *size, generator=torch.Generator().manual_seed(seed)))
    model.train(was_training)
    for m, momentum, training in saved:
        m.momentum = momentum
        m.train(training)


def _first_tensor(out: object) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@dataclass
class Fidelity:
    """Largest differences of visionmix from the official model, relative to the official output's largest value."""

    eval_abs: float
    eval_rel: float
    train_rel: float
    grad_rel: float


def fidelity(official: nn.Module, ours: nn.Module, x: torch.Tensor) -> Fidelity:
    """Eval outputs, train-mode outputs (batch statistics) and input gradients of both models, compared.

    The train-mode pass runs on copies, so the running statistics of the timed models stay untouched.
    """
    official.eval()
    ours.eval()
    with torch.no_grad():
        ref, out = _first_tensor(official(x)), _first_tensor(ours(x))
    eval_abs, eval_rel = (ref - out).abs().max().item(), _rel(out, ref)
    grads, outs = [], []
    for model in (copy.deepcopy(official), copy.deepcopy(ours)):
        model.train()
        xi = x.clone().requires_grad_(True)
        y = _first_tensor(model(xi))
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append(xi.grad)
    return Fidelity(eval_abs, eval_rel, _rel(outs[1], outs[0]), _rel(grads[1], grads[0]))


def _limit_mmap_threshold() -> None:
    """Serve large allocations through mmap, so freed tensors leave RSS at once and peaks can be measured here."""
    try:
        ctypes.CDLL('libc.so.6').mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD; also stops its dynamic growth
    except (OSError, AttributeError):
        pass


def peak_memory(model: nn.Module, input_size: tuple[int, int, int], batch: int, threads: int) -> tuple[float, float]:
    """(forward, training step) peak RSS in MiB above the resident model and input, measured in this process.

    In-process (the official classes live in files loaded by path, which a spawned child could not unpickle);
    with the mmap threshold fixed, freed tensors are returned to the kernel, so the peak of one step is its own.
    """
    _limit_mmap_threshold()
    result = measure_peak_memory(model, input_size, batch, threads=threads, in_process=True)
    return (float('nan') if result.forward_mb is None else result.forward_mb,
            float('nan') if result.train_mb is None else result.train_mb)


@dataclass
class Row:
    """One model's comparison."""

    name: str
    input_size: tuple[int, int, int]
    fid: Fidelity
    infer: tuple[float, float, float, float, float] | None = None  # ratio median, q1, q3, ours img/s, official img/s
    train: tuple[float, float, float, float, float] | None = None
    runs: dict[str, list[float]] = field(default_factory=dict)  # 'infer' / 'train' -> each process's median ratio
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # 'official' / 'visionmix' -> (fwd, train)


def compare(name: str, official: nn.Module, ours: nn.Module, filter_fn: Callable, img: int | tuple[int, int],
            args: argparse.Namespace, check: float = 1e-4) -> Row:
    """Randomise ``official``, load its weights into ``ours``, then measure fidelity, memory and speed.

    Raises:
        SystemExit: The outputs differ by more than ``check`` (relative): timing them would be meaningless.
    """
    size = (img, img) if isinstance(img, int) else tuple(img)
    randomise(official)
    calibrate_bn(official, size)
    ours.load_state_dict(filter_fn(official.state_dict(), ours), strict=True)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    fid = fidelity(official, ours, x)
    if fid.eval_rel > check:
        sys.exit(f'{name}: outputs differ (max rel diff {fid.eval_rel:.3g}); timing would be meaningless')
    row = Row(name, (3, *size), fid)
    if args.fidelity_only:
        print_row(row)
        return row
    if not args.no_memory:
        for label, model in (('official', official), ('visionmix', ours)):
            row.memory[label] = peak_memory(model, row.input_size, args.batch, args.threads)
    if args.processes > 1:
        _time_in_processes(row, args)
    else:
        result = compare_speed(ours, official, img_size=row.input_size, batch_size=args.batch, threads=args.threads,
                               warmup=args.warmup, iters=args.iters, mode=args.mode,
                               names=(f'visionmix {name}', f'official {name}'))
        for kind in ('infer', 'train'):
            pairs = getattr(result, kind)
            if pairs is not None:
                r = pairs.ratio
                setattr(row, kind, (r.median, r.q1, r.q3, pairs.a_img_s.median, pairs.b_img_s.median))
    if args.row_json is not None:
        args.row_json.write_text(json.dumps({'infer': row.infer, 'train': row.train}))
    print_row(row)
    return row


def _child_command(name: str, row_json: Path) -> list[str]:
    """This script's command line for timing ``name`` alone in a new process, its result written to ``row_json``."""
    dropped = {'--out', '--processes', '--row-json'}
    argv, given, i = [], sys.argv[1:], 0
    while i < len(given):
        arg = given[i]
        if arg == '--models':  # the model list: every value up to the next option
            i += 1
            while i < len(given) and not given[i].startswith('--'):
                i += 1
            continue
        if arg in dropped:
            i += 2
            continue
        if arg.split('=')[0] not in dropped | {'--models'}:
            argv.append(arg)
        i += 1
    return [sys.executable, sys.argv[0], *argv, '--models', name, '--processes', '1', '--out', '-', '--no-memory',
            '--row-json', str(row_json)]


def _time_in_processes(row: Row, args: argparse.Namespace) -> None:
    """Time ``row``'s model in ``args.processes`` fresh processes; keep the median of their medians and the range."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.processes):
            path = Path(tmp) / f'{run}.json'
            done = subprocess.run(_child_command(row.name, path), capture_output=True, text=True)
            if done.returncode != 0 or not path.is_file():
                sys.exit(f'{row.name}: timing process {run + 1} failed:\n{done.stderr[-2000:]}')
            results.append(json.loads(path.read_text()))
            print(f'    process {run + 1}/{args.processes}: ' + ', '.join(
                f'{kind} {results[-1][kind][0]:.2f}x' for kind in ('infer', 'train') if results[-1][kind]))
            sys.stdout.flush()
    for kind in ('infer', 'train'):
        measured = [r[kind] for r in results if r[kind]]
        if measured:
            ratios = [m[0] for m in measured]
            row.runs[kind] = ratios
            setattr(row, kind, (statistics.median(ratios), min(ratios), max(ratios),
                                statistics.median(m[3] for m in measured), statistics.median(m[4] for m in measured)))


def print_row(row: Row) -> None:
    f = row.fid
    print(f'{row.name}  {"x".join(map(str, row.input_size[1:]))}  max rel diff eval {f.eval_rel:.1e} (abs '
          f'{f.eval_abs:.1e}), train {f.train_rel:.1e}, input grad {f.grad_rel:.1e}')
    for kind in ('infer', 'train'):
        r = getattr(row, kind)
        if r is not None:
            print(f'    {kind:5s} speed visionmix / official: {r[0]:.2f}x (IQR {r[1]:.2f}-{r[2]:.2f}; '
                  f'{r[3]:.1f} vs {r[4]:.1f} img/s)')
    for label, (fwd, train) in row.memory.items():
        print(f'    peak memory {label:9s}: forward {fwd:.0f} MiB, train step {train:.0f} MiB')
    sys.stdout.flush()


def _git(*args: str, cwd: Path) -> str | None:
    try:
        return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def official_commit(repo: Path, given: str | None) -> str:
    """The checkout's commit (``git rev-parse HEAD``), or else the one given on the command line."""
    top = _git('rev-parse', '--show-toplevel', cwd=repo)
    if top and Path(top).resolve() == repo.resolve():  # not the commit of some enclosing repository
        return _git('rev-parse', 'HEAD', cwd=repo) or 'unknown'
    return given or 'unknown (not a git work tree: pass --official-commit)'


def _visionmix_commit() -> str:
    commit = _git('rev-parse', 'HEAD', cwd=REPO_ROOT) or 'unknown'
    dirty = _git('status', '--porcelain', '--untracked-files=no', 'src', cwd=REPO_ROOT)
    return f'{commit} (+ uncommitted changes in src/)' if dirty else commit


def _load() -> str:
    try:
        return 'load average ' + ', '.join(Path('/proc/loadavg').read_text().split()[:3])
    except OSError:
        return 'unknown'


_START_LOAD = _load()  # the scripts import this module first thing


def _fmt_ratio(r: tuple[float, ...] | None, target: float) -> str:
    if r is None:
        return '-'
    # three decimals where two would round a miss up to the target (0.998 -> "1.00x below target")
    digits = 3 if r[0] < target and round(r[0], 2) >= target else 2
    return f'**{r[0]:.{digits}f}x** ({r[1]:.2f}-{r[2]:.2f}){"" if r[0] >= target else " below target"}'


def _fmt_mem(row: Row, i: int) -> str:
    if not row.memory:
        return '-'
    return f'{row.memory["visionmix"][i]:.0f} / {row.memory["official"][i]:.0f}'


def markdown(title: str, rows: Sequence[Row], args: argparse.Namespace, official: Sequence[tuple[str, str]],
             targets: tuple[float, float]) -> str:
    """The report: command, commits, setup, then one table row per model."""
    command = 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)
    lines = [
        f'# {title}', '',
        'Command (from the repository root):', '', f'    {command}', '',
        f'- visionmix commit: {_visionmix_commit()}',
        *(f'- official: {label} at commit {commit}' for label, commit in official),
        f'- measured {datetime.date.today().isoformat()} on {_cpu_name()} ({platform.machine()}), torch '
        f'{torch.__version__}, {args.threads} threads, fp32, batch {args.batch}; absolute img/s '
        f'move with the machine (other jobs, clocks; see the load below), only the interleaved ratios compare',
        f'- speed: visionmix and official interleaved A B A B in one process, {args.warmup} warm-up and '
        f'{args.iters} timed pairs; ' + (
            f'each model in {args.processes} fresh processes, one after another; the ratio is the median over the '
            f'processes of each one\'s median per-pair throughput ratio (lowest-highest process in brackets; every '
            f'process listed below the table)' if args.processes > 1 else
            'the ratio is the median (IQR) of the per-pair throughput ratios') +
        f', above 1 = visionmix faster; targets: inference >= {targets[0]:.2f}x, train step >= {targets[1]:.2f}x',
        f'- train step: {TRAIN_STEP}',
        '- memory: peak RSS above the resident model and input (MiB), visionmix / official, one eval forward '
        '(inference_mode) and one first training step (gradients and AdamW state included)',
        '- fidelity, with the same random weights and norm statistics on a batch of 2: abs = max |visionmix - '
        'official| of the eval outputs; rel = that over max |official|, for the eval outputs, the train-mode outputs '
        '(batch statistics) and the gradient w.r.t. the input (train mode)',
        f'- machine load (1 / 5 / 15 min) at the start: {_START_LOAD}; at the end: {_load()}', '',
        '| model | input | inference ratio | img/s ours / official | train-step ratio | img/s ours / official '
        '| fwd peak MiB | train peak MiB | abs diff eval | rel diff eval | rel diff train | rel diff grad |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        f = row.fid
        speeds = [(f'{r[3]:.1f} / {r[4]:.1f}' if r else '-') for r in (row.infer, row.train)]
        lines.append(
            f'| {row.name} | {"x".join(map(str, row.input_size[1:]))} | {_fmt_ratio(row.infer, targets[0])} | '
            f'{speeds[0]} | {_fmt_ratio(row.train, targets[1])} | {speeds[1]} | {_fmt_mem(row, 0)} | '
            f'{_fmt_mem(row, 1)} | {f.eval_abs:.1e} | {f.eval_rel:.1e} | {f.train_rel:.1e} | {f.grad_rel:.1e} |')
    runs = [f'- {row.name}: ' + '; '.join(f'{kind} ' + ', '.join(f'{r:.2f}x' for r in ratios)
                                          for kind, ratios in row.runs.items()) for row in rows if row.runs]
    if runs:
        lines += ['', 'Per process (median per-pair ratio of each):', '', *runs]
    return '\n'.join(lines) + '\n'


def write_report(text: str, args: argparse.Namespace, notes: str = '') -> None:
    if str(args.out) == '-':
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + (f'\n{notes.strip()}\n' if notes else ''))
    print(f'wrote {args.out}')
