"""The ``visionmix`` command: one thin entry point; each subcommand's work lives in the library.

Every subcommand is one ``_add_<command>`` function (its arguments) and one ``cmd_<command>`` function (parse, call
the library, print). Errors meant for the user (:class:`~visionmix.errors.VisionmixError`) print ``error: <one
line>`` and exit 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import VisionmixError
from .registry import (FAMILIES, SOURCES, ModelCard, composite_prefixes, list_models, list_presets, model_card,
                       model_family)
from .reporting import fmt
from .sizes import parse_size

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


# ------------------------------------------------------------------------------------------------ shared parts

def size_arg(text: str) -> int | tuple[int, int]:
    """``--img-size``: ``'224'`` or ``'224x192'`` (H x W), one syntax in every command."""
    try:
        return parse_size(text)
    except VisionmixError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_output_path(path: str) -> None:
    """Fail before a long run, not after it, when the output file cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path('.')
    if target.is_dir():
        raise VisionmixError(f'cannot write {path}: it is a directory')
    if not parent.is_dir():
        raise VisionmixError(f'cannot write {path}: directory {parent} does not exist')
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise VisionmixError(f'cannot write {path}: permission denied')


def _is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun launch, which stay quiet so every line prints once."""
    return int(os.environ.get('RANK', '0')) == 0


# ------------------------------------------------------------------------------------------------- models, card

def models_table(cards: Sequence[ModelCard]) -> Table:
    table = Table(title=f'visionmix models ({len(cards)})', header_style='bold')
    for column, justify in (('name', 'left'), ('family', 'left'), ('source', 'left'), ('params', 'right'),
                            ('GMACs', 'right'), ('top-1', 'right'), ('input', 'right'), ('verified', 'left')):
        table.add_column(column, justify=justify, overflow='fold', no_wrap=column in ('name', 'input'))
    for card in cards:
        c, h, w = card.input_size
        table.add_row(card.name, card.family, card.source, f'{card.params / 1e6:.2f}M', fmt(card.gmacs),
                      fmt(card.top1, '.1f'), f'{h}x{w}', card.verified)
    return table


def cmd_models(args: argparse.Namespace, console: Console) -> int:
    if args.presets:
        table = Table(title='presets: names for a model with fixed arguments (the default study\'s models)',
                      header_style='bold')
        for column in ('name', 'model', 'arguments'):
            table.add_column(column, overflow='fold')
        for name, (model, kwargs) in list_presets().items():
            table.add_row(name, model, json.dumps(kwargs))
        console.print(table)
        return 0
    names = list_models(args.pattern, family=args.family, source=args.source, include_all=args.all)
    if not names:
        console.print(f'no model matches pattern={args.pattern!r} family={args.family!r}', style='yellow')
        return 1
    if args.all and not args.json:  # cards of ~1,400 names would build every model: list names and families
        table = Table(title=f'every model name ({len(names)}); `visionmix card NAME` for one card', header_style='bold')
        for column in ('name', 'family'):
            table.add_column(column)
        for name in names:
            table.add_row(name, model_family(name))
        console.print(table)
    elif args.json:
        print(json.dumps([model_card(n).to_dict() for n in names], indent=2))
    else:
        console.print(models_table([model_card(n) for n in names]))
        specs = '; '.join(f'{p}:... {h}' for p, h in composite_prefixes().items())
        if specs:
            console.print(f'composite specs: {specs}', highlight=False)
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('models', help='list models with their card facts',
                       description='List the curated models (ours and the reviewed timm / torchvision ones) with '
                                   'family, params, GMACs, published top-1, input size and what our tests verified. '
                                   'Every other timm name (and tv:NAME for torchvision) works too: --all lists them.')
    p.add_argument('pattern', nargs='?', default=None,
                   help="wildcard ('hire_*') or substring ('mlp') to filter names; default: all")
    p.add_argument('--family', choices=FAMILIES, help='keep one family')
    p.add_argument('--source', choices=SOURCES, help='keep one implementation source')
    p.add_argument('--all', action='store_true', help='every timm and torchvision (tv:) name, not only the curated')
    p.add_argument('--presets', action='store_true',
                   help="the named presets (the default study's models: SPACH-Conv, ...), usable as model names")
    p.add_argument('--json', action='store_true', help='print the cards as JSON instead of a table')
    p.set_defaults(func=cmd_models)


def cmd_card(args: argparse.Namespace, console: Console) -> int:
    card = model_card(args.name)
    if args.json:
        print(json.dumps(card.to_dict(), indent=2))
        return 0
    table = Table(title=f'model card: {card.name}', show_header=False)
    table.add_column('field', style='bold')
    table.add_column('value', overflow='fold')
    for key, value in card.to_dict().items():
        table.add_row(key, '-' if value in (None, '') else str(value))
    console.print(table)
    return 0


def _add_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('card', help="print one model's card",
                       description='Print every field of a model card: paper, official code and commit, params, '
                                   'GMACs and counter, published top-1, input size, mean/std, license, verified.')
    p.add_argument('name', help='model name or spec')
    p.add_argument('--json', action='store_true', help='print as JSON')
    p.set_defaults(func=cmd_card)


# ------------------------------------------------------------------------------------------------------ profile

def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    from .profile import compare_speed, profile_models
    from .profile.report import FORMATS, comparison_table, format_for_path, plot_profiles, profile_table, render

    if args.format is not None and args.format not in FORMATS:
        raise VisionmixError(f'unknown format {args.format!r}; choose from {", ".join(FORMATS)}')
    for path in (args.output, args.plot):
        if path is not None:
            check_output_path(path)
    file_format = format_for_path(args.output, args.format) if args.output else None
    for name in [*args.models, *([args.vs] if args.vs else [])]:
        model_card(name)  # unknown names fail before any model is built
    if args.backend:
        return _profile_backends(args, console)
    options = dict(img_size=args.img_size, batch_size=args.batch_size, threads=args.threads,
                   channels_last=args.channels_last, compile=args.compile, warmup=args.warmup, iters=args.iters)
    if args.vs:
        items = [compare_speed(name, args.vs, mode=args.mode or 'infer', **options) for name in args.models]
        tables = [comparison_table(c) for c in items]
    else:
        items = profile_models(args.models, mode=args.mode or 'both', memory=not args.no_memory, **options)
        tables = [profile_table(items)]
    if args.format in (None, 'table') or args.output:
        for table in tables:
            console.print(table)
    elif args.output is None:
        print(render(items, args.format), end='')
    try:
        if args.output:
            Path(args.output).write_text(render(items, file_format))
            console.print(f'wrote {args.output} ({file_format})', highlight=False)
        if args.plot:
            console.print(f'wrote {plot_profiles(items, args.plot)}', highlight=False)
    except OSError as e:
        raise VisionmixError(f'cannot write output: {e}') from None
    return 0


def _profile_backends(args: argparse.Namespace, console: Console) -> int:
    """``profile --backend eager,compile,onnxruntime``: each backend's speed in one interleaved run, outputs checked."""
    from .deploy import compare_backends
    from .engine.building import build_model

    backends = [b.strip() for b in args.backend.split(',') if b.strip()]
    rows = []
    for name in args.models:
        model = build_model(name, None, args.img_size or model_card(name).input_size[1:], {})
        for row in compare_backends(model, backends, args.img_size, batch_size=args.batch_size, warmup=args.warmup,
                                    iters=args.iters, threads=args.threads):
            rows.append(dict(model=name, **row))
    if args.format == 'json':
        print(json.dumps(rows, indent=2, default=str))
        return 0
    table = Table(title=f'backends, batch {args.batch_size}, interleaved rounds, outputs vs eager', header_style='bold')
    for column in ('model', 'backend', 'img/s', 'IQR', 'x eager', 'max rel diff', 'GFLOP/s', '% GEMM peak'):
        table.add_column(column, justify='left' if column in ('model', 'backend') else 'right')
    for r in rows:
        table.add_row(r['model'], r['backend'], f'{r["img_s"]:.1f}', f'{r["img_s_iqr"]:.1f}', f'{r["speedup"]:.2f}',
                      f'{r["max_rel_diff"]:.1e}', fmt(r.get('gflops'), '.1f'), fmt(r.get('peak_pct'), '.0f'))
    console.print(table)
    return 0


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('profile', help='measure params, MACs, speed and memory of models',
                       description='Measure parameters, MACs (vs the card), inference latency and throughput, '
                                   'training-step throughput, peak memory and achieved GFLOP/s (vs this machine\'s '
                                   'GEMM peak). With --vs, time two models interleaved and report per-pair ratios.')
    p.add_argument('models', nargs='+', metavar='MODEL', help='model name(s) or spec(s)')
    p.add_argument('--vs', metavar='MODEL', help='compare each MODEL against this one, interleaved A B A B')
    p.add_argument('--img-size', type=size_arg, metavar='N|HxW', help="input size; default: the card's")
    p.add_argument('--batch-size', type=int, default=8, help='batch for throughput, training and memory (default 8)')
    p.add_argument('--threads', type=int, help='torch threads (default: current torch setting)')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    p.add_argument('--compile', action='store_true', help='time the model through torch.compile')
    p.add_argument('--mode', choices=('infer', 'train', 'both'),
                   help='what to time (default: both; infer with --vs)')
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations before timing (default 3)')
    p.add_argument('--iters', type=int, default=10, help='timed iterations; median and IQR over them (default 10)')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory child process')
    p.add_argument('--format', metavar='{table,json,csv,md}',
                   help='output format (default: a table; for --output: from its suffix)')
    p.add_argument('--output', metavar='FILE', help='also write the results to FILE')
    p.add_argument('--plot', metavar='FILE.png', help='plot GMACs and params vs img/s to a PNG')
    p.add_argument('--backend', metavar='B[,B...]',
                   help='time these backends interleaved (eager, compile, onnxruntime), with the output check and '
                        'the share of the GEMM peak; onnxruntime needs the deploy extra')
    p.set_defaults(func=cmd_profile)


