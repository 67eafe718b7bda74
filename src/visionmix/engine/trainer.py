"""The one training loop: resume, DDP, EMA, logging, checkpoints. Tasks (:mod:`.tasks`) bring what differs.

Run directory:

* ``config.yaml``: the recipe, the data and the environment; ``metrics.csv`` one row per epoch; ``curves.png``;
  ``summary.json`` once the run is finished.
* ``last.safetensors`` / ``best.safetensors``: the evaluated weights (EMA when the recipe keeps one) with metadata
  (model name and kwargs, classes, input size, mean / std), written atomically; ``visionmix eval`` / ``predict``
  read them.
* ``checkpoints/``: everything ``--resume`` needs. ``model_eN.safetensors`` (+ ``ema_eN.safetensors``) hold the
  weights after epoch N, ``state.pt`` (``torch.load(weights_only=True)``) the optimizer, scheduler, RNG states,
  history and the name of the weight files. ``state.pt`` is replaced atomically *after* its weight files are on
  disk, so it is the commit point: a kill at any moment leaves a consistent checkpoint of the last finished epoch.
* ``tensorboard/`` (when tensorboard is installed): the ``metrics.csv`` columns per epoch.

Exact resume: every epoch starts by seeding Python, NumPy and torch from ``(seed, epoch)`` and shuffles with a
generator seeded the same way, so epoch N does the same work whether or not the process was restarted before it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import time
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
from ..data import build_datasets
from ..reporting import pyplot, round_floats
from ..sizes import hw, size_str
from .building import TrainError, build_for_input, build_model, data_config, resolve_weights
from .config import TrainConfig, environment_info, recipe_for
from .tasks import Task, resolve_task

__all__ = ['Trainer', 'RunResult', 'TrainError', 'EpochTotals', 'device_for_rank', 'setup_distributed',
           'teardown_distributed', 'CHECKPOINT_DIR', 'STATE_FILE', 'CONFIG_FILE', 'LOG_FILE', 'SUMMARY_FILE',
           'weights_metadata', 'tensorboard_tag']

CHECKPOINT_DIR = 'checkpoints'
STATE_FILE = 'state.pt'
CONFIG_FILE = 'config.yaml'
LOG_FILE = 'metrics.csv'
SUMMARY_FILE = 'summary.json'


@dataclass
class RunResult:
    """What a finished (or stopped) run produced.

    ``score`` / ``best_score`` are the last and best value of the task's main validation metric ``metric``:
    ``'top1'`` (%) for classification, ``'dice'`` (%) for segmentation, ... ``top1`` / ``best_top1`` (and ``dice``
    / ``best_dice``) name them for the task that has them.
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
    metric_label: str = 'top-1'

    def _named(self, metric: str, value: float) -> float:
        if metric != self.metric:
            raise AttributeError(f'a {self.metric} run has no {metric}; use .score ({self.metric})')
        return value

    top1 = property(lambda self: self._named('top1', self.score))
    best_top1 = property(lambda self: self._named('top1', self.best_score))
    dice = property(lambda self: self._named('dice', self.score))
    best_dice = property(lambda self: self._named('dice', self.best_score))
    miou = property(lambda self: self._named('miou', self.score))

    def to_dict(self) -> dict[str, Any]:
        return {'run_dir': str(self.run_dir), 'epochs_done': self.epochs_done, 'metric': self.metric,
                self.metric: self.score, f'best_{self.metric}': self.best_score, 'best_epoch': self.best_epoch,
                'train_seconds': self.train_seconds, 'finished': self.finished, 'history': self.history}


@dataclass
class EpochTotals:
    """Running sums over one epoch's training steps (summed across ranks before they are read)."""

    loss_sum: float = 0.0  # loss x samples
    metric_num: float = 0.0
    metric_den: float = 0.0
    samples: int = 0
    seconds: float = 0.0  # wall clock of the training steps (the slowest rank's, after all_reduce)

    def add(self, loss: float, metric_num: float, metric_den: float, samples: int) -> None:
        self.loss_sum += loss * samples
        self.metric_num += metric_num
        self.metric_den += metric_den
        self.samples += samples

    def all_reduce(self) -> None:
        sums = torch.tensor([self.loss_sum, self.metric_num, self.metric_den, self.samples], dtype=torch.float64)
        dist.all_reduce(sums)
        self.loss_sum, self.metric_num, self.metric_den, self.samples = sums.tolist()
        seconds = torch.tensor([self.seconds], dtype=torch.float64)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        self.seconds = seconds.item()

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    @property
    def metric(self) -> float:
        return 100 * self.metric_num / max(self.metric_den, 1)


