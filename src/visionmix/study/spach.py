"""``visionmix study spach``: SPACH's five conclusions (Zhao et al., "A Battle of Network Structures", arXiv
2108.13002) as controlled, cost-matched, multi-seed experiments on data where they have an answer.

Ten configurations of the SPACH skeleton (:data:`CONFIGS`) make eleven pairs (:data:`CONCLUSIONS`), each pair within
:data:`COST_TOLERANCE` in parameters and MACs at the study's input size:

1. multi-stage beats single-stage: Conv-MS vs Conv-SS, Attn-MS vs Attn-SS, MLP-MS vs MLP-SS (val top-1);
2. local modelling (the depthwise-conv CPE bypass) helps: Attn-MS vs Attn-MS-noCPE, MLP-MS vs MLP-MS-noCPE;
3. the MLP overfits, and multi-stage and weight sharing reduce it: the train / val gap of MLP-MS-shared vs MLP-MS
   and of MLP-MS vs MLP-SS (smaller is the claim);
4. convolution generalises better, attention has more capacity: Attn-MS reaches a lower train loss than Conv-MS,
   and Conv-MS has the higher val top-1 at the lowest train loss both reached;
5. a hybrid (conv early, attention late) beats both at equal cost: Hybrid-MS vs Conv-MS and vs Attn-MS.

Every run is trained by :mod:`visionmix.engine.compare`'s machinery (one recipe, reuse of finished runs, resume);
this module is the configuration, the statistics (:mod:`visionmix.study.stats`) and the report.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..engine.building import build_model
from ..engine.compare import claim_output, shared_recipe
from ..engine.config import TrainConfig
from ..engine.runs import StudyEntry, check_jobs, duration, train_grid
from ..errors import VisionmixError
from ..profile import count_macs, count_params
from ..sizes import hw
from .report import write_study_report
from .stats import LEVEL, combine_verdicts, paired_difference

__all__ = ['CONFIGS', 'CONCLUSIONS', 'Pair', 'Conclusion', 'STUDY_RECIPE', 'QUICK_RECIPE', 'COST_TOLERANCE',
           'StudyError', 'config_costs', 'pair_costs', 'spach_study', 'top1_at_equal_loss', 'analyse']


class StudyError(VisionmixError):
    """A study that cannot run as asked."""


COST_TOLERANCE = 0.15  # pairs differ by at most this share in params and in MACs (at the design input size)
DESIGN_IMG_SIZE = 48
# Layer scale on the token-mixer branch starts at 0.1 rather than the model's default 1e-4: with 1e-4 the attention
# and MLP mixers start switched off (those models start as the conv model, 'pass' + CPE) and a study run has only a
# few hundred steps to grow them. The same for every configuration (the conv model has no token mixer, so it is
# unaffected); its effect on the verdicts was not measured separately.
LAYER_SCALE_INIT = 0.1
_COMMON: dict[str, Any] = dict(layer_scale_init=LAYER_SCALE_INIT)


def _ss(spatial: str, depth: int, width: int, **options: Any) -> dict[str, Any]:
    """Single stage, patch 8: a 6x6 grid at 48 px, the resolution of the multi-stage models' middle stage (as
    SPACH's 14x14 sits at stage 3 of 4 at 224 px)."""
    return dict(net_arch=[[spatial, depth]], embed_dim=width, num_heads=2, patch_size=8, **_COMMON, **options)


def _ms(width: int, *runs: tuple[str, int], **options: Any) -> dict[str, Any]:
    """Three stages, patch 4 (12, 6, 3 tokens a side at 48 px), widths C, 2C, 4C."""
    return dict(net_arch=[list(r) for r in runs], embed_dim=width, num_heads=2, **_COMMON, **options)


_MLP = dict(token_ratio=0.25)  # token-MLP hidden width N/4 (SPACH: N/2), so the MLPs can be cost-matched (below)
_ATTN_MS = _ms(16, ('attn', 2), ('attn', 1), ('attn', 2))
_MLP_MS = _ms(28, ('mlp', 3), ('mlp', 2), ('mlp', 1), **_MLP)