# --------------------------------------------------------------------------------------------------------- train

def _overrides(args: argparse.Namespace) -> dict:
    from .engine.config import parse_overrides

    out = parse_overrides(getattr(args, 'set', None))
    for key in ('model', 'dataset', 'epochs', 'batch_size', 'lr', 'seed', 'output', 'threads', 'workers',
                'img_size', 'init_checkpoint', 'eval_every'):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    for flag in ('channels_last', 'compile', 'skip_corrupt', 'pretrained'):
        value = getattr(args, flag, False)
        if value:
            out[flag] = value  # True, or for --compile a backend name
    return out


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from .engine.config import load_config
    from .engine.train import last_finished_epoch, train

    if args.resume:
        if args.config or _overrides(args):
            raise VisionmixError('--resume continues a run with its saved recipe; drop the other options')
        run_dir = args.resume
        run = lambda: train(resume=args.resume, console=console)  # noqa: E731
    else:
        cfg = load_config(args.config, _overrides(args))
        model_card(cfg.model)  # unknown names fail before the data is loaded
        run_dir = cfg.output
        run = lambda: train(cfg, console=console)  # noqa: E731
    try:
        result = run()
    except KeyboardInterrupt:
        if _is_main_process():
            done = last_finished_epoch(run_dir)
            where = f'after epoch {done}' if done else 'before the first epoch finished'
            resume = f'; resume with `visionmix train --resume {run_dir}`' if done else ''
            console.print(f'interrupted {where}{resume}', style='yellow', highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    if _is_main_process():
        console.print(f'{result.run_dir}: {result.metric_label} {result.score:.2f}% after {result.epochs_done} '
                      f'epochs (best {result.best_score:.2f}% at epoch {result.best_epoch})', highlight=False)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .data import DATASET_KINDS, dataset_specs
    from .engine.config import RECIPES

    def users(name: str) -> str:
        return ', '.join(k.usage for k in DATASET_KINDS.values() if k.recipe == name) or '-'

    recipes = '\n'.join(f'  {name}: {why} (datasets: {users(name)})' for name, (why, _) in RECIPES.items())
    p = sub.add_parser('train', help='train one model with a recipe of timm parts, resumable',
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description='Train a model on a local dataset with a YAML recipe plus overrides. Writes the '
                                   'run directory: config.yaml, metrics.csv, curves.png, last/best.safetensors, '
                                   'checkpoints/ for --resume. Under torchrun it trains with DDP.',
                       epilog='The recipe under your options is the dataset\'s (--set recipe=NAME picks another; '
                              'config.yaml records it):\n' + recipes)
    p.add_argument('--config', metavar='FILE.yaml', help='recipe file (see configs/digits.yaml)')
    p.add_argument('--model', help='model name or spec')
    p.add_argument('--dataset', help=' | '.join(dataset_specs()))
    p.add_argument('--epochs', type=int)
    p.add_argument('--batch-size', type=int, help='global batch size')
    p.add_argument('--lr', type=float)
    p.add_argument('--eval-every', type=int, metavar='N',
                   help='validate every N epochs and after the last (default 1); best.safetensors is the best '
                        'validated epoch')
    p.add_argument('--img-size', type=size_arg, metavar='N|HxW',
                   help='training input size (default 32); too small for the model is an error that names the '
                        'smallest side that works')
    p.add_argument('--checkpoint', metavar='FILE|RUN_DIR', dest='init_checkpoint',
                   help='fine-tune: start from these weights (a .safetensors / .pth file in our or the official '
                        'layout, or a run directory); the classifier is adapted to the dataset\'s classes')
    p.add_argument('--pretrained', action='store_true', help="fine-tune from the model's published weights")
    p.add_argument('--seed', type=int)
    p.add_argument('--threads', type=int, help='torch threads')
    p.add_argument('--workers', type=int, help='data loader workers (default 0)')
    p.add_argument('--output', help='run directory (default runs/train)')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    p.add_argument('--compile', nargs='?', const=True, default=False, metavar='BACKEND',
                   help="train through torch.compile; optionally name the backend (default inductor; e.g. "
                        "'aot_eager' compiles fast)")
    p.add_argument('--skip-corrupt', action='store_true', help='skip (and count) unreadable images')
    p.add_argument('--set', action='append', metavar='KEY=VALUE',
                   help='override any recipe key, value in YAML (e.g. --set "model_kwargs={embed_dim: 16}")')
    p.add_argument('--resume', metavar='RUN_DIR', help='continue an interrupted run exactly')
    p.set_defaults(func=cmd_train)


# ------------------------------------------------------------------------------------------------ eval, predict

def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from .engine.evaluate import run_eval

    res = run_eval(args.checkpoint, dataset=args.dataset, output=args.output, batch_size=args.batch_size,
                   skip_corrupt=args.skip_corrupt)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != 'confusion'}, indent=2))
        return 0
    if res.get('task') not in ('classification', 'segmentation'):  # a task whose report is its scalar metrics
        scalars = {k: v for k, v in res.items() if isinstance(v, float)}
        console.print(f'{res["model"]} on {res["dataset"]}: ' + '  '.join(f'{k} {v:.2f}' for k, v in scalars.items()),
                      highlight=False, soft_wrap=True)
        console.print(f'wrote {", ".join(res["files"])}', highlight=False)
        return 0
    table = Table(title=f'{res["model"]} on {res["dataset"]} ({res["num_images"]} images)', header_style='bold')
    table.add_column('class')
    if res.get('task') == 'segmentation':
        table.add_column('Dice %', justify='right')
        table.add_column('IoU %', justify='right')
        for name, m in res['per_class'].items():
            table.add_row(name, f'{m["dice"]:.2f}', f'{m["iou"]:.2f}')
        summary = (f'mIoU {res["miou"]:.2f}%  pixel accuracy {res["pixel_acc"]:.2f}%  ' if len(res['classes']) > 1
                   else '') + f'Dice {res["dice"]:.2f}%  IoU {res["iou"]:.2f}%  loss {res["loss"]:.4f}'
    else:
        table.add_column('accuracy %', justify='right')
        for name, acc in res['per_class'].items():
            table.add_row(name, f'{acc:.2f}')
        summary = f'top-1 {res["top1"]:.2f}%  top-5 {res["top5"]:.2f}%  loss {res["loss"]:.4f}'
    console.print(table)
    console.print(summary, highlight=False)
    console.print(f'wrote {", ".join(res["files"])}', highlight=False)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('eval', help='evaluate a trained checkpoint: top-1/top-5, per-class, confusion matrix',
                       description='Evaluate a visionmix train checkpoint (a run directory or .safetensors) on the '
                                   'val split; writes eval.json and confusion.png (segmentation: Dice and IoU in '
                                   'eval.json).')
    p.add_argument('checkpoint', help='run directory (uses best.safetensors) or a .safetensors file')
    p.add_argument('--dataset', help="dataset spec (default: the one it was trained on)")
    p.add_argument('--output', help='directory for eval.json and confusion.png (default: next to the checkpoint)')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--skip-corrupt', action='store_true', help='skip (and count) unreadable images')
    p.add_argument('--json', action='store_true', help='print the results as JSON')
    p.set_defaults(func=cmd_eval)


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    import warnings

    from .engine.evaluate import predict

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        results = predict(args.checkpoint, args.images, topk=args.topk, output=args.output, strict=args.strict,
                          backend=args.backend, min_score=args.min_score)
    for warning in caught:  # e.g. unreadable images that were skipped: one line each, on stderr
        Console(stderr=True).print(f'warning: {warning.message}', style='yellow', highlight=False, markup=False,
                                   soft_wrap=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        console.print(_prediction_line(r), highlight=False, markup=False, soft_wrap=True)
    return 0


def _prediction_line(r: dict) -> str:
    """One image's prediction in one line, whatever the task."""
    if 'mask' in r:  # semantic segmentation
        shares = ', '.join(f'{c} {100 * f:.1f}%' for c, f in r['foreground'].items())
        return f'{r["image"]}: {r["mask"]} ({shares} of pixels)'
    if 'instances' in r:  # instance segmentation
        found = ', '.join(f'{i["label"]} {100 * i["score"]:.0f}%' for i in r['instances']) or 'nothing'
        return f'{r["image"]}: {r["overlay"]} ({len(r["instances"])} instance(s): {found})'
    return f'{r["image"]}: ' + ', '.join(f'{t["label"]} {100 * t["prob"]:.1f}%' for t in r['top'])


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('predict', help='top-k classes (or masks) of images with a trained checkpoint',
                       description="Classify image files with a visionmix train checkpoint: top-k classes and "
                                   "probabilities, class names from the checkpoint, preprocessing from the model's "
                                   "pretrained_cfg. A segmentation checkpoint writes <stem>_mask.png per image to "
                                   "--output.")
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files, folders (searched recursively) or globs')
    p.add_argument('--checkpoint', required=True, help='run directory or .safetensors file')
    p.add_argument('--strict', action='store_true', help='stop at the first unreadable image (default: skip it)')
    p.add_argument('--backend', choices=('eager', 'onnxruntime'), default='eager',
                   help='run the model eagerly or through ONNX Runtime (exported and checked first; deploy extra)')
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--min-score', type=float, default=None,
                   help='instance segmentation: draw and list detections scoring at least this (default 0.5; the '
                        'COCO results JSON keeps all)')
    p.add_argument('--output', default='predictions',
                   help='directory for the mask PNGs of a segmentation checkpoint (default predictions)')
    p.add_argument('--json', action='store_true', help='print the results as JSON')
    p.set_defaults(func=cmd_predict)


