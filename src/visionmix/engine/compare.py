"""``visionmix compare``: every model trained with the identical recipe, data, budget and seeds, then profiled at
the training input size; one report (Markdown, JSON, CSV, Pareto plots, training curves).

The embedded default (no arguments) is a small SPACH-style study on ``cluttered-digits`` at 32x32: the SPACH
skeleton with the conv / attention / MLP spatial functions and the conv+attention hybrid, the Hire, window-MLP and
shift mixers, and one classic CNN. Its list is :data:`DEFAULT_STUDY`; its recipe is :data:`DEFAULT_RECIPE`.
"""
from __future__ import annotations

import csv
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from ..checkpoint import atomic_write
from ..models.presets import PRESETS
from ..errors import VisionmixError
from ..registry import model_card
from ..reporting import fmt, pyplot, round_floats
from ..sizes import check_size, size_str
from .building import build_model
from .config import ConfigError, TrainConfig, load_config, read_yaml
from .tasks import model_task
from .runs import StudyEntry, check_jobs, safe_label, train_grid
from .train import CONFIG_FILE

__all__ = ['StudyEntry', 'DEFAULT_STUDY', 'DEFAULT_RECIPE', 'parse_model_arg', 'compare', 'CompareError',
           'shared_recipe', 'claim_output']


class CompareError(VisionmixError):
    """A comparison that cannot run as asked."""


# The default study: the presets of visionmix.models.presets (names usable wherever a model name is).
DEFAULT_STUDY: list[StudyEntry] = [StudyEntry(name, name, {}, spatial) for name, (_, _, spatial, _) in PRESETS.items()]

# Short-budget recipe from the DeiT/SPACH parts, tuned for digits at 32x32 on 2 CPU cores (see configs/digits.yaml).
# The data is cluttered-digits: on plain digits every model of the default study scored 94-98%, inside each other's
# noise; here one seed spread them over 84-91%.
DEFAULT_RECIPE: dict[str, Any] = dict(
    dataset='cluttered-digits:2000', img_size=32, epochs=5, batch_size=64, lr=3e-3, weight_decay=0.05, warmup_epochs=1,
    min_lr=1e-5, smoothing=0.1, mixup=0.0, cutmix=0.0, auto_augment=None, reprob=0.0, scale=[0.6, 1.0],
    ratio=[0.9, 1.1], hflip=0.0, drop_path=0.0, model_ema=False, clip_grad=None, seed=0)


def _seg_spach(*spatial: str) -> dict[str, Any]:
    """A 4-stage SPACH-MS backbone at a small width (the decoders read one map per stride 4..32)."""
    return dict(backbone_kwargs=dict(net_arch=[[s, 1] for s in spatial], embed_dim=16, num_heads=2))


# Semantic segmentation: one decoder (FPN) over backbones of each kind, plus UNeXt, on the embedded textures.
SEGMENTATION_STUDY: list[StudyEntry] = [
    StudyEntry('FPN-SPACH-Conv', 'fpn:spach_ms', _seg_spach('pass', 'pass', 'pass', 'pass'), 'conv'),
    StudyEntry('FPN-SPACH-Attn', 'fpn:spach_ms', _seg_spach('pass', 'attn', 'attn', 'attn'), 'attention'),
    StudyEntry('FPN-SPACH-Hybrid', 'fpn:spach_ms', _seg_spach('pass', 'pass', 'attn', 'attn'), 'conv + attention'),
    # 96M, not 26M: at 64 px the 26M's thin early stages plateaued at 38% mIoU (96M: 44%, 52M: 32%; one run each)
    StudyEntry('FPN-Mobile-Former-96M', 'fpn:mobile_former_96m', {}, 'Mobile-Former bridge'),
    StudyEntry('FPN-ResNet-18', 'fpn:resnet18', {}, 'conv (classic CNN)'),
    StudyEntry('UNeXt-S', 'unext_s', {}, 'axial shift (UNeXt)'),
]
SEGMENTATION_RECIPE: dict[str, Any] = dict(
    dataset='textures-seg', img_size=64, epochs=8, batch_size=16, opt='adamw', lr=3e-3, weight_decay=0.01,
    warmup_epochs=1, min_lr=1e-5, smoothing=0.0, mixup=0.0, cutmix=0.0, auto_augment=None, reprob=0.0,
    scale=[0.5, 1.0], ratio=[0.75, 1.333], hflip=0.5, drop_path=0.0, model_ema=False, clip_grad=None, seed=0)