# Widths and depths solved so that every pair is within COST_TOLERANCE at 48 px (tests/test_study.py checks it).
# The attention and MLP multi-stage models use their spatial function in every stage (SPACH's own put conv in stage
# 1): then cpe=False removes exactly the conv bypass (here the conv model *is* 'pass' + CPE, so a conv stage would
# lose its conv too) and shared_spatial applies (it refuses a stage of 'pass').
CONFIGS: list[StudyEntry] = [
    StudyEntry('Conv-SS', 'spach', _ss('pass', 8, 48), 'conv, single stage'),
    StudyEntry('Attn-SS', 'spach', _ss('attn', 4, 48), 'attention, single stage'),
    StudyEntry('MLP-SS', 'spach', _ss('mlp', 7, 64, **_MLP), 'token MLP, single stage'),
    StudyEntry('Conv-MS', 'spach_ms', _ms(24, ('pass', 4), ('pass', 2), ('pass', 1)), 'conv, multi-stage'),
    StudyEntry('Attn-MS', 'spach_ms', _ATTN_MS, 'attention, multi-stage'),
    StudyEntry('MLP-MS', 'spach_ms', _MLP_MS, 'token MLP, multi-stage'),
    StudyEntry('Attn-MS-noCPE', 'spach_ms', dict(_ATTN_MS, cpe=False), 'attention, multi-stage, no CPE'),
    StudyEntry('MLP-MS-noCPE', 'spach_ms', dict(_MLP_MS, cpe=False), 'token MLP, multi-stage, no CPE'),
    StudyEntry('MLP-MS-shared', 'spach_ms', dict(_MLP_MS, shared_spatial=True), 'token MLP shared within a stage'),
    StudyEntry('Hybrid-MS', 'spach_ms', _ms(20, ('pass', 6), ('pass', 3), ('attn', 1)),
               'conv stages 1-2, attention stage 3'),
]

# One recipe for every run: the training budget, and no random-resized crop (it moves the digit, and SPACH's patch
# stems did not learn moved digits in this budget; see visionmix.data.clutter). Flips / RandAugment stay as the
# dataset's own recipe has them (none for cluttered-digits). One torch thread per run: runs train side by side.
# Batch 16: more optimiser steps per epoch for these slow starters (batch 32 was not re-measured on the present data).
# Measured with one run at a time on a loaded 2-core machine: a run of the default study takes ~30-50 s, of --quick
# ~10-18 s (the README's study section has the wall times).
STUDY_RECIPE: dict[str, Any] = dict(
    dataset='cluttered-digits:2000', img_size=DESIGN_IMG_SIZE, epochs=6, batch_size=16, opt='adamw', lr=2e-3,
    weight_decay=0.05, warmup_epochs=1, min_lr=1e-5, smoothing=0.1, scale=[1.0, 1.0], ratio=[1.0, 1.0],
    drop_path=0.0, mixup=0.0, cutmix=0.0, model_ema=False, clip_grad=None, threads=1, seed=0)
QUICK_RECIPE: dict[str, Any] = dict(STUDY_RECIPE, dataset='cluttered-digits:1000', epochs=4)
DEFAULT_SEEDS, QUICK_SEEDS = 3, 3


@dataclass(frozen=True)
class Pair:
    """One controlled comparison: SPACH says ``better`` beats ``other`` on ``metric`` (see :data:`METRICS`)."""

    better: str
    other: str
    metric: str


@dataclass(frozen=True)
class Conclusion:
    """One of SPACH's conclusions, how it is tested here, and its pairs (held only if every pair held)."""

    key: str
    claim: str
    test: str
    pairs: tuple[Pair, ...]


CONCLUSIONS: list[Conclusion] = [
    Conclusion('1', 'multi-stage beats single-stage', 'val top-1, MS minus SS, for conv, attention and MLP', (
        Pair('Conv-MS', 'Conv-SS', 'top1'), Pair('Attn-MS', 'Attn-SS', 'top1'), Pair('MLP-MS', 'MLP-SS', 'top1'))),
    Conclusion('2', 'local modelling (the depthwise-conv CPE) is cheap and improves accuracy',
               'val top-1, with minus without CPE, attention and MLP', (
                   Pair('Attn-MS', 'Attn-MS-noCPE', 'top1'), Pair('MLP-MS', 'MLP-MS-noCPE', 'top1'))),
    Conclusion('3', 'the MLP overfits; multi-stage and weight sharing reduce it',
               'train-val top-1 gap: plain minus shared, SS minus MS', (
                   Pair('MLP-MS-shared', 'MLP-MS', 'gap'), Pair('MLP-MS', 'MLP-SS', 'gap'))),
    Conclusion('4', 'conv generalises better, attention has more capacity',
               'final train loss (conv minus attention) and val top-1 at equal train loss (conv minus attention)', (
                   Pair('Attn-MS', 'Conv-MS', 'train_loss'), Pair('Conv-MS', 'Attn-MS', 'top1_at_equal_loss'))),
    Conclusion('5', 'a hybrid (conv early, attention late) beats pure conv and pure attention at equal cost',
               'val top-1, hybrid minus each',
               (Pair('Hybrid-MS', 'Conv-MS', 'top1'), Pair('Hybrid-MS', 'Attn-MS', 'top1'))),
]