# ------------------------------------------------------------------------------------------------------ compare

def _grid_interrupted(console: Console) -> int:
    """Ctrl-C in a command that trains a grid of runs (compare, study): one line; a re-run picks up where it was."""
    console.print('interrupted: finished runs and finished epochs are kept; run the same command again to resume',
                  style='yellow', highlight=False, soft_wrap=True)
    return EXIT_INTERRUPTED


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from .engine.compare import command_line, compare, parse_model_arg
    from .engine.config import parse_overrides

    entries = [parse_model_arg(m) for m in args.models] if args.models else None
    try:
        results = compare(entries, dataset=args.dataset, epochs=args.epochs, seeds=args.seeds,
                          img_size=args.img_size, config=args.config, overrides=parse_overrides(args.set),
                          output=args.output, profile=not args.no_profile, console=console, command=command_line(),
                          task=args.task, jobs=args.jobs)
    except KeyboardInterrupt:
        return _grid_interrupted(console)
    if results['task'] == 'segmentation' and not args.no_erf:
        from .analysis.study_erf import add_erf_section

        for note in add_erf_section(results, Path(results['output'])):
            console.print(f'note: {note}', style='yellow', highlight=False)
        console.print(f'receptive fields: {Path(results["output"]) / "erf.png"}', highlight=False)
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('compare', help='train and profile models under one recipe; write a report',
                       description='The fair comparison: every model gets the identical recipe, data, budget and '
                                   'seeds, is profiled at the training input size, and lands in one report '
                                   '(report.md, results.json/csv, Pareto plots, curves). Without --models it runs '
                                   'the embedded SPACH-style study. Re-run to resume.')
    p.add_argument('--models', nargs='+', metavar='MODEL',
                   help="default-study labels, model names or specs, or NAME:'{yaml kwargs}'")
    p.add_argument('--dataset', help='dataset spec (default: the study\'s)')
    p.add_argument('--epochs', type=int)
    p.add_argument('--seeds', type=int, nargs='+', help='seeds (default: 0)')
    p.add_argument('--img-size', type=size_arg, metavar='N|HxW')
    p.add_argument('--config', metavar='FILE.yaml', help='recipe file replacing the study recipe keys it sets')
    p.add_argument('--set', action='append', metavar='KEY=VALUE', help='override a recipe key')
    p.add_argument('--output', help='report directory (default runs/compare, or runs/compare-TASK for another task)')
    p.add_argument('--no-profile', action='store_true', help='skip profiling (no params/MACs/img/s columns)')
    p.add_argument('--jobs', type=int, help='runs trained at once, one process and one thread each (default: one per '
                                            'core, at most 2); their epoch lines go to console.log in each run')
    p.add_argument('--task', choices=('classification', 'segmentation', 'instance'),
                   help='the default study of this task (default: classification; or the task of --models)')
    p.add_argument('--no-erf', action='store_true', help='segmentation: skip the receptive-field maps')
    p.set_defaults(func=cmd_compare)