# Instance segmentation: Mask R-CNN (torchvision, light heads) over a conv, an attention and a Hire-MLP backbone of
# the same skeleton and width, on the embedded shapes, with the heads and sampling of the 10-minute recipe (README):
# the mask classifier, a quarter of the sampled RoIs foreground, the mask head on 8 of them per image.
_INSTANCE_HEADS: dict[str, Any] = dict(mask_classifier=True, box_positive_fraction=0.25, mask_rois_per_image=8)


def _instance_spach(*spatial: str) -> dict[str, Any]:
    return dict(_seg_spach(*spatial), **_INSTANCE_HEADS)


INSTANCE_STUDY: list[StudyEntry] = [
    StudyEntry('MaskRCNN-SPACH-Conv', 'maskrcnn:spach_ms', _instance_spach('pass', 'pass', 'pass', 'pass'), 'conv'),
    StudyEntry('MaskRCNN-SPACH-Attn', 'maskrcnn:spach_ms', _instance_spach('pass', 'attn', 'attn', 'attn'),
               'attention'),
    StudyEntry('MaskRCNN-SPACH-Hire', 'maskrcnn:spach_ms', _instance_spach('pass', 'hire', 'hire', 'hire'),
               'Hire-MLP'),
]
# about 15 minutes on 2 cores in all (two runs at a time); validation after the last epoch only
INSTANCE_RECIPE: dict[str, Any] = dict(
    dataset='shapes-inst:200', img_size=96, epochs=12, eval_every=12, batch_size=4, opt='adamw', lr=2e-3,
    weight_decay=0.05, warmup_epochs=1, min_lr=1e-5, smoothing=0.0, mixup=0.0, cutmix=0.0, auto_augment=None,
    reprob=0.0, hflip=0.5, drop_path=0.0, model_ema=False, clip_grad=None, seed=0)

# Runs train (and are profiled) on one thread unless the recipe says otherwise: these small models gain little from
# a second thread, and when anything else runs on a 2-core machine, two OpenMP threads wait on each other (measured
# on a busy machine: SPACH-Conv training steps at 30-400 img/s on two threads against 1,100-1,400 on one).
RUN_THREADS = 1

# task -> (default study, its recipe); the recipe is also the base of a comparison of other models of that task
STUDIES: dict[str, tuple[list[StudyEntry], dict[str, Any]]] = {
    'classification': (DEFAULT_STUDY, DEFAULT_RECIPE),
    'segmentation': (SEGMENTATION_STUDY, SEGMENTATION_RECIPE),
    'instance': (INSTANCE_STUDY, INSTANCE_RECIPE),
}


def parse_model_arg(text: str) -> StudyEntry:
    """``SPACH-Conv`` (a default-study label), ``resnet50``, ``fpn:resnet50`` or ``NAME:{yaml kwargs}`` -> a
    :class:`StudyEntry`. Keyword arguments start at the first ``:{`` or ``:[`` (a YAML flow collection), so model
    specs that contain ``:`` themselves keep it."""
    for entry in DEFAULT_STUDY:  # default-study labels keep their description
        if entry.label.lower() == text.lower():
            return entry
    starts = [i for i in (text.find(':{'), text.find(':[')) if i >= 0]
    name, sep, rest = (text[:min(starts)], ':', text[min(starts) + 1:]) if starts else (text, '', '')
    kwargs: dict[str, Any] = {}
    if sep:
        try:
            kwargs = yaml.safe_load(rest)
        except yaml.YAMLError as e:
            raise CompareError(f'model {text!r}: kwargs after ":" must be a YAML mapping ({str(e).splitlines()[0]})'
                               ) from None
        if not isinstance(kwargs, dict):
            raise CompareError(f'model {text!r}: kwargs after ":" must be a YAML mapping like {{embed_dim: 16}}')
    model_card(name)  # unknown names raise UnknownModelError with the closest names
    return StudyEntry(text if sep else name, name, kwargs)


