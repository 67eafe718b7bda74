"""The study's report: ``results.json`` (every number, full precision), ``report.md`` (verdicts first) and the plots
that carry each conclusion."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import atomic_write
from ..engine.compare import point_style, scatter_figure
from ..reporting import fmt, pyplot
from ..sizes import check_size, size_str
from .stats import HELD, NOT_HELD

__all__ = ['write_study_report', 'PLOTS']

PLOTS = ('top1_vs_macs.png', 'pair_differences.png', 'loss_vs_accuracy.png', 'generalization_gap.png')
_VERDICT_COLOURS = {HELD: 'tab:green', NOT_HELD: 'tab:red'}


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def _pair_figure(results: dict[str, Any], path: Path) -> None:
    """Every pair's mean paired difference with its 95% interval, coloured by verdict (green held, red not held)."""
    plt = pyplot()
    pairs = results['pairs']
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(pairs) + 1.5), layout='constrained')
    for i, p in enumerate(reversed(pairs)):
        colour = _VERDICT_COLOURS.get(p['verdict'], 'tab:gray')
        low, high = p['ci'] if p['ci'] else (p['mean'], p['mean'])
        ax.errorbar([p['mean']], [i], xerr=[[p['mean'] - low], [high - p['mean']]], fmt='o', color=colour, capsize=4)
        ax.plot(p['diffs'], [i] * len(p['diffs']), 'x', color='black', alpha=0.5, markersize=5)
    ax.axvline(0, color='black', lw=0.8)
    ax.set_yticks(range(len(pairs)), [f'({p["conclusion"]}) {p["better"]} vs {p["other"]}: {p["metric_label"]}'
                                      for p in reversed(pairs)], fontsize=8)
    ax.set_xlabel('paired difference in the claimed direction (> 0 supports SPACH); o mean with 95% CI, x seeds')
    ax.set_title(_setting(results), fontsize=9)
    ax.grid(axis='x', alpha=0.3)
    _save(fig, path)