# ------------------------------------------------------------------------------------------ RNG and processes

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


def device_for_rank(local_rank: int | None = None, cuda: bool | None = None) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when CUDA is available (torchrun sets ``LOCAL_RANK``, one GPU
    per process), else the CPU."""
    if local_rank is None:
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return torch.device('cuda', local_rank) if cuda else torch.device('cpu')


def setup_distributed() -> tuple[int, int, torch.device, bool]:
    """Pick this process's device, then join the process group torchrun describes (nccl on GPUs, gloo on CPU).

    Returns (rank, world size, device, whether this call started the group); (0, 1, device, False) when not launched
    by torchrun. The CUDA device is made current *before* the process group starts, so NCCL binds each rank to its
    own GPU.
    """
    device = device_for_rank()
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    started = False
    if int(os.environ.get('WORLD_SIZE', '1')) > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
        started = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device, started
    return 0, 1, device, started


def teardown_distributed() -> None:
    """Wait for every rank, then close the process group. A rank that exits with its gloo group still open can abort
    (``terminate called without an active exception``) while rank 0 is still writing the run's last files."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def weights_metadata(cfg: TrainConfig, classes: list[str], dcfg: dict[str, Any], epoch: int, score: float,
                     ema: bool, task: type[Task] | Task, model_kwargs: dict[str, Any] | None = None) -> dict[str, str]:
    """Everything eval / predict need to rebuild the model, as safetensors string metadata (``model_kwargs``: the
    builder's arguments, default the recipe's)."""
    kwargs = dict(cfg.model_kwargs if model_kwargs is None else model_kwargs)
    return dict(format='visionmix-train', model=cfg.model, model_kwargs=json.dumps(kwargs),
                num_classes=str(len(classes)), classes=json.dumps(classes), img_size=size_str(cfg.img_size),
                mean=json.dumps(list(dcfg['mean'])), std=json.dumps(list(dcfg['std'])),
                interpolation=dcfg['interpolation'], epoch=str(epoch), dataset=cfg.dataset,
                weights='ema' if ema else 'model', task=task.name, **{task.metric: f'{score:.4f}'})


# ------------------------------------------------------------------------------------------------- the trainer