def _profile(entry: StudyEntry, cfg: TrainConfig, model_dir: Path, seed: int) -> dict[str, Any]:
    """Params, MACs and speed at the training size, measured once per model (``profile.json``)."""
    path = model_dir / 'profile.json'
    if path.is_file():
        return json.loads(path.read_text())
    from ..profile import profile_model

    saved = yaml.safe_load((model_dir / f'seed{seed}' / CONFIG_FILE).read_text())
    model = build_model(entry.model, len(saved['data']['classes']), cfg.img_size, entry.kwargs)
    res = profile_model(model, img_size=cfg.img_size, batch_size=cfg.batch_size, mode='both', warmup=2, iters=5,
                        memory=False, name=entry.label, threads=cfg.threads)
    out = dict(params=res.params, gmacs=res.gmacs, macs_counter=res.macs_counter,
               latency_ms=res.latency_ms.median if res.latency_ms else None,
               infer_img_s=res.infer_img_s.median if res.infer_img_s else None,
               train_img_s=res.train_img_s.median if res.train_img_s else None, threads=res.threads,
               batch_size=res.batch_size)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(round_floats(out), indent=2)))
    return out


def compare(
        models: list[StudyEntry] | None = None,
        *,
        dataset: str | None = None,
        epochs: int | None = None,
        seeds: list[int] | None = None,
        img_size: int | None = None,
        config: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
        output: str | Path | None = None,
        profile: bool = True,
        console: Console | None = None,
        command: str | None = None,
        task: str | None = None,
        jobs: int | None = None,
) -> dict[str, Any]:
    """Train every model with the same recipe and seeds, profile it, and write the report to ``output``.

    Without ``models``, the default study of ``task`` (:data:`STUDIES`; classification by default) runs; the task's
    recipe is the base either way.

    Finished runs (``summary.json`` present) are skipped and interrupted runs resume, so re-running the same command
    after an interruption continues where it stopped. ``jobs`` runs train at once, each in its own process on one
    thread (default: one per core, at most 2); the profiling happens afterwards, one model at a time.

    Returns:
        The content of ``results.json``.
    """
    console = console or Console()
    jobs = check_jobs(jobs)
    started = time.perf_counter()
    entries, notes, task = _study_entries(models, task)
    recipe, seeds = shared_recipe(STUDIES[task][1], dataset, epochs, img_size, config, overrides, seeds)
    out = Path(output) if output is not None else default_output(task)
    record = claim_output(out, recipe, seeds, entries)
    console.print(f'compare: {len(entries)} models x {len(seeds)} seed(s) on {recipe.dataset} at '
                  f'{size_str(recipe.img_size)}, {recipe.epochs} epochs each, {jobs} run(s) at a time -> {out}',
                  highlight=False)
    summaries, _ = train_grid(entries, seeds, recipe, out, console, jobs)
    rows = []
    for entry in entries:  # profiled one at a time, after the training: timings taken on a machine at rest
        prof = _profile(entry, recipe, out / safe_label(entry.label), seeds[0]) if profile else {}
        rows.append(_row(entry, [summaries[entry.label, seed] for seed in seeds], prof))
    results = dict(command=command or 'visionmix compare', task=task, output=str(out), dataset=recipe.dataset,
                   img_size=recipe.to_dict()['img_size'],
                   epochs=recipe.epochs, seeds=seeds, recipe=record['recipe'],
                   elapsed_seconds=time.perf_counter() - started, notes=notes, models=rows)
    write_report(results, out)
    console.print(results_table(rows))
    console.print(f'report: {out / "report.md"} ({results["elapsed_seconds"]:.0f}s this invocation)', highlight=False)
    return results


def default_output(task: str) -> Path:
    """``runs/compare`` for classification, ``runs/compare-<task>`` otherwise (so the studies do not collide)."""
    return Path('runs/compare' if task == 'classification' else f'runs/compare-{task}')