def _loss_accuracy_figure(results: dict[str, Any], labels: list[str], path: Path) -> None:
    """Conclusion 4: val top-1 against train loss along training, each seed a line (epochs run right to left)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), layout='constrained')
    configs = {c['label']: c for c in results['configs']}
    for i, label in enumerate(labels):
        style = point_style(i)
        for k, run in enumerate(configs[label]['runs']):
            h = run['history']
            ax.plot([e['train_loss'] for e in h], [e['val_top1'] for e in h], marker=style['marker'],
                    color=style['color'], markersize=3, alpha=0.8, label=label if k == 0 else None)
    ax.invert_xaxis()
    ax.set(xlabel='train loss (lower = more capacity used)', ylabel='val top-1 (%)')
    ax.set_title(f'conv vs attention: val accuracy at a given train loss\n{_setting(results)}', fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _gap_figure(results: dict[str, Any], path: Path) -> None:
    """Conclusion 3: the train / val top-1 gap of every configuration (mean, sd over seeds, seeds as dots)."""
    plt = pyplot()
    configs = results['configs']
    fig, ax = plt.subplots(figsize=(9, 4), layout='constrained')
    for i, c in enumerate(configs):
        gaps = [r['gap'] for r in c['runs']]
        colour = 'tab:orange' if 'MLP' in c['label'] else 'tab:blue'
        ax.bar(i, c['gap_mean'], yerr=c['gap_sd'] or 0, color=colour, alpha=0.7, capsize=3)
        ax.plot([i] * len(gaps), gaps, 'k.', markersize=4)
    ax.set_xticks(range(len(configs)), [c['label'] for c in configs], rotation=30, ha='right', fontsize=8)
    ax.set_ylabel('train top-1 - val top-1 (points)')
    ax.set_title(f'generalization gap (MLPs orange)\n{_setting(results)}', fontsize=9)
    ax.axhline(0, color='black', lw=0.8)
    ax.grid(axis='y', alpha=0.3)
    _save(fig, path)


def _setting(results: dict[str, Any]) -> str:
    return (f'{results["dataset"]}, {size_str(check_size(results["img_size"]))}, {results["epochs"]} epochs, '
            f'seeds {results["seeds"]}')


def write_study_report(results: dict[str, Any], out: Path, conv_attn: list[str]) -> list[Path]:
    """Write results.json, the plots and report.md into ``out``; returns their paths."""
    atomic_write(out / 'results.json', lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    rows = [dict(label=c['label'], gmacs=c['macs'] / 1e9, top1_mean=c['top1_mean'], top1_std=c['top1_sd'])
            for c in results['configs']]
    _save(scatter_figure(rows, 'gmacs', 'MMACs per image (log)', False, scale=1e3, title=_setting(results)),
          out / PLOTS[0])
    _pair_figure(results, out / PLOTS[1])
    _loss_accuracy_figure(results, conv_attn, out / PLOTS[2])
    _gap_figure(results, out / PLOTS[3])
    text = '\n'.join(report_lines(results)) + '\n'
    atomic_write(out / 'report.md', lambda tmp: Path(tmp).write_text(text))
    return [out / 'report.md', out / 'results.json'] + [out / p for p in PLOTS]


def _ci(p: dict[str, Any]) -> str:
    return f'[{p["ci"][0]:+.2f}, {p["ci"][1]:+.2f}]' if p['ci'] else 'none (n < 2)'


def report_lines(results: dict[str, Any]) -> list[str]:
    """The Markdown report: verdicts, pairs with their cost, configurations, plots, method, recipe."""
    lines = ['# SPACH study: five conclusions, tested', '',
             f'Every configuration trained with one recipe on `{results["dataset"]}` at '
             f'{size_str(check_size(results["img_size"]))} for {results["epochs"]} epoch(s), seeds '
             f'{", ".join(map(str, results["seeds"]))}; differences paired by seed, 95% t intervals. '
             f'{results["baseline_text"]}', '',
             f'Time: {results["elapsed_seconds"] / 60:.1f} min in the last invocation ({results["runs_trained"]} '
             f'run(s) trained, {results["runs_reused"]} reused); load average {results["load_text"]}.', '',
             '## Verdicts', '', '| # | SPACH says | tested here as | verdict | pairs: mean difference [95% CI] |',
             '|---|---|---|---|---|']
    for c in results['conclusions']:
        pairs = '; '.join(f'{p["better"]} vs {p["other"]}: {p["mean"]:+.2f} {_ci(p)} {p["verdict"]}'
                          for p in results['pairs'] if p['conclusion'] == c['key'])
        lines.append(f'| {c["key"]} | {c["claim"]} | {c["test"]} | **{c["verdict"]}** | {pairs} |')
    lines += ['', '![pair differences](pair_differences.png)', '', '## Pairs and their cost', '',
              '| # | claim side | other | metric (difference in the claimed direction) | per seed | mean | 95% CI | '
              'verdict | params ratio | MACs ratio |', '|---|---|---|---|---|---:|---|---|---:|---:|']
    for p in results['pairs']:
        lines.append(f'| {p["conclusion"]} | {p["better"]} | {p["other"]} | {p["metric_label"]} | '
                     f'{", ".join(f"{d:+.2f}" for d in p["diffs"])} | {p["mean"]:+.2f} | {_ci(p)} | {p["verdict"]} | '
                     f'{p["params_ratio"]:.3f} | {p["macs_ratio"]:.3f} |')
    lines += ['', f'Ratios are claim side / other at the study\'s input size; every pair is within '
              f'{results["cost_tolerance"]:.0%} in both unless a note below says otherwise.', '']
    lines += _config_lines(results)
    lines += ['', '![top-1 vs MACs](top1_vs_macs.png)', '', '![train loss vs val accuracy](loss_vs_accuracy.png)', '',
              '![generalization gap](generalization_gap.png)', '', '## Method', '']
    lines += [f'- {m}' for m in results['method']]
    if results.get('notes'):
        lines += ['', '## Notes', ''] + [f'- {n}' for n in results['notes']]
    lines += ['', '## Command', '', '```', results['command'], '```', '', '## Recipe (identical for every run)', '',
              '```yaml', yaml.safe_dump(results['recipe'], sort_keys=False).rstrip(), '```']
    return lines


def _config_lines(results: dict[str, Any]) -> list[str]:
    lines = ['## Configurations', '',
             '| config | model | net_arch and options | params | MMACs | val top-1 % | train top-1 % | gap | '
             'train loss | n |', '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for c in results['configs']:
        options = {k: v for k, v in c['kwargs'].items()}
        lines.append(f'| {c["label"]} | `{c["model"]}` | `{json.dumps(options)}` | {c["params"]:,} | '
                     f'{c["macs"] / 1e6:.2f} | {c["top1_mean"]:.2f} +- {fmt(c["top1_sd"], ".2f")} | '
                     f'{c["train_top1_mean"]:.1f} | {c["gap_mean"]:.1f} | {c["train_loss_mean"]:.3f} | {c["n"]} |')
    return lines
