"""Presenting profiles and comparisons: rich tables, JSON / CSV / Markdown, and a speed-vs-cost plot."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ..errors import VisionmixError
from ..reporting import fmt, pyplot
from .core import Comparison, ProfileResult
from .measure import Stats

__all__ = ['FORMATS', 'profile_rows', 'comparison_rows', 'profile_table', 'comparison_table', 'render',
           'format_for_path', 'plot_profiles']

FORMATS = ('table', 'json', 'csv', 'md')
_SUFFIX_FORMATS = {'.json': 'json', '.csv': 'csv', '.md': 'md', '.markdown': 'md'}


def _stat(stats: Stats | None, spec: str = '.1f') -> str:
    return '-' if stats is None else f'{stats.median:{spec}} ± {stats.iqr / 2:{spec}}'


def _size(size: Sequence[int]) -> str:
    return 'x'.join(str(s) for s in size)


def _median(stats: Stats | None) -> float | None:
    return None if stats is None else stats.median


def _iqr(stats: Stats | None) -> float | None:
    return None if stats is None else stats.iqr


def profile_rows(results: Sequence[ProfileResult]) -> list[dict[str, Any]]:
    """One flat row per result (statistics split into median / IQR columns), for CSV and Markdown."""
    rows = []
    for r in results:
        rows.append({
            'model': r.model, 'source': r.source, 'input': _size(r.input_size), 'batch': r.batch_size,
            'threads': r.threads, 'channels_last': r.channels_last, 'compiled': r.compiled,
            'params': r.params, 'trainable_params': r.trainable_params, 'card_params': r.card_params,
            'gmacs': r.gmacs, 'paper_gmacs': r.paper_gmacs, 'macs_dev_pct': r.macs_deviation_pct,
            'latency_ms': _median(r.latency_ms), 'latency_ms_iqr': _iqr(r.latency_ms),
            'infer_img_s': _median(r.infer_img_s), 'infer_img_s_iqr': _iqr(r.infer_img_s),
            'train_img_s': _median(r.train_img_s), 'train_img_s_iqr': _iqr(r.train_img_s),
            'forward_peak_mb': r.forward_peak_mb, 'train_peak_mb': r.train_peak_mb,
            'infer_gflops': r.infer_gflops, 'infer_peak_pct': r.infer_peak_pct,
            'train_gflops': r.train_gflops, 'train_peak_pct': r.train_peak_pct,
            'gemm_peak_gflops': r.gemm_peak_gflops, 'warmup': r.warmup, 'iters': r.iters,
            'macs_counter': r.macs_counter, 'memory_method': r.memory_method, 'memory_note': r.memory_note,
        })
    return rows


def comparison_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """One row per timed pair plus one 'median' row per mode, for CSV and Markdown."""
    rows = []
    for c in comparisons:
        for timing in (c.infer, c.train):
            if timing is None:
                continue
            base = {'a': c.a, 'b': c.b, 'mode': timing.mode, 'input': _size(c.input_size), 'batch': c.batch_size}
            for i, (a_ms, b_ms, ratio) in enumerate(zip(timing.a_ms, timing.b_ms, timing.ratios), 1):
                rows.append({**base, 'pair': str(i), 'a_ms': a_ms, 'b_ms': b_ms, 'ratio_a_over_b': ratio})
            rows.append({**base, 'pair': 'median', 'a_ms': 1e3 * c.batch_size / timing.a_img_s.median,
                         'b_ms': 1e3 * c.batch_size / timing.b_img_s.median, 'ratio_a_over_b': timing.ratio.median})
    return rows


def _caption(results: Sequence[ProfileResult]) -> str:
    r = results[0]
    peak = f'{r.gemm_peak_gflops:.0f} GFLOP/s' if r.gemm_peak_gflops else '-'
    lines = [
        f'MACs: {r.macs_counter}. Dev: vs the card / paper figure, only at the card input size.',
        f'fp32, torch.inference_mode, {r.threads} threads, warm-up {r.warmup}, {r.iters} timed iterations: '
        f'median ± IQR/2. Train step: {r.train_step}.',
        f'GFLOP/s = 2 x MACs x img/s (train: 6 x); % of fp32 GEMM peak {peak} (best large matmul, same threads).',
        f'Memory at batch {r.batch_size}: {r.memory_method}.',
    ]
    lines += [f'{x.model}: memory {x.memory_note}' for x in results if x.memory_note]
    return '\n'.join(lines)


def profile_table(results: Sequence[ProfileResult]) -> Table:
    """A rich table of profile results, with how each figure was obtained in the caption."""
    batch = results[0].batch_size
    table = Table(title='visionmix profile', caption=_caption(results), caption_justify='left', header_style='bold')
    columns = ('model', 'input', 'params (card)', 'GMACs', 'paper', 'dev %', 'latency ms b1', f'img/s b{batch}',
               f'train img/s b{batch}', 'fwd MB', 'train MB', 'GFLOP/s', '% peak')
    for column in columns:
        table.add_column(column, justify='left' if column == 'model' else 'right', no_wrap=column == 'model')
    for r in results:
        card = f' ({r.card_params / 1e6:.2f}M)' if r.card_params is not None else ''
        gflops, pct = (r.infer_gflops, r.infer_peak_pct) if r.infer_gflops is not None else (r.train_gflops,
                                                                                               r.train_peak_pct)
        table.add_row(
            r.model, _size(r.input_size), f'{r.params / 1e6:.2f}M{card}', f'{r.gmacs:.3f}', fmt(r.paper_gmacs, '.3f'),
            fmt(r.macs_deviation_pct, '+.1f'), _stat(r.latency_ms, '.2f'), _stat(r.infer_img_s),
            _stat(r.train_img_s), fmt(r.forward_peak_mb, '.0f'), fmt(r.train_peak_mb, '.0f'), fmt(gflops, '.1f'),
            fmt(pct, '.1f'))
    return table


def comparison_table(c: Comparison) -> Table:
    """A rich table of one comparison: every pair's times and ratio, then the median."""
    table = Table(
        title=f'{c.a} vs {c.b}: input {_size(c.input_size)}, batch {c.batch_size}, {c.threads} threads',
        caption=f'Interleaved A B A B after {c.warmup} warm-up pairs; ratio = A speed / B speed (> 1: A faster), '
                f'per pair; median ± IQR/2.\nA: {c.a_params / 1e6:.2f}M params, {c.a_gmacs:.3f} GMACs; '
                f'B: {c.b_params / 1e6:.2f}M params, {c.b_gmacs:.3f} GMACs ({c.macs_counter}).',
        caption_justify='left', header_style='bold')
    for column in ('mode', 'pair', f'{c.a} ms', f'{c.b} ms', 'ratio A/B'):
        table.add_column(column, justify='right')
    for timing in (c.infer, c.train):
        if timing is None:
            continue
        for i, (a_ms, b_ms, ratio) in enumerate(zip(timing.a_ms, timing.b_ms, timing.ratios), 1):
            table.add_row(timing.mode, str(i), f'{a_ms:.2f}', f'{b_ms:.2f}', f'{ratio:.3f}')
        table.add_row(timing.mode, 'median', f'{1e3 * c.batch_size / timing.a_img_s.median:.2f}',
                      f'{1e3 * c.batch_size / timing.b_img_s.median:.2f}', _stat(timing.ratio, '.3f'), style='bold',
                      end_section=True)
    return table


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _md_cell(value: Any) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.4g}' if abs(value) < 1e6 else f'{value:.0f}'
    return str(value).replace('|', '\\|')


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of flat rows (no library writes these without extra dependencies)."""
    if not rows:
        return ''
    header = list(rows[0])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(_md_cell(row[k]) for k in header) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def render(items: Sequence[ProfileResult] | Sequence[Comparison], fmt: str) -> str:
    """Profiles or comparisons as 'json', 'csv' or 'md' text."""
    if fmt not in ('json', 'csv', 'md'):
        raise VisionmixError(f'unknown format {fmt!r}; choose from json, csv, md')
    comparisons = bool(items) and isinstance(items[0], Comparison)
    if fmt == 'json':
        return json.dumps([item.to_dict() for item in items], indent=2) + '\n'
    rows = comparison_rows(items) if comparisons else profile_rows(items)  # type: ignore[arg-type]
    if fmt == 'csv':
        return _csv(rows)
    if comparisons:
        return markdown_table(rows)
    # the method columns repeat per row; Markdown states them once below the table
    methods = ('macs_counter', 'memory_method', 'memory_note')
    text = markdown_table([{k: v for k, v in row.items() if k not in methods} for row in rows])
    notes = [f'- MACs: {items[0].macs_counter}', f'- memory: {items[0].memory_method}',
             f'- train step: {items[0].train_step}']
    notes += [f'- {r.model}: memory {r.memory_note}' for r in items if r.memory_note]  # type: ignore[union-attr]
    return text + '\n' + '\n'.join(notes) + '\n'


def format_for_path(path: str | Path, fmt: str | None) -> str:
    """The file format: ``fmt`` if given, else from the suffix (.json, .csv, .md)."""
    if fmt not in (None, 'table'):
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise VisionmixError(f'cannot tell the format of {str(path)!r} from its suffix; pass --format json|csv|md')
    return _SUFFIX_FORMATS[suffix]


def plot_profiles(points: Sequence[ProfileResult] | Sequence[Comparison], path: str | Path) -> Path:
    """Save a PNG with two panels, GMACs vs img/s and params vs img/s, every point labelled with its model.

    Throughput is inference at batch N where measured, else training. Comparisons contribute both their models.
    """
    plt = pyplot()
    data: list[tuple[str, float, float, float]] = []  # name, gmacs, params (M), img/s
    label = 'img/s'
    for item in points:
        if isinstance(item, Comparison):
            timing = item.infer or item.train
            label = f'{timing.mode} img/s, batch {item.batch_size}'
            data.append((item.a, item.a_gmacs, item.a_params / 1e6, timing.a_img_s.median))
            data.append((item.b, item.b_gmacs, item.b_params / 1e6, timing.b_img_s.median))
        else:
            stats = item.infer_img_s or item.train_img_s
            if stats is None:
                continue
            label = f'{"inference" if item.infer_img_s else "training"} img/s, batch {item.batch_size}'
            data.append((item.model, item.gmacs, item.params / 1e6, stats.median))
    if not data:
        raise VisionmixError('nothing to plot: no throughput was measured')
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    for ax, index, xlabel in ((axes[0], 1, 'GMACs per image'), (axes[1], 2, 'parameters (M)')):
        xs, ys = [d[index] for d in data], [d[3] for d in data]
        ax.scatter(xs, ys)
        for d in data:
            ax.annotate(d[0], (d[index], d[3]), textcoords='offset points', xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle('visionmix profile: speed vs cost')
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