def _study_entries(models: list[StudyEntry] | None, task: str | None) -> tuple[list[StudyEntry], list[str], str]:
    """The models to compare (the task's default study without ``models``), notes, and the task."""
    if task is not None and task not in STUDIES:
        raise CompareError(f'compare has no study for task {task!r}; choose from {", ".join(STUDIES)}')
    entries, notes = list(models or STUDIES[task or 'classification'][0]), []
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise CompareError(f'duplicate model labels {sorted({x for x in labels if labels.count(x) > 1})}')
    tasks = {model_task(e.model) for e in entries}
    if len(tasks) > 1:
        raise CompareError(f'compare ranks models of one task; these mix {", ".join(sorted(tasks))}')
    found = tasks.pop()
    if task is not None and found != task:
        raise CompareError(f'--task {task} but the models are {found} models')
    if found not in STUDIES:
        raise CompareError(f'compare has no recipe for {found} models; it compares {", ".join(STUDIES)}')
    return entries, notes, found


def shared_recipe(task_recipe: dict[str, Any], dataset: str | None, epochs: int | None, img_size: Any,
                   config: str | Path | None, overrides: dict[str, Any] | None,
                   seeds: list[int] | None) -> tuple[TrainConfig, list[int]]:
    """The one recipe every model gets (validated once, before any run) and the seeds."""
    base = {'threads': RUN_THREADS, **task_recipe}
    if config is not None:
        base.update(read_yaml(config))
    base.update(overrides or {})
    for key, value in (('dataset', dataset), ('epochs', epochs), ('img_size', img_size)):
        if value is not None:
            base[key] = value
    seeds = list(seeds) if seeds else [base.get('seed', 0)]
    if len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise CompareError(f'seeds must be distinct integers >= 0, got {seeds}')
    for key in ('model', 'model_kwargs', 'output'):
        if key in base:
            raise ConfigError(f'{key!r} is set per model by compare; remove it from the recipe')
    return load_config(overrides=base), seeds


def claim_output(out: Path, recipe: TrainConfig, seeds: list[int], entries: list[StudyEntry]) -> dict[str, Any]:
    """Record the comparison in ``out/compare.json``; a folder holding another recipe or seeds is refused."""
    out.mkdir(parents=True, exist_ok=True)
    record = dict(recipe={k: v for k, v in recipe.to_dict().items() if k not in ('model', 'model_kwargs', 'output')},
                  seeds=seeds, models=[dict(label=e.label, model=e.model, kwargs=e.kwargs) for e in entries])
    record = json.loads(json.dumps(record))
    path = out / 'compare.json'
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous['recipe'] != record['recipe'] or previous['seeds'] != record['seeds']:
            raise CompareError(f'{out} holds a comparison with another recipe or seeds; use another --output (or '
                               f'delete it) so that every model shares one recipe')
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    return record


def _row(entry: StudyEntry, runs: list[dict[str, Any]], prof: dict[str, Any]) -> dict[str, Any]:
    """One model's line of the report: cost, the main metric over seeds (spread only for n > 1) and its curves."""
    metric = runs[0]['metric']
    scores = [r[metric] for r in runs]
    return dict(label=entry.label, model=entry.model, kwargs=entry.kwargs, spatial=entry.spatial, metric=metric,
                params=prof.get('params'), gmacs=prof.get('gmacs'), infer_img_s=prof.get('infer_img_s'),
                train_img_s=prof.get('train_img_s'), latency_ms=prof.get('latency_ms'), n=len(scores),
                **{f'{metric}_mean': statistics.fmean(scores),
                   f'{metric}_std': statistics.stdev(scores) if len(scores) > 1 else None,
                   f'{metric}_per_seed': scores, f'best_{metric}_per_seed': [r[f'best_{metric}'] for r in runs]},
                train_seconds=sum(r['train_seconds'] for r in runs), history=runs[0]['history'])


def _score_text(row: dict[str, Any]) -> str:
    """``top-1 97.22%`` for one seed, ``top-1 97.22% +- 0.51 (n=3)`` for several."""
    metric = row['metric']
    spread = f' +- {row[f"{metric}_std"]:.2f} (n={row["n"]})' if row['n'] > 1 else ''
    return f'{METRIC_LABELS.get(metric, metric)} {row[f"{metric}_mean"]:.2f}%{spread}'


# ------------------------------------------------------------------------------------------------------ report

METRIC_LABELS = {'top1': 'top-1', 'dice': 'Dice', 'miou': 'mIoU', 'mask_ap50': 'mask AP50', 'mask_ap': 'mask AP'}
COST_FIELDS = ['params', 'gmacs', 'infer_img_s', 'train_img_s', 'latency_ms']