# ----------------------------------------------------------------------------------------------------- datasets

def cmd_datasets(args: argparse.Namespace, console: Console) -> int:
    from .data import DATASET_KINDS
    from .data.datasets import export_images

    if args.export:
        if not args.spec:
            raise VisionmixError('--export needs a dataset spec, e.g. visionmix datasets digits --export samples/')
        paths = export_images(args.spec, args.export, count=args.count, split=args.split, img_size=args.img_size)
        console.print(f'wrote {len(paths)} image(s) to {args.export}', highlight=False)
        return 0
    table = Table(title='datasets (--dataset SPEC); embedded ones need no files', header_style='bold')
    for column in ('spec', 'task', 'recipe', 'what'):
        table.add_column(column, overflow='fold')
    for kind in DATASET_KINDS.values():
        table.add_row(kind.usage, kind.task, kind.recipe, kind.help)
    console.print(table)
    return 0


def _add_datasets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('datasets', help='list the dataset specs, or write sample images of one',
                       description='List every dataset spec (embedded sets and local layouts) with its task and '
                                   'training recipe; with --export, write the first images of a split as PNGs.')
    p.add_argument('spec', nargs='?', help='dataset spec to export from')
    p.add_argument('--export', metavar='DIR', help='write sample images here')
    p.add_argument('--count', type=int, default=8, help='how many images (default 8)')
    p.add_argument('--split', default='val', help="'train' or 'val' (default val)")
    p.add_argument('--img-size', type=int, default=64, help='side of embedded images (default 64)')
    p.set_defaults(func=cmd_datasets)


