"""``visionmix train``: configure one run from a recipe (or a run directory to resume) and hand it to the
:class:`~visionmix.engine.trainer.Trainer`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from .building import TrainError, build_for_input, build_model, data_config, input_error, smallest_input_size
from .config import TrainConfig, load_config
from .trainer import CHECKPOINT_DIR, CONFIG_FILE, LOG_FILE, STATE_FILE, SUMMARY_FILE, RunResult, Trainer

__all__ = ['train', 'TrainError', 'RunResult', 'build_model', 'build_for_input', 'data_config', 'input_error',
           'smallest_input_size', 'CHECKPOINT_DIR', 'STATE_FILE', 'CONFIG_FILE', 'LOG_FILE', 'SUMMARY_FILE',
           'saved_config', 'last_finished_epoch']


def saved_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The recipe a run directory was started with (its ``config.yaml``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise TrainError(f'cannot resume {run_dir}: no {CONFIG_FILE} there (is it a visionmix run directory?)')
    return yaml.safe_load(path.read_text())['config']


def last_finished_epoch(run_dir: str | os.PathLike) -> int:
    """The last epoch whose checkpoint is on disk (0 when none is), read from the resume state."""
    path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        return 0
    import torch

    return int(torch.load(path, map_location='cpu', weights_only=True)['epoch'])


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
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file():
            raise TrainError(f'cannot resume {run_dir}: no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}) there yet')
        cfg = load_config(overrides=dict(saved_config(run_dir), output=str(run_dir)))
    elif cfg is None:
        raise TrainError('train() needs a config or resume=')
    elif (Path(cfg.output) / CHECKPOINT_DIR / STATE_FILE).exists():
        raise TrainError(f'{cfg.output} already holds a run; pass --resume {cfg.output} to continue it or choose '
                         f'another --output')
    return Trainer(cfg, resume=resume is not None, console=console, progress=progress, label=label,
                   stop_after=stop_after).run()
