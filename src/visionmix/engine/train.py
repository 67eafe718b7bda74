"""``visionmix train``: one model, one recipe, built from timm's parts, resumable exactly.

Checkpoints (in the run directory):

* ``last.safetensors`` / ``best.safetensors``: the evaluated weights (EMA when the recipe keeps one) with metadata
  (model name and kwargs, classes, input size, mean / std), written atomically; ``visionmix eval`` / ``predict``
  read them.
* ``checkpoints/``: everything ``--resume`` needs. ``model_eN.safetensors`` (+ ``ema_eN.safetensors``) hold the
  weights after epoch N, ``state.pt`` (``torch.load(weights_only=True)``) the optimizer, scheduler, RNG states,
  history and the name of the weight files. ``state.pt`` is replaced atomically *after* its weight files are on
  disk, so it is the commit point: a kill at any moment leaves a consistent checkpoint of the last finished epoch.
* ``tensorboard/`` (when tensorboard is installed): the ``metrics.csv`` columns per epoch, ``train_*`` / ``val_*``
  as ``train/*`` / ``val/*``.

Exact resume: every epoch starts by seeding Python, NumPy and torch from ``(seed, epoch)`` and shuffles with a
generator seeded the same way, so epoch N does the same work whether or not the process was restarted before it;
the RNG states are saved and restored too.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from rich.console import Console
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from ..checkpoint import atomic_write, save_checkpoint
from ..data import build_datasets, dataset_task
from ..registry import create_model, model_card
from .config import ConfigError, TrainConfig, environment_info, load_config
from .tasks import Task, build_transforms, get_task, model_task

__all__ = ['TrainError', 'train', 'build_model', 'build_transforms', 'RunResult', 'CHECKPOINT_DIR', 'resolve_task',
           'build_for_input', 'input_error', 'smallest_input_size']

CHECKPOINT_DIR = 'checkpoints'
STATE_FILE = 'state.pt'
CONFIG_FILE = 'config.yaml'
LOG_FILE = 'metrics.csv'
SUMMARY_FILE = 'summary.json'


class TrainError(ValueError):
    """A run that cannot start or resume as asked."""


@dataclass
class RunResult:
    """What a finished (or stopped) run produced.

    ``score`` / ``best_score`` are the last and best value of the task's main validation metric ``metric``:
    ``'top1'`` (%) for classification, ``'dice'`` (%) for segmentation. ``top1`` / ``best_top1`` (and ``dice`` /
    ``best_dice``) name them for the task that has them.
    """

    run_dir: Path
    epochs_done: int
    history: list[dict[str, Any]]
    score: float
    best_score: float
    best_epoch: int
    train_seconds: float
    finished: bool
    metric: str = 'top1'

    def _named(self, metric: str, value: float) -> float:
        if metric != self.metric:
            raise AttributeError(f'a {self.metric} run has no {metric}; use .score ({self.metric})')
        return value

    top1 = property(lambda self: self._named('top1', self.score))
    best_top1 = property(lambda self: self._named('top1', self.best_score))
    dice = property(lambda self: self._named('dice', self.score))
    best_dice = property(lambda self: self._named('dice', self.best_score))

    def to_dict(self) -> dict[str, Any]:
        return {'run_dir': str(self.run_dir), 'epochs_done': self.epochs_done, 'metric': self.metric,
                self.metric: self.score, f'best_{self.metric}': self.best_score, 'best_epoch': self.best_epoch,
                'train_seconds': self.train_seconds, 'finished': self.finished, 'history': self.history}


# ---------------------------------------------------------------------------------------------------- building

def build_model(name: str, num_classes: int, img_size: int, model_kwargs: dict[str, Any] | None = None,
                drop_path: float = 0.0) -> nn.Module:
    """``create_model`` with the dataset's classes and input size (for models that take ``img_size``)."""
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault('num_classes', num_classes)
    if drop_path:
        kwargs.setdefault('drop_path_rate', drop_path)
    try:
        return create_model(name, img_size=img_size, **{k: v for k, v in kwargs.items() if k != 'img_size'})
    except TypeError as e:
        if 'img_size' not in str(e):
            raise TrainError(f'{name}: {e}') from None
    try:
        return create_model(name, **kwargs)
    except TypeError as e:
        raise TrainError(f'{name}: {e}') from None


