"""The ``visionmix`` command: one thin entry point; each subcommand's work lives in the library."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
from .registry import FAMILIES, ModelCard, UnknownModelError, list_models, model_card


def _fmt_params(n: int) -> str:
    return f'{n / 1e6:.2f}M'


def _fmt(value: float | None, spec: str = '.2f') -> str:
    return '-' if value is None else format(value, spec)


def models_table(cards: Sequence[ModelCard]) -> Table:
    table = Table(title=f'visionmix models ({len(cards)})', header_style='bold')
    for column, justify in (('name', 'left'), ('family', 'left'), ('source', 'left'), ('params', 'right'),
                            ('GMACs', 'right'), ('top-1', 'right'), ('input', 'right'), ('verified', 'left')):
        table.add_column(column, justify=justify, overflow='fold', no_wrap=column in ('name', 'input'))
    for card in cards:
        c, h, w = card.input_size
        table.add_row(card.name, card.family, card.source, _fmt_params(card.params), _fmt(card.gmacs),
                      _fmt(card.top1, '.1f'), f'{h}x{w}', card.verified)
    return table


def cmd_models(args: argparse.Namespace, console: Console) -> int:
    names = list_models(args.pattern, family=args.family, source=args.source)
    if not names:
        console.print(f'no model matches pattern={args.pattern!r} family={args.family!r}', style='yellow')
        return 1
    cards = [model_card(n) for n in names]
    if args.json:
        print(json.dumps([c.to_dict() for c in cards], indent=2))
    else:
        console.print(models_table(cards))
    return 0


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


def _img_size(text: str) -> int | tuple[int, int]:
    """'224' or '224x192' (H x W); checked for sign by the library, so the error is one line."""
    try:
        if 'x' in text.lower():
            h, w = text.lower().split('x')
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected N or HxW, got {text!r}') from None


def _check_output(path: str) -> None:
    """Fail before a long run, not after it, when the output file cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path('.')
    if target.is_dir():
        raise ValueError(f'cannot write {path}: it is a directory')
    if not parent.is_dir():
        raise ValueError(f'cannot write {path}: directory {parent} does not exist')
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f'cannot write {path}: permission denied')


def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    from .profile import compare_speed, profile_models
    from .profile.report import FORMATS, comparison_table, format_for_path, plot_profiles, profile_table, render

    if args.format is not None and args.format not in FORMATS:
        raise ValueError(f'unknown format {args.format!r}; choose from {", ".join(FORMATS)}')
    for path in (args.output, args.plot):
        if path is not None:
            _check_output(path)
    file_format = format_for_path(args.output, args.format) if args.output else None
    for name in [*args.models, *([args.vs] if args.vs else [])]:
        model_card(name)  # unknown names fail before any model is built
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
        raise ValueError(f'cannot write output: {e}') from None
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    from .engine.config import parse_overrides

    out = parse_overrides(getattr(args, 'set', None))
    for key in ('model', 'dataset', 'epochs', 'batch_size', 'lr', 'seed', 'output', 'threads', 'workers'):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if getattr(args, 'img_size', None) is not None:
        out['img_size'] = args.img_size
    for flag in ('channels_last', 'compile', 'skip_corrupt'):
        value = getattr(args, flag, False)
        if value:
            out[flag] = value  # True, or for --compile a backend name
    return out


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from .engine.config import load_config
    from .engine.train import train

    if args.resume:
        if args.config or _overrides(args):
            raise ValueError('--resume continues a run with its saved recipe; drop the other options')
        result = train(resume=args.resume, console=console)
    else:
        cfg = load_config(args.config, _overrides(args))
        model_card(cfg.model)  # unknown names fail before the data is loaded
        result = train(cfg, console=console)
    label = {'top1': 'top-1', 'dice': 'Dice'}.get(result.metric, result.metric)
    console.print(f'{result.run_dir}: {label} {result.score:.2f}% after {result.epochs_done} epochs (best '
                  f'{result.best_score:.2f}% at epoch {result.best_epoch})', highlight=False)
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from .engine.evaluate import run_eval

    res = run_eval(args.checkpoint, dataset=args.dataset, output=args.output, batch_size=args.batch_size,
                   skip_corrupt=args.skip_corrupt)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != 'confusion'}, indent=2))
        return 0
    table = Table(title=f'{res["model"]} on {res["dataset"]} ({res["num_images"]} images)', header_style='bold')
    table.add_column('class')
    if res.get('task') == 'segmentation':
        table.add_column('Dice %', justify='right')
        table.add_column('IoU %', justify='right')
        for name, m in res['per_class'].items():
            table.add_row(name, f'{m["dice"]:.2f}', f'{m["iou"]:.2f}')
        console.print(table)
        console.print(f'Dice {res["dice"]:.2f}%  IoU {res["iou"]:.2f}%  loss {res["loss"]:.4f}', highlight=False)
        console.print(f'wrote {", ".join(res["files"])}', highlight=False)
        return 0
    table.add_column('accuracy %', justify='right')
    for name, acc in res['per_class'].items():
        table.add_row(name, f'{acc:.2f}')
    console.print(table)
    console.print(f'top-1 {res["top1"]:.2f}%  top-5 {res["top5"]:.2f}%  loss {res["loss"]:.4f}', highlight=False)
    console.print(f'wrote {", ".join(res["files"])}', highlight=False)
    return 0