# ------------------------------------------------------------------------------------------------------ metrics

def _last(run: dict[str, Any], key: str) -> float:
    return float(run['history'][-1][key])


def _val_at_loss(history: list[dict[str, Any]], level: float) -> float:
    """Val top-1 where the train loss first reaches ``level``, interpolated linearly between epochs."""
    prev = None
    for row in history:
        if row['train_loss'] <= level:
            if prev is None or prev['train_loss'] == row['train_loss']:
                return float(row['val_top1'])
            t = (prev['train_loss'] - level) / (prev['train_loss'] - row['train_loss'])
            return float(prev['val_top1'] + t * (row['val_top1'] - prev['val_top1']))
        prev = row
    return float(history[-1]['val_top1'])  # not reached (cannot happen for the level used below)


def top1_at_equal_loss(better: dict[str, Any], other: dict[str, Any]) -> float:
    """Val top-1 of ``better`` minus ``other`` at the lowest train loss both runs reached (SPACH's figure of val
    accuracy against train loss, read at one loss)."""
    level = max(min(r['train_loss'] for r in better['history']), min(r['train_loss'] for r in other['history']))
    return _val_at_loss(better['history'], level) - _val_at_loss(other['history'], level)


# metric -> (label, advantage of the claim's side in one seed: positive supports SPACH)
METRICS: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, Any]], float]]] = {
    'top1': ('val top-1 (points)', lambda a, b: float(a['top1']) - float(b['top1'])),
    'gap': ('train-val gap, other minus claim side (points)',
            lambda a, b: (_last(b, 'train_top1') - b['top1']) - (_last(a, 'train_top1') - a['top1'])),
    'train_loss': ('final train loss, other minus claim side',
                   lambda a, b: _last(b, 'train_loss') - _last(a, 'train_loss')),
    'top1_at_equal_loss': ('val top-1 at equal train loss (points)', top1_at_equal_loss),
}


# ---------------------------------------------------------------------------------------------------------- cost

def config_costs(entries: list[StudyEntry], img_size: Any, num_classes: int = 10) -> dict[str, tuple[int, int]]:
    """``{label: (params, MACs per image)}`` of every configuration built for ``img_size`` (exact counts)."""
    h, w = hw(img_size)
    out = {}
    for e in entries:
        model = build_model(e.model, num_classes, img_size, e.kwargs)
        out[e.label] = (count_params(model), count_macs(model, (3, h, w)))
    return out