def _metric(rows: list[dict[str, Any]]) -> str:
    return rows[0].get('metric', 'top1') if rows else 'top1'


def _mean_std(row: dict[str, Any], metric: str) -> str:
    std = row.get(f'{metric}_std')
    return f'{row[f"{metric}_mean"]:.2f}' + (f' +- {std:.2f}' if std is not None else '')


def results_table(rows: list[dict[str, Any]]) -> Table:
    metric = _metric(rows)
    table = Table(title='visionmix compare', header_style='bold')
    for col in ('model', 'spatial', 'params', 'MMACs', 'infer img/s', 'train img/s', 'n',
                f'{METRIC_LABELS.get(metric, metric)} %', 'train s'):
        table.add_column(col, justify='left' if col in ('model', 'spatial') else 'right')
    for r in rows:
        table.add_row(escape(r['label']), r['spatial'], fmt(r['params'] and r['params'] / 1e3, '.1f') + 'k',
                      fmt(r['gmacs'] and r['gmacs'] * 1e3, '.2f'), fmt(r['infer_img_s'], '.0f'),
                      fmt(r['train_img_s'], '.0f'), str(r.get('n', 1)), _mean_std(r, metric),
                      f'{r["train_seconds"]:.0f}')
    return table


def _pareto(points: list[tuple[float, float]], higher_x_better: bool) -> list[int]:
    """Indices on the Pareto front (maximise the metric; minimise MACs or maximise img/s)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (y2 >= y and (x2 >= x if higher_x_better else x2 <= x)) and (y2 > y or x2 != x)
            for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


MARKERS = 'osD^vP*Xph<>'  # 12 markers against 10 colours: (colour, marker) pairs repeat only after 60 models
LEGEND_ROWS = 22  # entries per legend column before another column starts


def point_style(index: int) -> dict[str, Any]:
    """Colour and marker of the index-th model; neighbours differ in both."""
    import matplotlib

    return dict(color=matplotlib.colormaps['tab10'](index % 10), marker=MARKERS[index % len(MARKERS)])


def scatter_figure(rows: list[dict[str, Any]], key: str, xlabel: str, higher_x_better: bool,
                   log: bool = True, scale: float = 1.0, title: str = '') -> Figure:
    """The main metric (mean +- std over seeds) against ``row[key] * scale``, one colour / marker per model and the
    Pareto front.

    Names go in a legend outside the axes rather than next to the points, so close points never hide each other's
    labels, whatever the number of models.
    """
    plt = pyplot()
    metric = _metric(rows)
    # styles follow the row index, so a model looks the same in both Pareto plots and the curves
    pts = [(r[key] * scale, r[f'{metric}_mean'], r.get(f'{metric}_std') or 0.0, r['label'], i)
           for i, r in enumerate(rows) if r.get(key)]
    ncol = max(1, -(-len(pts) // LEGEND_ROWS))
    fig, ax = plt.subplots(figsize=(6.5 + 2.2 * ncol, 4.5), layout='constrained')
    if pts:
        for x, y, err, label, i in pts:
            ax.errorbar([x], [y], yerr=[err], fmt=point_style(i)['marker'], color=point_style(i)['color'],
                        markersize=7, markeredgecolor='black', markeredgewidth=0.5, capsize=3, label=label,
                        alpha=0.85)  # see-through: identical points stay visible as a darker overlap
        front = _pareto([(p[0], p[1]) for p in pts], higher_x_better)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], '--', color='gray', zorder=0,
                label='Pareto front')
        ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, ncol=ncol,
                  title='model', title_fontsize=8)
        if log:
            ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f'{METRIC_LABELS.get(metric, metric)} (%)')
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def _curves(rows: list[dict[str, Any]], path: Path, title: str = '') -> Path:
    plt = pyplot()
    metric = _metric(rows)
    ncol = max(1, -(-len(rows) // LEGEND_ROWS))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11 + 2.2 * ncol, 4), layout='constrained')
    for i, r in enumerate(rows):
        h = r['history']
        style = dict(point_style(i), markersize=3, label=r['label'])
        ax1.plot([e['epoch'] for e in h], [e['train_loss'] for e in h], **style)
        ax2.plot([e['epoch'] for e in h], [e[f'val_{metric}'] for e in h], **style)
    ax1.set(xlabel='epoch', ylabel='train loss')
    ax2.set(xlabel='epoch', ylabel=f'val {METRIC_LABELS.get(metric, metric)} (%)')
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax2.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7, ncol=ncol)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def report_files(metric: str = 'top1') -> tuple[str, ...]:
    """The files :func:`write_report` writes for a comparison ranked by ``metric``."""
    return ('report.md', 'results.json', 'results.csv', f'{metric}_vs_macs.png', f'{metric}_vs_img_s.png',
            'curves.png')


REPORT_FILES = report_files('top1')


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """report.md, results.json (full precision: it is re-read), results.csv (rounded for people) and the plots."""
    rows, metric = results['models'], _metric(results['models'])
    label = METRIC_LABELS.get(metric, metric)
    atomic_write(out / 'results.json', lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    fields = ['label', 'model', 'spatial', *COST_FIELDS, 'n', f'{metric}_mean', f'{metric}_std', 'train_seconds',
              'kwargs']

    def write_csv(tmp: str) -> None:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
            writer.writeheader()
            for r in rows:
                writer.writerow(round_floats(dict(r, kwargs=json.dumps(r['kwargs']))))

    atomic_write(out / 'results.csv', write_csv)
    setting = (f'{results["dataset"]}, {size_str(check_size(results["img_size"]))}, {results["epochs"]} epochs, '
               f'seeds {results["seeds"]}')
    _save(scatter_figure(rows, 'gmacs', 'MMACs per image (log)', False, scale=1e3, title=setting),
          out / f'{metric}_vs_macs.png')
    _save(scatter_figure(rows, 'infer_img_s', 'inference img/s (log)', True, title=setting),
          out / f'{metric}_vs_img_s.png')
    _curves(rows, out / 'curves.png', title=setting)
    lines = _report_lines(results, rows, metric, label)
    atomic_write(out / 'report.md', lambda tmp: Path(tmp).write_text('\n'.join(lines) + '\n'))
    return [out / f for f in report_files(metric)]


def _report_lines(results: dict[str, Any], rows: list[dict[str, Any]], metric: str, label: str) -> list[str]:
    seeds = results['seeds']
    spread = 'mean +- std over seeds' if len(seeds) > 1 else 'one seed, so no spread'
    lines = [
        '# visionmix compare', '',
        f'{len(rows)} models, each trained with the identical recipe on `{results["dataset"]}` at '
        f'{size_str(check_size(results["img_size"]))} for {results["epochs"]} epochs, seeds '
        f'{", ".join(map(str, seeds))}; profiled at the training input size. {label} is the final-epoch validation '
        f'value ({spread}).', '',
        f'| model | spatial | params | MMACs | infer img/s | train img/s | n | {label} % | train s |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in rows:
        lines.append(f'| {r["label"]} | {r["spatial"]} | {fmt(r["params"], ",")} | '
                     f'{fmt(r["gmacs"] and r["gmacs"] * 1e3, ".2f")} | {fmt(r["infer_img_s"], ".0f")} | '
                     f'{fmt(r["train_img_s"], ".0f")} | {r.get("n", 1)} | {_mean_std(r, metric)} | '
                     f'{r["train_seconds"]:.0f} |')
    lines += ['', f'Time: {results["elapsed_seconds"]:.0f} s in the last invocation (runs finished earlier are '
              f'reused).', '',
              f'![{label} vs MACs]({metric}_vs_macs.png)', '', f'![{label} vs img/s]({metric}_vs_img_s.png)', '',
              '![training curves](curves.png)', '', '## Command', '', '```', results['command'], '```', '',
              '## Recipe (identical for every model)', '', '```yaml',
              yaml.safe_dump(results['recipe'], sort_keys=False).rstrip(), '```', '', '## Models', '']
    for r in rows:
        lines.append(f'- **{r["label"]}**: `{r["model"]}` with `{json.dumps(r["kwargs"])}`')
    if results.get('notes'):
        lines += ['', '## Notes', ''] + [f'- {n}' for n in results['notes']]
    return lines


def command_line() -> str:
    return 'visionmix ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