def cmd_predict(args: argparse.Namespace, console: Console) -> int:
    from .engine.evaluate import predict

    results = predict(args.checkpoint, args.images, topk=args.topk, output=args.output)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        if 'mask' in r:  # a segmentation checkpoint
            shares = ', '.join(f'{c} {100 * f:.1f}%' for c, f in r['foreground'].items())
            console.print(f'{r["image"]}: {r["mask"]} ({shares} of pixels)', highlight=False, markup=False)
            continue
        tops = ', '.join(f'{t["label"]} {100 * t["prob"]:.1f}%' for t in r['top'])
        console.print(f'{r["image"]}: {tops}', highlight=False, markup=False)
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from .engine.compare import command_line, compare, parse_model_arg
    from .engine.config import parse_overrides

    entries = [parse_model_arg(m) for m in args.models] if args.models else None
    compare(entries, dataset=args.dataset, epochs=args.epochs, seeds=args.seeds, img_size=args.img_size,
            config=args.config, overrides=parse_overrides(args.set), output=args.output,
            profile=not args.no_profile, console=console, command=command_line())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='visionmix',
        description='Vision backbones as spatial mixing + channel mixing: list, measure, train and fairly compare '
                    'MLP, attention, convolution and hybrid models.')
    parser.add_argument('--version', action='version', version=f'visionmix {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    p = sub.add_parser('models', help='list registered models with their card facts',
                       description='List registered models (ours and the timm / torchvision pass-throughs) with '
                                   'family, params, GMACs, published top-1, input size and what our tests verified.')
    p.add_argument('pattern', nargs='?', default=None,
                   help="wildcard ('hire_*') or substring ('mlp') to filter names; default: all")
    p.add_argument('--family', choices=FAMILIES, help='keep one family')
    p.add_argument('--source', choices=('visionmix', 'timm', 'torchvision'), help='keep one implementation source')
    p.add_argument('--json', action='store_true', help='print the cards as JSON instead of a table')
    p.set_defaults(func=cmd_models)

    p = sub.add_parser('card', help="print one model's card",
                       description='Print every field of a model card: paper, official code and commit, params, '
                                   'GMACs and counter, published top-1, input size, mean/std, license, verified.')
    p.add_argument('name', help='registered model name')
    p.add_argument('--json', action='store_true', help='print as JSON')
    p.set_defaults(func=cmd_card)

    p = sub.add_parser('profile', help='measure params, MACs, speed and memory of models',
                       description='Measure parameters, MACs (vs the card), inference latency and throughput, '
                                   'training-step throughput, peak memory and achieved GFLOP/s (vs this machine\'s '
                                   'GEMM peak). With --vs, time two models interleaved and report per-pair ratios.')
    p.add_argument('models', nargs='+', metavar='MODEL', help='registered model name(s)')
    p.add_argument('--vs', metavar='MODEL', help='compare each MODEL against this one, interleaved A B A B')
    p.add_argument('--img-size', type=_img_size, metavar='N|HxW', help="input size; default: the card's")
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
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser('train', help='train one model with the DeiT/SPACH recipe (timm parts), resumable',
                       description='Train a registered model on a local dataset (digits, synthetic, folder:PATH, '
                                   'cifar10:PATH, cifar100:PATH; segmentation models on synthetic-seg or '
                                   'segfolder:PATH) with a YAML recipe plus overrides. Writes the run directory: '
                                   'config.yaml, metrics.csv, curves.png, last/best.safetensors, checkpoints/ for '
                                   '--resume. Under torchrun it trains with DDP.')
    p.add_argument('--config', metavar='FILE.yaml', help='recipe file (see configs/digits.yaml)')
    p.add_argument('--model', help='registered model name')
    p.add_argument('--dataset', help='digits | synthetic[:N] | folder:PATH | cifar10:PATH | cifar100:PATH; '
                                     'segmentation: synthetic-seg[:N] | segfolder:PATH')
    p.add_argument('--epochs', type=int)
    p.add_argument('--batch-size', type=int, help='global batch size')
    p.add_argument('--lr', type=float)
    p.add_argument('--img-size', type=int, help='training input side (default 32); too small for the model is an '
                                                'error that names the smallest side that works')
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

    p = sub.add_parser('predict', help='top-k classes (or masks) of images with a trained checkpoint',
                       description="Classify image files with a visionmix train checkpoint: top-k classes and "
                                   "probabilities, class names from the checkpoint, preprocessing from the model's "
                                   "pretrained_cfg. A segmentation checkpoint writes <stem>_mask.png per image to "
                                   "--output.")
    p.add_argument('images', nargs='+', metavar='IMAGE')
    p.add_argument('--checkpoint', required=True, help='run directory or .safetensors file')
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--output', default='predictions',
                   help='directory for the mask PNGs of a segmentation checkpoint (default predictions)')
    p.add_argument('--json', action='store_true', help='print the results as JSON')
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser('compare', help='train and profile models under one recipe; write a report',
                       description='The fair comparison: every model gets the identical recipe, data, budget and '
                                   'seeds, is profiled at the training input size, and lands in one report '
                                   '(report.md, results.json/csv, Pareto plots, curves). Without --models it runs '
                                   'the embedded SPACH-style study on digits. Re-run to resume.')
    p.add_argument('--models', nargs='+', metavar='MODEL',
                   help="default-study labels, registry names, or NAME:'{yaml kwargs}'")
    p.add_argument('--dataset', help='dataset spec (default digits)')
    p.add_argument('--epochs', type=int)
    p.add_argument('--seeds', type=int, nargs='+', help='seeds (default: 0)')
    p.add_argument('--img-size', type=int)
    p.add_argument('--config', metavar='FILE.yaml', help='recipe file replacing the default recipe keys it sets')
    p.add_argument('--set', action='append', metavar='KEY=VALUE', help='override a recipe key')
    p.add_argument('--output', default='runs/compare', help='report directory (default runs/compare)')
    p.add_argument('--no-profile', action='store_true', help='skip profiling (no params/MACs/img/s columns)')
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Piped output would otherwise be cut to 80 columns, which folds every name.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        return args.func(args, console)
    except (UnknownModelError, ValueError) as e:
        console.print(f'error: {e}', style='red', markup=False, highlight=False, soft_wrap=True)  # one line
        return 2


if __name__ == '__main__':
    sys.exit(main())