class Trainer:
    """Trains ``cfg.model`` on ``cfg.dataset`` into the run directory ``cfg.output``; :meth:`run` does it.

    Each step of a run has a name: :meth:`setup_runtime`, :meth:`build_data`, :meth:`build_model`,
    :meth:`build_optimization`, :meth:`start_or_resume`, then per epoch :meth:`train_epoch`, :meth:`validate`,
    :meth:`record` and :meth:`save`, and :meth:`finish`. What differs between tasks is in ``self.task``.

    Args:
        cfg: The recipe.
        resume: Continue the run in ``cfg.output`` from its last checkpoint.
        console: Where progress lines go.
        progress: Show a per-epoch progress bar when the console is a terminal.
        label: Name shown in progress lines (default: the model name).
        stop_after: Stop after this epoch (the schedule still spans ``cfg.epochs``), e.g. to test resuming.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, console: Console | None = None,
                 progress: bool = True, label: str | None = None, stop_after: int | None = None) -> None:
        self.cfg, self.resume, self.progress = cfg, resume, progress
        self.console = console or Console()
        self.label = label or cfg.model
        self.stop_after = stop_after
        self.run_dir = Path(cfg.output)
        self.ckpt_dir = self.run_dir / CHECKPOINT_DIR
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.best_score, self.best_epoch, self.train_seconds = 0, -1.0, -1, 0.0

    def run(self) -> RunResult:
        """Train to ``cfg.epochs`` (or ``stop_after``) and return what the run produced."""
        self.setup_runtime()
        self.build_data()
        self.build_model()
        self.build_optimization()
        self.start_or_resume()
        last_epoch = self.cfg.epochs if self.stop_after is None else min(self.cfg.epochs, self.stop_after)
        writer = _tensorboard(self.run_dir) if self.is_main else None
        try:  # a run that raises still closes its event file and writer thread
            for epoch in range(self.start_epoch, last_epoch):
                totals = self.train_epoch(epoch)
                metrics = self.validate() if self.validates(epoch) else self.unvalidated()
                row = self.record(epoch, totals, metrics, writer)
                self.save(epoch, metrics[self.task.metric], row)
        finally:
            if writer is not None:
                writer.close()
        result = self.finish()
        if self.owns_process_group:
            teardown_distributed()
        return result

    # ----------------------------------------------------------------------------------------------- steps
    def setup_runtime(self) -> None:
        self.rank, self.world, self.device, self.owns_process_group = setup_distributed()
        self.is_main = self.rank == 0
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)

    def build_data(self) -> None:
        cfg = self.cfg
        # embedded datasets are drawn square at the longer side; the transforms then resize to (H, W)
        self.train_ds, self.val_ds, self.info = build_datasets(cfg.dataset, img_size=max(hw(cfg.img_size)),
                                                               skip_corrupt=cfg.skip_corrupt, limit=cfg.limit_train)
        self.task = resolve_task(cfg.model, cfg.dataset)(cfg, self.info)
        self.notes = self.task.check_config(cfg)
        self.per_rank_batch = max(1, cfg.batch_size // self.world)
        self.drop_last = self.task.drop_last(len(self.train_ds) // self.world, self.per_rank_batch)
        per_rank = len(self.train_ds) // self.world if self.drop_last else math.ceil(len(self.train_ds) / self.world)
        self.updates_per_epoch = per_rank // self.per_rank_batch if self.drop_last \
            else math.ceil(per_rank / self.per_rank_batch)
        if self.updates_per_epoch == 0:
            raise TrainError(f'{len(self.train_ds)} training images are fewer than one batch of {self.per_rank_batch}')

    def build_model(self) -> None:
        cfg, task = self.cfg, self.task
        seed_epoch(cfg.seed, -1)  # model init depends on the seed only
        # everything the builder gets goes into the weights' metadata, so eval / predict rebuild the same model
        self.build_kwargs = {**task.model_kwargs(), **cfg.model_kwargs}
        start = dict(self.build_kwargs)  # fine-tuning: weights to start from (the head adapted to the classes)
        if cfg.init_checkpoint:
            start['checkpoint_path'] = str(resolve_weights(cfg.init_checkpoint))
        if cfg.pretrained:
            start['pretrained'] = True
        self.model = build_for_input(cfg.model, cfg.img_size,
                                     lambda side: build_model(cfg.model, None, side, start, cfg.drop_path),
                                     task.output_error)
        self.dcfg = data_config(self.model, cfg.img_size, cfg.interpolation)
        self.model.pretrained_cfg = dict(getattr(self.model, 'pretrained_cfg', None) or {}, **{
            'input_size': self.dcfg['input_size'], 'mean': self.dcfg['mean'], 'std': self.dcfg['std'],
            'crop_pct': 1.0, 'interpolation': self.dcfg['interpolation'], 'num_classes': self.info.num_classes})
        self.train_ds.transform, self.val_ds.transform = task.transforms(self.dcfg)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def build_optimization(self) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        cfg = self.cfg
        # torch's fused Adam(W) kernel: one pass over each parameter instead of a dozen foreach ops (3x faster on a
        # CPU, ~13 ms of a ~300 ms Mask R-CNN step); the folded-BN memo counts optimizer steps, as fused ones leave
        # parameter versions alone
        fused = dict(fused=True) if cfg.opt.lower() in ('adam', 'adamw') and self.device.type == 'cpu' else {}
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             filter_bias_and_bn=True, **fused)
        self.scheduler = None
        if cfg.sched != 'none':
            self.scheduler, _ = create_scheduler_v2(
                self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
                updates_per_epoch=self.updates_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=cfg.model_ema_decay, use_warmup=True) if cfg.model_ema else None
        self.train_module: nn.Module = self.model
        if self.world > 1:
            # gradient_as_bucket_view: gradients are views of DDP's buckets, so their strides always match (no
            # "grad strides do not match bucket view strides" warning for channels-last or permuted weights)
            self.train_module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                gradient_as_bucket_view=True)
        if cfg.compile:  # True: torch's default backend (inductor); a string names another, e.g. 'aot_eager'
            # static shapes: a run's batches share one size (a short tail recompiles once); a symbolic image size
            # trips inductor on some models (torch 2.14, SPACH stems: sympy 'cannot determine truth value')
            self.train_module = torch.compile(self.train_module, dynamic=False,
                                              **({} if cfg.compile is True else {'backend': cfg.compile}))
        val_sampler = DistributedSampler(self.val_ds, shuffle=False) if self.world > 1 else \
            SequentialSampler(self.val_ds)
        self.val_loader = DataLoader(self.val_ds, batch_size=max(self.per_rank_batch, 64), sampler=val_sampler,
                                     num_workers=cfg.workers, collate_fn=self.task.collate_fn)

    def start_or_resume(self) -> None:
        if self.resume:
            self._restore()
        elif self.is_main:
            self._write_config()

    def train_epoch(self, epoch: int) -> EpochTotals:
        """One pass over the training data; returns the epoch's running totals (summed across ranks)."""
        cfg, task = self.cfg, self.task
        from timm.utils import dispatch_clip_grad

        loader = self._train_loader(epoch)
        self.epoch_start = time.perf_counter()
        self.model.train()
        totals = EpochTotals()
        with _progress(self.console, self.progress and self.is_main, f'{self.label} epoch {epoch + 1}/{cfg.epochs}',
                       self.updates_per_epoch, task.metric_label) as bar:
            for step, batch in enumerate(loader):
                inputs, targets = task.to_device(batch, self.device, cfg.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    out = task.train_step(self.train_module, inputs, targets)
                loss = out.loss.item()
                if not math.isfinite(loss):
                    raise TrainError(f'{self.label}: loss is {loss} at epoch {epoch + 1} step {step}; lower lr')
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if cfg.clip_grad:
                    dispatch_clip_grad(self.model.parameters(), value=cfg.clip_grad, mode=cfg.clip_mode)
                self.optimizer.step()
                num_updates = epoch * self.updates_per_epoch + step + 1
                if self.scheduler is not None:
                    self.scheduler.step_update(num_updates=num_updates)
                if self.ema is not None:
                    self.ema.update(self.model, step=num_updates)
                totals.add(loss, out.metric_num, out.metric_den, task.batch_size_of(inputs))
                bar.update(loss, totals.metric, self.optimizer.param_groups[0]['lr'],
                           totals.samples * self.world / max(time.perf_counter() - self.epoch_start, 1e-9))
        totals.seconds = time.perf_counter() - self.epoch_start
        if self.scheduler is not None:
            self.scheduler.step(epoch + 1)
        if self.world > 1:
            totals.all_reduce()
        return totals

    def validate(self) -> dict[str, Any]:
        """The task's validation metrics of the evaluated model (the EMA when there is one), and of the raw model."""
        self.recompute_bn_statistics()
        metrics = self.task.evaluate(self.eval_model, self.val_loader, device=self.device,
                                     channels_last=self.cfg.channels_last)
        if self.ema is not None:
            raw = self.task.evaluate(self.model, self.val_loader, device=self.device,
                                     channels_last=self.cfg.channels_last)
            metrics[f'{self.task.metric}_raw'] = raw[self.task.metric]
        return metrics

    def validates(self, epoch: int) -> bool:
        """``eval_every``: whether the (0-based) epoch is validated; the last epoch always is."""
        return (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs

    def unvalidated(self) -> dict[str, Any]:
        """The metrics row of an epoch that ``eval_every`` skips: NaN, so it is never the best."""
        return dict.fromkeys(('loss', *self.task.val_metrics), float('nan'))

    def recompute_bn_statistics(self) -> None:
        """``precise_bn``: BatchNorm running statistics recomputed exactly (torch's ``update_bn``, a cumulative
        average) over the same first training images on every rank, so eval sees the weights it evaluates."""
        count = min(self.cfg.precise_bn, len(self.train_ds))
        if not count or not self.task.tensor_inputs:
            return
        subset = torch.utils.data.Subset(self.train_ds, range(count))
        loader = DataLoader(subset, batch_size=self.per_rank_batch, num_workers=self.cfg.workers,
                            collate_fn=self.task.collate_fn)
        with torch.random.fork_rng(devices=[]):  # the augmentations draw numbers: leave the run's streams alone
            torch.optim.swa_utils.update_bn(loader, self.eval_model, device=self.device)

    def record(self, epoch: int, totals: EpochTotals, metrics: dict[str, Any], writer: Any) -> dict[str, Any]:
        """Add the epoch's row to the history, print it and log it."""
        task, epoch_time = self.task, time.perf_counter() - self.epoch_start
        self.train_seconds += epoch_time
        # img/s is the training steps' throughput; epoch_seconds includes validation
        row = dict(epoch=epoch + 1, lr=self.optimizer.param_groups[0]['lr'], train_loss=totals.loss,
                   **{f'train_{task.metric}': totals.metric}, val_loss=metrics['loss'],
                   **{f'val_{k}': metrics[k] for k in task.val_metrics},
                   img_s=totals.samples / max(totals.seconds, 1e-9), epoch_seconds=epoch_time)
        if f'{task.metric}_raw' in metrics:
            row[f'val_{task.metric}_raw'] = metrics[f'{task.metric}_raw']
        self.history.append(row)
        if self.is_main:
            score = row[f'val_{task.metric}']
            val = f'{score:.2f}%' if math.isfinite(score) else f'- (eval_every {self.cfg.eval_every})'
            self.console.print(
                f'{self.label} epoch {epoch + 1}/{self.cfg.epochs}  loss {row["train_loss"]:.3f}  train '
                f'{row[f"train_{task.metric}"]:.1f}%  val {task.metric_label} {val}  '
                f'lr {row["lr"]:.2e}  {row["img_s"]:.0f} img/s  {epoch_time:.1f}s', highlight=False)
            if writer is not None:
                for key, value in row.items():
                    if key != 'epoch' and math.isfinite(value):  # NaN: an epoch eval_every does not validate
                        writer.add_scalar(tensorboard_tag(key), value, epoch + 1)
                writer.flush()
        return row

    def save(self, epoch: int, score: float, row: dict[str, Any]) -> None:
        """Weights for eval / predict, then the resume state (the commit point), then the metrics file."""
        is_best = score > self.best_score
        if is_best:
            self.best_score, self.best_epoch = score, epoch + 1
        if self.is_main:
            meta = weights_metadata(self.cfg, self.info.classes, self.dcfg, epoch + 1, score, self.ema is not None,
                                    self.task, self.build_kwargs)
            save_checkpoint(self.eval_model, self.run_dir / 'last.safetensors', meta)
            if is_best and self.cfg.save_best:
                save_checkpoint(self.eval_model, self.run_dir / 'best.safetensors', meta)
            self._save_state(epoch + 1, meta)
            write_history(self.history, self.run_dir / LOG_FILE)
        if self.world > 1:
            dist.barrier()

    def finish(self) -> RunResult:
        finished = len(self.history) >= self.cfg.epochs
        metric = self.task.metric
        score = self.history[-1][f'val_{metric}'] if self.history else float('nan')
        result = RunResult(self.run_dir, len(self.history), self.history, score, self.best_score, self.best_epoch,
                           self.train_seconds, finished, metric, self.task.metric_label)
        if self.is_main and self.history:
            plot_curves(self.history, self.run_dir / 'curves.png', metric, self.task.metric_label,
                        title=f'{self.label} on {self.cfg.dataset} at {size_str(self.cfg.img_size)}, '
                              f'{len(self.history)}/{self.cfg.epochs} epochs')
            if finished:
                summary = json.dumps(result.to_dict(), indent=2)  # full precision: compare reads it back
                atomic_write(self.run_dir / SUMMARY_FILE, lambda tmp: Path(tmp).write_text(summary))
        return result

    # --------------------------------------------------------------------------------------------- helpers
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _train_loader(self, epoch: int) -> DataLoader:
        epoch_seed = seed_epoch(self.cfg.seed, epoch, self.rank)
        if self.world > 1:
            sampler = DistributedSampler(self.train_ds, shuffle=True, seed=self.cfg.seed, drop_last=self.drop_last)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_ds, generator=torch.Generator().manual_seed(epoch_seed))
        return DataLoader(self.train_ds, batch_size=self.per_rank_batch, sampler=sampler,
                          num_workers=self.cfg.workers, drop_last=self.drop_last, collate_fn=self.task.collate_fn,
                          generator=torch.Generator().manual_seed(epoch_seed))

    def _write_config(self) -> None:
        info, dcfg = self.info, self.dcfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        name, why, _ = recipe_for(self.cfg.dataset, self.cfg.recipe)
        record = dict(config=self.cfg.to_dict(), recipe=dict(name=name, why=why),
                      data=dict(spec=info.spec, classes=info.classes, num_train=info.num_train, num_val=info.num_val,
                                skipped=len(info.skipped), description=info.description, task=info.task),
                      data_config=dict(dcfg, input_size=list(dcfg['input_size']), mean=list(dcfg['mean']),
                                       std=list(dcfg['std'])),
                      world_size=self.world, environment=environment_info())
        text = yaml.safe_dump(json.loads(json.dumps(record)), sort_keys=False)
        atomic_write(self.run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
        if info.skipped:
            self.console.print(f'{self.label}: skipped {len(info.skipped)} unreadable image(s), e.g. '
                               f'{info.skipped[0]}', style='yellow', highlight=False)
        for note in self.notes:
            self.console.print(f'{self.label}: note: {note}', style='yellow', highlight=False)

    def _restore(self) -> None:
        from safetensors.torch import load_file

        state = torch.load(self.ckpt_dir / STATE_FILE, map_location='cpu', weights_only=True)
        self.model.load_state_dict(load_file(str(self.ckpt_dir / state['weights'])))
        if self.ema is not None:
            self.ema.module.load_state_dict(load_file(str(self.ckpt_dir / state['ema_weights'])))
        self.optimizer.load_state_dict(state['optimizer'])
        if self.scheduler is not None and state['scheduler'] is not None:
            self.scheduler.load_state_dict(state['scheduler'])
        set_rng_state(state['rng'])
        self.start_epoch, self.history = state['epoch'], list(state['history'])
        self.best_score = state['best_score'] if 'best_score' in state else state['best_top1']  # older runs: top-1
        self.best_epoch, self.train_seconds = state['best_epoch'], state['train_seconds']
        if self.is_main:
            self.console.print(f'{self.label}: resuming {self.run_dir} after epoch {self.start_epoch}/'
                               f'{self.cfg.epochs}', highlight=False)

    def _save_state(self, epoch: int, meta: dict[str, str]) -> None:
        weights = f'model_e{epoch}.safetensors'
        # the snapshots carry the training metadata too, so `visionmix eval` accepts any weights file a run wrote
        save_checkpoint(self.model, self.ckpt_dir / weights, dict(meta, weights='model'))
        ema_weights = None
        if self.ema is not None:
            ema_weights = f'ema_e{epoch}.safetensors'
            save_checkpoint(self.ema.module, self.ckpt_dir / ema_weights, meta)
        state = dict(epoch=epoch, weights=weights, ema_weights=ema_weights, optimizer=self.optimizer.state_dict(),
                     scheduler=self.scheduler.state_dict() if self.scheduler is not None else None, rng=rng_state(),
                     history=self.history, best_score=self.best_score, best_epoch=self.best_epoch,
                     train_seconds=self.train_seconds)
        atomic_write(self.ckpt_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))  # the commit point
        keep = {weights, ema_weights}
        for old in self.ckpt_dir.glob('*_e*.safetensors'):
            if old.name not in keep:
                old.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ run outputs

def write_history(history: list[dict[str, Any]], path: Path) -> None:
    """``metrics.csv``, rounded for people (the resume state keeps full precision)."""
    if not history:
        return

    def write(tmp: str) -> None:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(round_floats(history))

    atomic_write(path, write)


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str = 'top1', metric_label: str = 'top-1',
                title: str = '') -> Path:
    """Loss and the main metric per epoch, train and val, on integer epoch ticks."""
    plt = pyplot()
    epochs = [h['epoch'] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, ylabel in ((ax1, 'loss', 'loss'), (ax2, metric, f'{metric_label} (%)')):
        ax.plot(epochs, [h[f'train_{key}'] for h in history], marker='o', label='train')
        validated = [h for h in history if math.isfinite(h[f'val_{key}'])]  # eval_every skips epochs
        ax.plot([h['epoch'] for h in validated], [h[f'val_{key}'] for h in validated], marker='o', label='val')
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    """A rich progress bar for one epoch when the console is a terminal; ``update`` does nothing otherwise."""

    def __init__(self, console: Console, enabled: bool, description: str, total: int,
                 metric_label: str = 'top-1') -> None:
        self.enabled = enabled and console.is_terminal
        self.console, self.description, self.total = console, description, total
        self.metric_label = metric_label
        self.bar: Any = None

    def __enter__(self) -> '_progress':
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(),
                                TextColumn('loss {task.fields[loss]:.3f} {task.fields[metric]} {task.fields[acc]:.1f}%'
                                           ' lr {task.fields[lr]:.1e} {task.fields[ips]:.0f} img/s'),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.__enter__()
            self.task_id = self.bar.add_task(self.description, total=self.total, loss=float('nan'), acc=0.0, lr=0.0,
                                             ips=0.0, metric=self.metric_label)
        return self

    def update(self, loss: float, metric: float, lr: float, img_s: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task_id, advance=1, loss=loss, acc=metric, lr=lr, ips=img_s)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