# -------------------------------------------------------------------------------------------------------- study

def cmd_study(args: argparse.Namespace, console: Console) -> int:
    from .engine.compare import command_line
    from .engine.config import parse_overrides
    from .study import STUDIES

    try:
        STUDIES[args.name](quick=args.quick, seeds=args.seeds, output=args.output, dataset=args.dataset,
                           epochs=args.epochs, img_size=args.img_size, overrides=parse_overrides(args.set),
                           jobs=args.jobs, console=console, command=command_line())
    except KeyboardInterrupt:
        return _grid_interrupted(console)
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('study', help="test a paper's conclusions: cost-matched pairs, seeds, intervals, verdicts",
                       description="spach: SPACH's five conclusions (multi-stage, local modelling, MLP overfitting, "
                                   'conv vs attention, hybrid) as cost-matched pairs of the SPACH skeleton, trained '
                                   'with one recipe and several seeds on data that separates them; each conclusion '
                                   'gets the paired difference, a 95% interval and a verdict (held / not held / '
                                   'inconclusive) in report.md and results.json. Re-run to resume.')
    p.add_argument('name', choices=('spach',), help='the study')
    p.add_argument('--quick', action='store_true', help='the smaller budget (fewer images and epochs)')
    p.add_argument('--seeds', type=int, metavar='N', help='seeds per configuration (default 3)')
    p.add_argument('--output', help='study folder (default runs/study-spach, runs/study-spach-quick with --quick)')
    p.add_argument('--dataset', help='classification dataset spec (default the embedded cluttered-digits)')
    p.add_argument('--epochs', type=int)
    p.add_argument('--img-size', type=size_arg, metavar='N|HxW')
    p.add_argument('--jobs', type=int, help='runs trained at once, one thread each (default: cores, at most 2)')
    p.add_argument('--set', action='append', metavar='KEY=VALUE', help='override a recipe key')
    p.set_defaults(func=cmd_study)


# ------------------------------------------------------------------------------------------------------- export

def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from .deploy import export_model
    from .engine.evaluate import model_for_export

    check_output_path(args.output)
    model, img_size = model_for_export(args.model, args.checkpoint, args.img_size)
    batch = 'dynamic' if args.batch == 'dynamic' else _positive_int(args.batch, '--batch')
    result = export_model(model, args.output, args.format or Path(args.output).suffix.lstrip('.'),
                          img_size=img_size, batch=batch)
    console.print(f'wrote {result.path} ({result.format}, {result.exporter}): input {result.input_shapes[0]}, '
                  f'max relative difference to eager {max(result.max_rel_diff):.1e} on '
                  f'{len(result.check_shapes)} inputs', highlight=False, markup=False)
    for note in result.notes:
        console.print(f'note: {note}', style='yellow', highlight=False, markup=False)
    return 0