def data_config(model: nn.Module, img_size: int, interpolation: str = 'bicubic') -> dict[str, Any]:
    """Mean / std from the model's pretrained_cfg (timm's resolve_data_config) at the training size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return dict(input_size=(3, img_size, img_size), mean=tuple(cfg['mean']), std=tuple(cfg['std']),
                interpolation=interpolation, crop_pct=1.0)


def resolve_task(model_name: str, dataset: str) -> Task:
    """The model card's task; a dataset of the other kind (a classifier on masks or the reverse) is a TrainError."""
    task, data = model_task(model_name), dataset_task(dataset)
    if task != data:
        hint = ('a segmentation dataset (synthetic-seg[:N], segfolder:PATH)' if task == 'segmentation'
                else 'a classification dataset (digits, synthetic[:N], folder:PATH, cifar10:PATH, cifar100:PATH)')
        raise TrainError(f'{model_name} is a {task} model but {dataset!r} is a {data} dataset; give it {hint}')
    return get_task(task)


def _first_line(e: BaseException) -> str:
    return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0]}'


def input_error(model: nn.Module, img_size: int, expected: tuple[int, ...] | None = None) -> str | None:
    """None if ``model`` (eval mode, no grad) maps one zeros image of ``img_size`` to the ``expected`` shape; else
    what went wrong, in one line. Leaves the model's mode and every RNG as they were."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            device = next(model.parameters(), torch.empty(0)).device
            out = model(torch.zeros(1, 3, img_size, img_size, device=device))
    except Exception as e:  # noqa: BLE001 - layers fail on a too-small input with many error types
        return _first_line(e)
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if expected is not None and shape != expected:
        return f'it returns {shape} for one image, expected {expected}'
    return None


def smallest_input_size(build: Callable[[int], nn.Module], start: int, limit: int,
                        expected: Callable[[int], tuple[int, ...]] | None = None) -> int | None:
    """Smallest side in ``[start, limit]`` that the model ``build(side)`` can be built for and runs on (giving the
    ``expected(side)`` output shape, when given), or None.

    Doubles from ``start`` to the first side that works, then bisects: exact when bigger inputs never fail once a
    side works, which holds for every registered model (tests/test_trainable.py trains each at the side found).
    """
    def works(side: int) -> bool:
        # building draws init weights: keep the run's RNG untouched; probes at sizes that fail may warn, say nothing
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                model = build(side)
            except Exception:  # noqa: BLE001 - e.g. a token-mixing MLP built for zero tokens
                return False
            return input_error(model, side, expected(side) if expected else None) is None

    if works(start):
        return start
    bad, good = start, None
    while good is None:
        if bad >= limit:
            return None
        side = min(2 * bad, limit)
        if works(side):
            good = side
        else:
            bad = side
    while good - bad > 1:
        mid = (bad + good) // 2
        bad, good = (bad, mid) if works(mid) else (mid, good)
    return good


def build_for_input(name: str, img_size: int, build: Callable[[int], nn.Module],
                    expected: Callable[[int], tuple[int, ...]]) -> nn.Module:
    """``build(img_size)``, checked before any training: a model that cannot be built for or run on ``img_size``
    images (or returns another shape than ``expected(img_size)``) raises a one-line :class:`TrainError` naming the
    ``--img-size`` that works, found by rebuilding."""
    try:
        model = build(img_size)
    except TrainError:
        raise
    except Exception as e:  # noqa: BLE001 - layers reject a too-small size with many error types
        model, error = None, f'it cannot be built for it ({_first_line(e)})'
    else:
        error = input_error(model, img_size, expected(img_size))
    if error is None:
        return model
    card_side = max(model_card(name).input_size[1:])
    side = smallest_input_size(build, img_size + 1, max(card_side, 2 * img_size), expected)
    if side is None:
        raise TrainError(f'{name} cannot train on {img_size}x{img_size} input: {error}')
    raise TrainError(f'{name} cannot take {img_size}x{img_size} input (needs >= {side}x{side}): use --img-size '
                     f'{side}')


def weights_metadata(cfg: TrainConfig, classes: list[str], dcfg: dict[str, Any], epoch: int, score: float,
                     ema: bool, task: Task | None = None) -> dict[str, str]:
    """Everything eval / predict need to rebuild the model, as safetensors string metadata."""
    task = task or get_task('classification')
    return dict(format='visionmix-train', model=cfg.model, model_kwargs=json.dumps(cfg.model_kwargs),
                num_classes=str(len(classes)), classes=json.dumps(classes), img_size=str(cfg.img_size),
                mean=json.dumps(list(dcfg['mean'])), std=json.dumps(list(dcfg['std'])),
                interpolation=dcfg['interpolation'], epoch=str(epoch), dataset=cfg.dataset,
                weights='ema' if ema else 'model', task=task.name, **{task.metric: f'{score:.4f}'})


# --------------------------------------------------------------------------------------------------- utilities

def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(python=random.getstate(), torch=torch.get_rng_state(),
                numpy=(kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)))


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state['python'])
    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    s = (seed * 1_000_003 + epoch + rank * 100_003) % (2 ** 31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); (0, 1) when not launched by it."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    return _dist_info()


def _read_config_file(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise TrainError(f'cannot resume {run_dir}: no {CONFIG_FILE} there (is it a visionmix run directory?)')
    data = yaml.safe_load(path.read_text())
    return data['config']


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return

    def write(tmp: str) -> None:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write)


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = '', metric: str = 'top1',
                metric_label: str = 'top-1') -> Path:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [h['epoch'] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h['train_loss'] for h in history], label='train')
    ax1.plot(epochs, [h['val_loss'] for h in history], label='val')
    ax1.set_xlabel('epoch')
    ax1.set_ylabel('loss')
    ax1.legend()
    ax2.plot(epochs, [h[f'train_{metric}'] for h in history], label='train')
    ax2.plot(epochs, [h[f'val_{metric}'] for h in history], label='val')
    ax2.set_xlabel('epoch')
    ax2.set_ylabel(f'{metric_label} (%)')
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- train

def train(cfg: TrainConfig | None = None, *, resume: str | os.PathLike | None = None, console: Console | None = None,
          stop_after: int | None = None, progress: bool = True, label: str | None = None) -> RunResult:
    """Train ``cfg.model`` on ``cfg.dataset`` and write the run directory ``cfg.output``.

    Args:
        cfg: The recipe (see :class:`TrainConfig`); ignored with ``resume`` (the run's saved config is used).
        resume: A run directory to continue from its last checkpoint.
        console: Where progress lines go (default: a new rich console).
        stop_after: Stop after this epoch (the schedule still spans ``cfg.epochs``), e.g. to test resuming.
        progress: Show a per-epoch rich progress bar when the console is a terminal.
        label: Name shown in progress lines.
    """
    console = console or Console()
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file():
            raise TrainError(f'cannot resume {run_dir}: no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}) there yet')
        cfg = load_config(overrides=_read_config_file(run_dir))
        cfg.output = str(run_dir)
    elif cfg is None:
        raise TrainError('train() needs a config or resume=')
    else:
        run_dir = Path(cfg.output)
        if (run_dir / CHECKPOINT_DIR / STATE_FILE).exists():
            raise TrainError(f'{run_dir} already holds a run; pass --resume {run_dir} to continue it or choose '
                             f'another --output')
    rank, world = setup_distributed()
    is_main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    label = label or cfg.model
    device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if torch.cuda.is_available() \
        else torch.device('cpu')

    # data and model
    run_task = resolve_task(cfg.model, cfg.dataset)
    notes = run_task.check_config(cfg)
    seed_epoch(cfg.seed, -1)  # model init depends on the seed only
    train_ds, val_ds, info = build_datasets(cfg.dataset, img_size=cfg.img_size, skip_corrupt=cfg.skip_corrupt,
                                            limit=cfg.limit_train)
    model = build_for_input(
        cfg.model, cfg.img_size,
        lambda side: build_model(cfg.model, info.num_classes, side, cfg.model_kwargs, cfg.drop_path),
        lambda side: run_task.output_shape(info.num_classes, side))
    dcfg = data_config(model, cfg.img_size, cfg.interpolation)
    model.pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {}, **{
        'input_size': dcfg['input_size'], 'mean': dcfg['mean'], 'std': dcfg['std'], 'crop_pct': 1.0,
        'interpolation': dcfg['interpolation'], 'num_classes': info.num_classes})
    train_ds.transform, val_ds.transform = run_task.transforms(cfg, dcfg)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    mixup_on = cfg.mixup > 0 or cfg.cutmix > 0
    per_rank_batch = max(1, cfg.batch_size // world)
    if mixup_on and per_rank_batch % 2:
        raise ConfigError(f'mixup / cutmix need an even batch size per process, got {per_rank_batch}')
    drop_last = mixup_on and len(train_ds) // world >= per_rank_batch
    updates_per_epoch = (len(train_ds) // world) // per_rank_batch if drop_last \
        else math.ceil(math.ceil(len(train_ds) / world) / per_rank_batch)
    if updates_per_epoch == 0:
        raise TrainError(f'{len(train_ds)} training images are fewer than one batch of {per_rank_batch}')
    mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                     switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                     num_classes=info.num_classes) if mixup_on else None
    criterion = run_task.criterion(cfg, info.num_classes)

    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    filter_bias_and_bn=True)
    scheduler = None
    if cfg.sched != 'none':
        scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                           warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
                                           min_lr=cfg.min_lr, step_on_epochs=False,
                                           updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=True) if cfg.model_ema else None
    train_module: nn.Module = model
    if world > 1:
        train_module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index else None)
    if cfg.compile:  # True: torch's default backend (inductor); a string names another, e.g. 'aot_eager'
        # static shapes: a run's batches share one size (a short tail recompiles once); a symbolic image size trips
        # inductor on some models (torch 2.14, SPACH stems: sympy 'cannot determine truth value of Relational')
        train_module = torch.compile(train_module, dynamic=False,
                                     **({} if cfg.compile is True else {'backend': cfg.compile}))

    # state
    ckpt_dir = run_dir / CHECKPOINT_DIR
    history: list[dict[str, Any]] = []
    start_epoch, best_score, best_epoch, train_seconds = 0, -1.0, -1, 0.0
    if resume is not None:
        from safetensors.torch import load_file

        state = torch.load(ckpt_dir / STATE_FILE, map_location='cpu', weights_only=True)
        model.load_state_dict(load_file(str(ckpt_dir / state['weights'])))
        if ema is not None:
            ema.module.load_state_dict(load_file(str(ckpt_dir / state['ema_weights'])))
        optimizer.load_state_dict(state['optimizer'])
        if scheduler is not None and state['scheduler'] is not None:
            scheduler.load_state_dict(state['scheduler'])
        set_rng_state(state['rng'])
        start_epoch, history = state['epoch'], list(state['history'])
        best_score = state['best_score'] if 'best_score' in state else state['best_top1']  # older runs: top-1
        best_epoch, train_seconds = state['best_epoch'], state['train_seconds']
        if is_main:
            console.print(f'{label}: resuming {run_dir} after epoch {start_epoch}/{cfg.epochs}', highlight=False)
    elif is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
        record = dict(config=cfg.to_dict(), data=dict(spec=info.spec, classes=info.classes, num_train=info.num_train,
                                                       num_val=info.num_val, skipped=len(info.skipped),
                                                       description=info.description, task=info.task),
                      data_config=dict(dcfg, input_size=list(dcfg['input_size']), mean=list(dcfg['mean']),
                                       std=list(dcfg['std'])),
                      world_size=world, environment=environment_info())
        text = yaml.safe_dump(json.loads(json.dumps(record)), sort_keys=False)
        atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
        if info.skipped:
            console.print(f'{label}: skipped {len(info.skipped)} unreadable image(s), e.g. {info.skipped[0]}',
                          style='yellow', highlight=False)
        for note in notes:
            console.print(f'{label}: note: {note}', style='yellow', highlight=False)
    writer = _tensorboard(run_dir) if is_main else None

    val_sampler = DistributedSampler(val_ds, shuffle=False) if world > 1 else SequentialSampler(val_ds)
    val_loader = DataLoader(val_ds, batch_size=max(per_rank_batch, 64), sampler=val_sampler, num_workers=cfg.workers)
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    metrics: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, last_epoch):
            epoch_seed = seed_epoch(cfg.seed, epoch, rank)
            if world > 1:
                sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed, drop_last=drop_last)
                sampler.set_epoch(epoch)
            else:
                sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(epoch_seed))
            loader = DataLoader(train_ds, batch_size=per_rank_batch, sampler=sampler, num_workers=cfg.workers,
                                drop_last=drop_last, generator=torch.Generator().manual_seed(epoch_seed))
            t0 = time.perf_counter()
            model.train()
            sums = torch.zeros(4, dtype=torch.float64)  # loss * n, train metric numerator and denominator, n
            with _progress(console, progress and is_main, f'{label} epoch {epoch + 1}/{cfg.epochs}',
                           updates_per_epoch, run_task.metric_label) as (bar, task):
                for step, (images, targets) in enumerate(loader):
                    images, targets = images.to(device), targets.to(device)
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    hard = targets
                    if mixup_fn is not None:
                        images, targets = mixup_fn(images, targets)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                        output = train_module(images)
                    if not isinstance(output, torch.Tensor):  # e.g. torchvision's aux-logits tuples in train mode
                        raise TrainError(f'{label}: in training mode the model returns {type(output).__name__}, '
                                         f'not one logits tensor (turn its auxiliary outputs off, e.g. '
                                         f'aux_logits=False)')
                    loss = criterion(output.float(), targets)
                    if not math.isfinite(loss.item()):
                        raise TrainError(f'{label}: loss is {loss.item()} at epoch {epoch + 1} step {step}; lower lr')
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.clip_grad:
                        dispatch_clip_grad(model.parameters(), value=cfg.clip_grad, mode=cfg.clip_mode)
                    optimizer.step()
                    num_updates = epoch * updates_per_epoch + step + 1
                    if scheduler is not None:
                        scheduler.step_update(num_updates=num_updates)
                    if ema is not None:
                        ema.update(model, step=num_updates)
                    n = images.shape[0]
                    sums += torch.tensor([loss.item() * n, *run_task.train_counts(output.detach(), hard), n],
                                         dtype=torch.float64)
                    if bar is not None:
                        elapsed = time.perf_counter() - t0
                        bar.update(task, advance=1, loss=loss.item(), acc=100 * sums[1].item() / max(sums[2].item(), 1),
                                   lr=optimizer.param_groups[0]['lr'], ips=sums[3].item() * world / max(elapsed, 1e-9))
            if scheduler is not None:
                scheduler.step(epoch + 1)
            if world > 1:
                dist.all_reduce(sums)
            epoch_time = time.perf_counter() - t0
            train_seconds += epoch_time
            eval_model = ema.module if ema is not None else model
            metric = run_task.metric
            metrics = run_task.evaluate(eval_model, val_loader, info.num_classes, device=device,
                                        channels_last=cfg.channels_last)
            row = dict(epoch=epoch + 1, lr=optimizer.param_groups[0]['lr'], train_loss=sums[0].item() / sums[3].item(),
                       **{f'train_{metric}': 100 * sums[1].item() / max(sums[2].item(), 1)}, val_loss=metrics['loss'],
                       **{f'val_{k}': metrics[k] for k in run_task.val_metrics}, img_s=sums[3].item() / epoch_time,
                       epoch_seconds=epoch_time)
            if ema is not None:
                row[f'val_{metric}_raw'] = run_task.evaluate(model, val_loader, info.num_classes, device=device,
                                                             channels_last=cfg.channels_last)[metric]
            history.append(row)
            is_best = metrics[metric] > best_score
            if is_best:
                best_score, best_epoch = metrics[metric], epoch + 1
            if is_main:
                console.print(f'{label} epoch {epoch + 1}/{cfg.epochs}  loss {row["train_loss"]:.3f}  train '
                              f'{row[f"train_{metric}"]:.1f}%  val {run_task.metric_label} '
                              f'{row[f"val_{metric}"]:.2f}%  lr {row["lr"]:.2e}  {row["img_s"]:.0f} img/s  '
                              f'{epoch_time:.1f}s', highlight=False)
                meta = weights_metadata(cfg, info.classes, dcfg, epoch + 1, metrics[metric], ema is not None, run_task)
                save_checkpoint(eval_model, run_dir / 'last.safetensors', meta)
                if is_best and cfg.save_best:
                    save_checkpoint(eval_model, run_dir / 'best.safetensors', meta)
                _save_state(ckpt_dir, epoch + 1, model, ema, optimizer, scheduler, history, best_score, best_epoch,
                            train_seconds)
                write_history(history, run_dir / LOG_FILE)
                if writer is not None:
                    for key, value in row.items():
                        if key != 'epoch':
                            writer.add_scalar(tensorboard_tag(key), value, epoch + 1)
                    writer.flush()
            if world > 1:
                dist.barrier()
    finally:  # a run that raises still closes its event file and writer thread
        if writer is not None:
            writer.close()
    finished = len(history) >= cfg.epochs
    score = history[-1][f'val_{run_task.metric}'] if history else float('nan')
    result = RunResult(run_dir, len(history), history, score, best_score, best_epoch, train_seconds, finished,
                       run_task.metric)
    if is_main and history:
        plot_curves(history, run_dir / 'curves.png', title=label, metric=run_task.metric,
                    metric_label=run_task.metric_label)
        if finished:
            summary = json.dumps(result.to_dict(), indent=2)
            atomic_write(run_dir / SUMMARY_FILE, lambda tmp: Path(tmp).write_text(summary))
    return result


def _save_state(ckpt_dir: Path, epoch: int, model: nn.Module, ema: Any, optimizer: Any, scheduler: Any,
                history: list[dict[str, Any]], best_score: float, best_epoch: int, train_seconds: float) -> None:
    weights = f'model_e{epoch}.safetensors'
    save_checkpoint(model, ckpt_dir / weights)
    ema_weights = None
    if ema is not None:
        ema_weights = f'ema_e{epoch}.safetensors'
        save_checkpoint(ema.module, ckpt_dir / ema_weights)
    state = dict(epoch=epoch, weights=weights, ema_weights=ema_weights, optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict() if scheduler is not None else None, rng=rng_state(),
                 history=history, best_score=best_score, best_epoch=best_epoch, train_seconds=train_seconds)
    atomic_write(ckpt_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))  # the commit point
    keep = {weights, ema_weights}
    for old in ckpt_dir.glob('*_e*.safetensors'):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def tensorboard_tag(column: str) -> str:
    """metrics.csv column -> TensorBoard tag: ``train_loss`` -> ``train/loss`` so TensorBoard groups train / val."""
    prefix, sep, rest = column.partition('_')
    return f'{prefix}/{rest}' if sep and prefix in ('train', 'val') else column


def _tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter on ``run_dir/tensorboard`` (one new event file per process, so a resumed run adds one), or
    None without tensorboard."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / 'tensorboard'))


class _progress:
    """A rich progress bar for one epoch when the console is a terminal; otherwise nothing."""

    def __init__(self, console: Console, enabled: bool, description: str, total: int,
                 metric_label: str = 'top-1') -> None:
        self.enabled = enabled and console.is_terminal
        self.console, self.description, self.total = console, description, total
        self.metric_label = metric_label
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None, None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(),
                            TextColumn('loss {task.fields[loss]:.3f} {task.fields[metric]} {task.fields[acc]:.1f}% '
                                       'lr {task.fields[lr]:.1e} {task.fields[ips]:.0f} img/s'),
                            TimeRemainingColumn(), console=self.console, transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.description, total=self.total, loss=float('nan'), acc=0.0, lr=0.0, ips=0.0,
                                 metric=self.metric_label)
        return self.bar, task

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