def pair_costs(costs: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """Params and MACs ratio (claim side / other) of every pair, and whether both are within the tolerance."""
    rows = []
    for c in CONCLUSIONS:
        for p in c.pairs:
            (pa, ma), (pb, mb) = costs[p.better], costs[p.other]
            rows.append(dict(conclusion=c.key, better=p.better, other=p.other, params_ratio=pa / pb,
                             macs_ratio=ma / mb, matched=_within(pa, pb) and _within(ma, mb)))
    return rows


def _within(a: float, b: float) -> bool:
    return abs(a - b) <= COST_TOLERANCE * max(a, b)


# ------------------------------------------------------------------------------------------------------ analysis

def _config_record(entry: StudyEntry, cost: tuple[int, int], runs: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One configuration: its cost, per-seed metrics (with the curves) and their mean / sd over seeds."""
    per_seed = []
    for seed, s in runs:
        train_top1 = _last(s, 'train_top1')
        per_seed.append(dict(seed=seed, val_top1=s['top1'], best_val_top1=s['best_top1'], train_top1=train_top1,
                             gap=train_top1 - s['top1'], train_loss=_last(s, 'train_loss'),
                             val_loss=_last(s, 'val_loss'), train_seconds=s['train_seconds'],
                             history=[{k: row[k] for k in ('epoch', 'train_loss', 'train_top1', 'val_loss', 'val_top1')}
                                      for row in s['history']]))

    def mean_sd(key: str) -> tuple[float, float | None]:
        values = [r[key] for r in per_seed]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    (top1, top1_sd), (gap, gap_sd) = mean_sd('val_top1'), mean_sd('gap')
    return dict(label=entry.label, model=entry.model, kwargs=entry.kwargs, spatial=entry.spatial, params=cost[0],
                macs=cost[1], n=len(per_seed), top1_mean=top1, top1_sd=top1_sd, gap_mean=gap, gap_sd=gap_sd,
                train_top1_mean=mean_sd('train_top1')[0], train_loss_mean=mean_sd('train_loss')[0], runs=per_seed)


def analyse(summaries: dict[tuple[str, int], dict[str, Any]], seeds: list[int],
            costs: dict[str, tuple[int, int]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every pair's paired difference, interval and verdict, and every conclusion's combined verdict.

    Args:
        summaries: ``{(label, seed): run summary}`` (the ``summary.json`` of each run).
        seeds: The seeds, in the order the differences are paired.
        costs: ``{label: (params, MACs)}``.

    Returns:
        ``(pairs, conclusions)`` as written to ``results.json``.
    """
    pairs, conclusions = [], []
    for c in CONCLUSIONS:
        verdicts = []
        for p in c.pairs:
            label, advantage = METRICS[p.metric]
            diffs = [advantage(summaries[p.better, s], summaries[p.other, s]) for s in seeds]
            stats = paired_difference(diffs, [0.0] * len(diffs))
            (pa, ma), (pb, mb) = costs[p.better], costs[p.other]
            pairs.append(dict(conclusion=c.key, better=p.better, other=p.other, metric=p.metric, metric_label=label,
                              seeds=seeds, params_ratio=pa / pb, macs_ratio=ma / mb, **stats))
            verdicts.append(stats['verdict'])
        conclusions.append(dict(key=c.key, claim=c.claim, test=c.test, verdict=combine_verdicts(verdicts),
                                pair_verdicts=verdicts))
    return pairs, conclusions


# -------------------------------------------------------------------------------------------------------- running

def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _baseline(dataset: str, img_size: Any) -> tuple[float, int]:
    """Top-1 of the best constant prediction (the training set's most frequent class) and the class count."""
    from collections import Counter

    from ..data import build_datasets

    train, val, info = build_datasets(dataset, img_size=max(hw(img_size)))
    majority = Counter(train.targets).most_common(1)[0][0]
    return 100.0 * sum(t == majority for t in val.targets) / len(val.targets), info.num_classes


def _study_recipe(quick: bool, seeds: int | None, dataset: str | None, epochs: int | None, img_size: Any,
                  overrides: dict[str, Any] | None) -> tuple[TrainConfig, list[int]]:
    n = seeds if seeds is not None else (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise StudyError(f'--seeds is the number of seeds per configuration (>= 1), got {n!r}')
    base = dict(QUICK_RECIPE if quick else STUDY_RECIPE)
    if dataset is not None and dataset.split(':', 1)[0] != base['dataset'].split(':', 1)[0]:
        base['img_size'] = 32  # other data (CIFAR, a folder): 32 px unless --img-size says otherwise
    return shared_recipe(base, dataset, epochs, img_size, None, overrides, list(range(n)))


def spach_study(
        *,
        quick: bool = False,
        seeds: int | None = None,
        output: str | Path | None = None,
        dataset: str | None = None,
        epochs: int | None = None,
        img_size: Any = None,
        overrides: dict[str, Any] | None = None,
        jobs: int | None = None,
        console: Console | None = None,
        command: str | None = None,
) -> dict[str, Any]:
    """Train every configuration of :data:`CONFIGS` with every seed, test the five conclusions, write the report.

    Args:
        quick: The smaller budget (:data:`QUICK_RECIPE`).
        seeds: Seeds per configuration (0 .. seeds - 1; default 3).
        output: The study folder (default ``runs/study-spach`` or ``runs/study-spach-quick``).
        dataset: Another classification dataset spec (``folder:PATH``, ``cifar10:PATH``, ...).
        epochs: Override the epochs of the budget.
        img_size: Override the input size (the token-MLP models are built for it; costs are re-measured).
        overrides: Further recipe keys.
        jobs: Runs trained at once (default: one per CPU core, at most 2; one torch thread each).
        console: Where progress goes.
        command: The command line recorded in the report.

    Returns:
        The content of ``results.json``.
    """
    console = console or Console()
    started, load_start = time.perf_counter(), _load()
    recipe, seed_list = _study_recipe(quick, seeds, dataset, epochs, img_size, overrides)
    out = Path(output or ('runs/study-spach-quick' if quick else 'runs/study-spach'))
    jobs = check_jobs(jobs)
    record = claim_output(out, recipe, seed_list, CONFIGS)
    constant, num_classes = _baseline(recipe.dataset, recipe.img_size)
    costs = config_costs(CONFIGS, recipe.img_size, num_classes)
    console.print(f'study spach: {len(CONFIGS)} configurations x {len(seed_list)} seeds on {recipe.dataset} at '
                  f'{recipe.img_size}, {recipe.epochs} epochs, {jobs} run(s) at a time -> {out}', highlight=False)
    summaries, trained = train_grid(CONFIGS, seed_list, recipe, out, console, jobs)
    configs = [_config_record(e, costs[e.label], [(s, summaries[e.label, s]) for s in seed_list]) for e in CONFIGS]
    pairs, conclusions = analyse(summaries, seed_list, costs)
    results = _results(recipe, record, seed_list, configs, pairs, conclusions, constant, command, started,
                       (load_start, _load()), trained)
    write_study_report(results, out, ['Conv-MS', 'Attn-MS'])
    for c in conclusions:
        console.print(f'({c["key"]}) {c["claim"]}: {c["verdict"]}', highlight=False)
    console.print(f'report: {out / "report.md"} ({duration(results["elapsed_seconds"])} this invocation)',
                  highlight=False)
    return results


def _method(recipe: TrainConfig) -> list[str]:
    return [
        'Pairs: the two configurations differ in the one property the conclusion is about and are matched within '
        f'{COST_TOLERANCE:.0%} in parameters and MACs (ratios in the pairs table; MACs counted with FlopCounterMode '
        'at the training input size, one image).',
        'Paired by seed: seed k of both configurations shares the initialisation seed, the data order and the '
        'augmentation draws; the difference is taken per seed, in the claimed direction (> 0 supports SPACH).',
        f'Interval: Student\'s t on the per-seed differences, {LEVEL:.0%} two-sided (mean +- t * sd / sqrt(n)); with 3 '
        'seeds t = 4.30, so only effects large against the seed-to-seed spread are called.',
        'Verdict: held if the interval lies above 0, not held if it lies below 0, inconclusive if it contains 0 (or '
        'n < 2). A conclusion with several pairs is held only if every pair held, not held if any pair was not held, '
        'else inconclusive.',
        'Top-1 is the final-epoch validation top-1 (no early stopping, no picking the best epoch). Train top-1 and '
        'train loss are the running values of the last epoch, in training mode with the recipe\'s augmentation; the '
        'gap is train top-1 minus val top-1.',
        'Conclusion 4: capacity is the final train loss (attention lower = claim); generalisation is val top-1 at '
        'the lowest train loss both runs of a seed reached, read off each run\'s per-epoch (train loss, val top-1) '
        'curve by linear interpolation.',
        'The val set is fixed across seeds, so the intervals cover training noise (initialisation, order, '
        f'augmentation), not the sampling of the val images. Dataset: `{recipe.dataset}`.',
    ]


def _results(recipe: TrainConfig, record: dict[str, Any], seeds: list[int], configs: list[dict[str, Any]],
             pairs: list[dict[str, Any]], conclusions: list[dict[str, Any]], constant: float, command: str | None,
             started: float, loads: tuple[list[float] | None, list[float] | None], trained: int) -> dict[str, Any]:
    best = max(configs, key=lambda c: c['top1_mean'])
    spread = best['top1_mean'] - min(c['top1_mean'] for c in configs)
    notes = [f'{p["better"]} vs {p["other"]}: params ratio {p["params_ratio"]:.2f}, MACs ratio {p["macs_ratio"]:.2f}, '
             f'outside the {COST_TOLERANCE:.0%} matching at this input size' for p in pairs
             if not (_within(p['params_ratio'], 1) and _within(p['macs_ratio'], 1))]
    load_text = ' -> '.join('n/a' if x is None else ', '.join(f'{v:.2f}' for v in x) for x in loads)
    load_text += f' (1, 5, 15 min) on {os.cpu_count()} CPU(s)'
    return dict(
        command=command or 'visionmix study spach', study='spach', dataset=recipe.dataset,
        img_size=record['recipe']['img_size'], epochs=recipe.epochs, seeds=seeds, recipe=record['recipe'],
        elapsed_seconds=time.perf_counter() - started, runs_trained=trained,
        runs_reused=len(configs) * len(seeds) - trained, load_average=list(loads), load_text=load_text,
        baseline=dict(constant_top1=constant, best_config=best['label'], best_top1=best['top1_mean'],
                      spread_points=spread),
        baseline_text=(f'Constant prediction scores {constant:.1f}% top-1; the best configuration ({best["label"]}) '
                       f'{best["top1_mean"]:.1f}%, the worst {best["top1_mean"] - spread:.1f}%.'),
        cost_tolerance=COST_TOLERANCE, configs=configs, pairs=pairs, conclusions=conclusions,
        method=_method(recipe), notes=notes)