def _positive_int(text: str, what: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise VisionmixError(f'{what} must be "dynamic" or a positive integer, got {text!r}')
    return int(text)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('export', help='export a model to ONNX or a torch.export program, checked against eager',
                       description='Export a model (a name, or a visionmix train checkpoint) to ONNX (dynamic batch, '
                                   'dynamic H / W where the model allows) or a torch.export program (.pt2). The '
                                   'export runs two inputs through eager and the file; a file whose outputs differ '
                                   'by more than 1e-4 (relative) is not written.')
    p.add_argument('model', nargs='?', help='model name or spec (optional with a --checkpoint from visionmix train)')
    p.add_argument('--checkpoint', metavar='RUN_DIR|FILE',
                   help='weights: a run directory or .safetensors from visionmix train, or a checkpoint for MODEL')
    p.add_argument('--format', choices=('onnx', 'pt2'), help='default: from the output suffix')
    p.add_argument('--img-size', type=size_arg, metavar='N|HxW', help="export size (default: the card's or the "
                                                                      "training size)")
    p.add_argument('--batch', default='dynamic', metavar='dynamic|N', help='dynamic batch (default) or a fixed one')
    p.add_argument('--output', required=True, metavar='FILE', help='FILE.onnx or FILE.pt2')
    p.set_defaults(func=cmd_export)


# ----------------------------------------------------------------------------------------------------------- rf

def cmd_rf(args: argparse.Namespace, console: Console) -> int:
    from .analysis import coverage_report, erf_report, plot_coverage, plot_erfs, to_json

    if args.plot:
        check_output_path(args.plot)
    if args.rates is not None:
        if args.models or args.erf:
            raise VisionmixError('rf takes either --rates (a dilation stack) or MODEL ... --erf, not both')
        report = coverage_report(_rates(args.rates), args.kernel)
        if args.plot:
            import numpy as np

            plot_coverage(np.array(report['coverage']), args.plot, title=f'rates {report["rates"]}, '
                                                                           f'{report["kernel_size"]}x{report["kernel_size"]}')
        if args.format == 'json':
            print(to_json(report))
            return 0
        console.print(f'rates {report["rates"]}, kernel {report["kernel_size"]}: M = {report["m"]} (M_1 .. M_n), '
                      f'common factor {report["common_factor"]}, receptive field {report["receptive_field"]} px, '
                      f'{report["holes"]} hole(s)', highlight=False)
        console.print(report['reason'], highlight=False, soft_wrap=True)
    else:
        if not args.models or not args.erf:
            raise VisionmixError('rf needs --rates R1,R2,... or MODEL ... --erf')
        reports = erf_report(args.models, img_size=args.img_size, samples=args.samples, checkpoint=args.checkpoint)
        if args.plot:
            plot_erfs(reports, args.plot)
        if args.format == 'json':
            print(to_json(reports))
            return 0
        table = Table(title=f'effective receptive fields at {args.img_size}, {args.samples} samples',
                      header_style='bold')
        for column in ('model', 'last map', 'r50 px', 'r90 px', 'share of image'):
            table.add_column(column, justify='left' if column == 'model' else 'right')
        for r in reports:
            table.add_row(r['name'], 'x'.join(map(str, r['feature_shape'][-2:])), f'{r["r50"]:.1f}',
                          f'{r["r90"]:.1f}', f'{100 * r["nonzero_share"]:.0f}%')
        console.print(table)
    if args.plot:
        console.print(f'wrote {args.plot}', highlight=False)
    return 0


def _rates(text: str) -> list[int]:
    try:
        return [int(r) for r in text.split(',') if r.strip()]
    except ValueError:
        raise VisionmixError(f'--rates takes integers separated by commas (e.g. 1,2,5), got {text!r}') from None


def _add_rf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('rf', help='receptive fields: HDC coverage of dilation rates, or models\' empirical fields',
                       description='With --rates: how often each input pixel is used by the centre output pixel of a '
                                   'stack of dilated convolutions, the HDC rule (M_i) and its verdict. With MODEL ... '
                                   '--erf: the empirical effective receptive field (Luo et al. 2016) of each model\'s '
                                   'last feature map, at random init or from a checkpoint.')
    p.add_argument('models', nargs='*', metavar='MODEL', help='model names or specs (with --erf)')
    p.add_argument('--rates', metavar='R1,R2,...', help='dilation rates, bottom layer first')
    p.add_argument('--kernel', type=int, default=3, help='kernel size of the dilated convolutions (default 3)')
    p.add_argument('--erf', action='store_true', help='measure the empirical effective receptive field of MODEL(s)')
    p.add_argument('--img-size', type=size_arg, default=224, metavar='N|HxW', help='input size (default 224)')
    p.add_argument('--samples', type=int, default=16, help='random inputs averaged (default 16)')
    p.add_argument('--checkpoint', help='weights to load (one model)')
    p.add_argument('--plot', metavar='FILE.png', help='draw the coverage map or the ERF heat maps')
    p.add_argument('--format', choices=('table', 'json'), default='table')
    p.set_defaults(func=cmd_rf)


# ---------------------------------------------------------------------------------------------------------- bpr

def _bpr_source(args: argparse.Namespace, images: bool = False):  # noqa: ANN202 - a bpr_tools.SceneSource
    from .analysis import bpr_tools

    if images and getattr(args, 'images', None):
        if args.dataset:
            raise VisionmixError('give either IMAGES or --dataset, not both')
        return bpr_tools.files_source(args.images)
    if not args.dataset:
        raise VisionmixError('give --dataset SPEC (an instance dataset: shapes-inst, coins, coco:IMAGES_DIR:ANN.json)'
                             + (' or IMAGES' if images else ''))
    return bpr_tools.dataset_source(args.dataset, args.split, args.img_size)


def _bpr_report_table(rep: dict, console: Console) -> None:
    table = Table(title=f'BPR report on {rep["source"]} (%, Boundary IoU d = {rep["dilation_ratio"]} x diagonal)',
                  header_style='bold')
    columns = ('mask AP', 'AP50', 'AP75', 'Boundary AP', 'Boundary IoU', 'mask IoU', 'pairs')
    table.add_column('results')
    for column in columns:
        table.add_column(column, justify='right')
    keys = ('mask_ap', 'mask_ap50', 'mask_ap75', 'boundary_ap', 'boundary_iou', 'mask_iou')
    for label, r in rep['results'].items():
        table.add_row(label, *(fmt(r[k], '.2f') for k in keys), str(r['pairs']))
    console.print(table)
    if rep['gain']:
        console.print('gain (last - first): ' + ', '.join(f'{k} {fmt(v, "+.2f")}' for k, v in rep['gain'].items()),
                      highlight=False)


def _bpr_run(args: argparse.Namespace) -> dict:
    """Run one ``bpr`` step; returns its result."""
    from .analysis import bpr_tools

    command = args.bpr_command
    if command in ('coarse', 'report') and args.output:
        check_output_path(args.output)
    source = _bpr_source(args, images=command == 'refine')
    if command == 'coarse':
        if (args.degrade is None) == (args.checkpoint is None):
            raise VisionmixError('bpr coarse takes one of --degrade N (ground truth at 1/N) or --checkpoint '
                                 'MASKRCNN_RUN')
        if args.degrade is not None:
            return bpr_tools.coarse_from_gt(source, args.output, args.degrade)
        return bpr_tools.coarse_from_checkpoint(source, args.checkpoint, args.output)
    if command == 'extract':
        return bpr_tools.extract(source, args.coarse, args.output, args.patch_size, args.iou_thresh, args.padding,
                                 args.iou_min, args.val_fraction, args.seed, args.overwrite, args.skip_empty)
    if command == 'refine':
        return bpr_tools.refine(source, args.coarse, args.checkpoint, args.output, args.iou_thresh, args.patch_size,
                                args.padding, args.batch_size, args.min_score, not args.no_overlays, args.overwrite,
                                args.skip_empty)
    labels = args.labels.split(',') if args.labels else [Path(p).stem for p in args.results]
    if len(labels) != len(args.results) or len(set(labels)) != len(labels):
        raise VisionmixError(f'--labels needs {len(args.results)} distinct comma-separated names, got {args.labels!r}')
    return bpr_tools.report(source, dict(zip(labels, args.results)), args.output, args.dilation_ratio,
                            skip_empty=args.skip_empty)


def cmd_bpr(args: argparse.Namespace, console: Console) -> int:
    res = _bpr_run(args)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    say = lambda text: console.print(text, highlight=False, markup=False)  # noqa: E731
    command = args.bpr_command
    if command == 'coarse':
        lost = res.get('vanished', res.get('empty', 0))
        say(f'wrote {res["output"]}: {res["instances"]} coarse instance(s) on {res["images"]} image(s) from '
            f'{res["method"]}' + (f'; {lost} empty mask(s) left out' if lost else ''))
    elif command == 'extract':
        say(f'wrote {res["output"]}: {res["split_patches"]["train"]} train / {res["split_patches"]["val"]} val '
            f'patches from {res["pairs"]} of {res["instances"]} coarse instance(s) ({res["dropped"]} dropped: best '
            f'IoU <= {args.iou_min})')
    elif command == 'refine':
        geo = res['geometry']
        say(f'wrote {res["output"]}: {res["instances"]} refined instance(s) ({geo["patch_size"]} px patches at '
            f'{geo["out_size"]} px, NMS {res["iou_thresh"]})')
    if res.get('report') is not None or command == 'report':
        _bpr_report_table(res['report'] if command == 'refine' else res, console)
    return 0


def _bpr_source_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument('--dataset', metavar='SPEC', help='instance dataset: shapes-inst[:N], coins, '
                                                     'coco:IMAGES_DIR:ANNOTATIONS.json')
    p.add_argument('--split', choices=('train', 'val'), default=split, help=f'dataset split (default {split})')
    p.add_argument('--img-size', type=int, default=128,
                   help='side of generated datasets (shapes-inst; default 128, the maskrcnn default)')
    p.add_argument('--skip-empty', action='store_true', help='drop empty instance masks instead of refusing them')


def _add_bpr(sub: argparse._SubParsersAction) -> None:
    from .bpr import INFER_IOU_THRESH, PATCH_SIZE, TRAIN_IOU_THRESH

    p = sub.add_parser('bpr', help='BPR: refine instance-mask boundaries with patches (coarse, extract, refine, '
                                   'report)',
                       description='Boundary Patch Refinement (Tang et al., CVPR 2021): coarse instance masks (a '
                                   'COCO results JSON, e.g. from a maskrcnn run) are refined patch by patch along '
                                   'their boundary by a refiner trained with `visionmix train --model bpr:BACKBONE '
                                   '--dataset bpr-patches:DIR`.')
    bsub = p.add_subparsers(dest='bpr_command', metavar='STEP', required=True, parser_class=_Parser)
    c = bsub.add_parser('coarse', help='coarse masks as a COCO results JSON: degraded ground truth or a maskrcnn run')
    _bpr_source_args(c, 'val')
    c.add_argument('--degrade', type=int, metavar='N', help='ground truth at 1/N resolution (area down, bilinear up)')
    c.add_argument('--checkpoint', metavar='RUN', help='a maskrcnn:BACKBONE run whose detections are the coarse masks')
    c.add_argument('--output', required=True, metavar='FILE.json')
    e = bsub.add_parser('extract', help='coarse masks + ground truth -> a patch dataset (bpr-patches:DIR)')
    _bpr_source_args(e, 'train')
    e.add_argument('--coarse', required=True, metavar='RESULTS.json', help='coarse masks, COCO results JSON')
    e.add_argument('--output', required=True, metavar='DIR')
    e.add_argument('--patch-size', type=int, default=PATCH_SIZE, help=f'patch side (official {PATCH_SIZE})')
    e.add_argument('--iou-thresh', type=float, default=TRAIN_IOU_THRESH,
                   help=f'NMS IoU of the patch boxes (official training set {TRAIN_IOU_THRESH})')
    e.add_argument('--padding', type=int, default=0, help='context pixels around each patch (official 0)')
    e.add_argument('--iou-min', type=float, default=0.5, help='drop coarse instances whose best GT IoU is <= this')
    e.add_argument('--val-fraction', type=float, default=0.1, help='images whose patches form the val split')
    e.add_argument('--seed', type=int, default=0, help='seed of the val images draw')
    e.add_argument('--overwrite', action='store_true', help='replace an existing DIR')
    r = bsub.add_parser('refine', help='refine coarse masks with a trained bpr:BACKBONE run')
    r.add_argument('images', nargs='*', metavar='IMAGE', help='image files / folders, numbered 1..N like predict '
                                                              '(or --dataset)')
    _bpr_source_args(r, 'val')
    r.add_argument('--checkpoint', required=True, metavar='RUN', help='the refiner: a bpr:BACKBONE run')
    r.add_argument('--coarse', required=True, metavar='RESULTS.json', help='coarse masks, COCO results JSON')
    r.add_argument('--output', required=True, metavar='DIR', help=f'writes {"refined_results.json"}, overlays/ and '
                                                                  f'(with --dataset) report.json')
    r.add_argument('--iou-thresh', type=float, default=INFER_IOU_THRESH,
                   help=f'NMS IoU of the patch boxes (official Cityscapes inference {INFER_IOU_THRESH})')
    r.add_argument('--patch-size', type=int, help="patch side (default: the refiner's training patches')")
    r.add_argument('--padding', type=int, help="context pixels (default: the refiner's training patches')")
    r.add_argument('--batch-size', type=int, default=64, help='patches per forward pass')
    r.add_argument('--min-score', type=float, default=0.0, help='pass instances scoring below this unrefined')
    r.add_argument('--no-overlays', action='store_true', help='skip the overlay PNGs')
    r.add_argument('--overwrite', action='store_true', help='replace an existing DIR')
    t = bsub.add_parser('report', help='mask AP, Boundary AP and Boundary IoU of results files, side by side')
    _bpr_source_args(t, 'val')
    t.add_argument('results', nargs='+', metavar='RESULTS.json', help='COCO results files (first: the baseline)')
    t.add_argument('--labels', metavar='A,B,...', help='names of the results files (default: their stems)')
    t.add_argument('--dilation-ratio', type=float, default=0.02, help='Boundary IoU band, fraction of the diagonal')
    t.add_argument('--output', metavar='FILE.json', help='also write the report as JSON')
    for q in (c, e, r, t):
        q.add_argument('--json', action='store_true', help='print the result as JSON')
    p.set_defaults(func=cmd_bpr)


# ---------------------------------------------------------------------------------------------------------- main

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: ...`` and exit 2, like every other user error (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f'error: {message} (see `{self.prog} --help`)\n')


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_models, _add_card, _add_datasets, _add_profile, _add_train, _add_eval, _add_predict, _add_compare,
    _add_study, _add_export, _add_rf, _add_bpr)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog='visionmix',
        description='Vision backbones as spatial mixing + channel mixing: list, measure, train and fairly compare '
                    'MLP, attention, convolution and hybrid models.')
    parser.add_argument('--version', action='version', version=f'visionmix {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Piped output would otherwise be cut to 80 columns, which folds every name.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        return args.func(args, console)
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): nothing is wrong
        sys.stderr.close()
        return 0
    except VisionmixError as e:  # only errors meant for the user: anything else is a bug and shows its traceback
        message = ' '.join(line.strip() for line in str(e).splitlines() if line.strip())
        console.print(f'error: {message}', style='red', markup=False, highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR


if __name__ == '__main__':
    sys.exit(main())
