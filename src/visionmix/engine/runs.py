"""Train a grid of (model, seed) runs, one after another or a few at once: the machinery of ``compare`` and ``study``.

Each run lives in its own folder (``<label>/seed<k>``), so a finished run is read back instead of trained and an
interrupted one resumes from its last epoch. With ``jobs > 1`` the runs go to that many worker processes (one torch
thread each, which is also how the recipes train them), so two cores train two small models at once instead of
sharing one model's small matrix products; every run's epoch lines then go to ``console.log`` in its folder and the
console shows one line per finished run with the time left.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..errors import ConfigError
from .config import TrainConfig, load_config
from .train import CHECKPOINT_DIR, STATE_FILE, SUMMARY_FILE, train

__all__ = ['StudyEntry', 'Eta', 'duration', 'run_dir', 'safe_label', 'train_one', 'train_grid', 'check_jobs']


@dataclass
class StudyEntry:
    """One model of a study: a label for the report, a registered name, and builder kwargs."""

    label: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    spatial: str = ''


RUN_LOG = 'console.log'


def safe_label(label: str) -> str:
    """``label`` as a folder name."""
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in label)


def run_dir(out: Path, label: str, seed: int) -> Path:
    """Where the run of the model ``label`` with ``seed`` lives inside the comparison folder ``out``."""
    return Path(out) / safe_label(label) / f'seed{seed}'


def duration(seconds: float) -> str:
    """``'42s'``, ``'3m05s'`` or ``'1h02m'``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


class Eta:
    """Runs left and when they will be done, from the wall-clock rate of the runs trained in this invocation.

    Runs reused from an earlier invocation count as done but not in the rate (they took no time now). The rate is
    runs per wall-clock second, so it holds whether the runs go one after another or several at once.
    """

    def __init__(self, total: int) -> None:
        self.total, self.done, self.trained = total, 0, 0
        self.start = time.perf_counter()
        self.first_trained: float | None = None

    def add(self, trained: bool = True) -> None:
        """Count one finished run (``trained=False`` for a run reused from disk)."""
        self.done += 1
        if trained:
            self.trained += 1

    def mark_start(self) -> None:
        """Reset the clock when the first run that trains now starts (time spent on reused runs is not a rate)."""
        if self.first_trained is None:
            self.first_trained = time.perf_counter()

    @property
    def left(self) -> int:
        return self.total - self.done

    def seconds_left(self) -> float | None:
        """Estimated wall seconds to finish, or None before any run has trained in this invocation."""
        if not self.trained:
            return None
        elapsed = time.perf_counter() - (self.first_trained if self.first_trained is not None else self.start)
        return elapsed / self.trained * self.left

    def text(self) -> str:
        """``'4 run(s) left, ETA 3m05s'`` (no ETA before the first trained run)."""
        if not self.left:
            return 'all runs done'
        left = self.seconds_left()
        return f'{self.left} run(s) left' + ('' if left is None else f', ETA {duration(left)}')


def train_one(entry: StudyEntry, recipe: TrainConfig, seed: int, run_dir: Path, tag: str,
               console: Console) -> dict[str, Any]:
    """One unfinished model and seed: resume an interrupted run, else train it (finished runs are read back by
    :func:`train_grid` and never reach here)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg = load_config(overrides=dict(recipe.to_dict(), model=entry.model, model_kwargs=entry.kwargs, seed=seed,
                                     output=str(run_dir)))
    resume = run_dir if (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file() else None
    return train(cfg, resume=resume, console=console, label=tag).to_dict()


def _run_quietly(entry: StudyEntry, recipe: TrainConfig, seed: int, path: str, tag: str) -> dict[str, Any]:
    """One run in a worker process; its epoch lines go to ``console.log`` in the run folder."""
    Path(path).mkdir(parents=True, exist_ok=True)
    with open(Path(path) / RUN_LOG, 'a') as log:
        console = Console(file=log, width=160, force_terminal=False)
        return train_one(entry, recipe, seed, Path(path), tag, console)


def _line(tag: str, summary: dict[str, Any], reused: bool, seconds: float, eta: Eta) -> str:
    metric = summary['metric']
    how = 'done before' if reused else f'trained in {duration(seconds)}'
    return f'{tag}: val {metric} {summary[metric]:.2f}% ({how}); {eta.text()}'


def check_jobs(jobs: int | None) -> int:
    """``jobs`` checked, or the default: one run per CPU core, at most 2 (more small runs at once only contend)."""
    if jobs is None:
        return max(1, min(2, os.cpu_count() or 1))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f'jobs must be a positive integer, got {jobs!r}')
    return jobs


def train_grid(entries: list[StudyEntry], seeds: list[int], recipe: TrainConfig, out: Path, console: Console,
               jobs: int = 1) -> tuple[dict[tuple[str, int], dict[str, Any]], int]:
    """Train (or reuse) every configuration with every seed; returns ``({(label, seed): summary}, runs trained)``.

    Args:
        entries: The configurations.
        seeds: The seeds, the same for every configuration (the pairing of the statistics).
        recipe: The one recipe they all get.
        out: The study folder.
        console: Where progress goes.
        jobs: Runs trained at once (1: in this process, epoch lines on the console).
    """
    grid = [(e, s) for e in entries for s in seeds]
    eta, results = Eta(len(grid)), {}
    tags = {(e.label, s): f'[{i + 1}/{len(grid)}] {escape(e.label)} seed {s}'  # YAML brackets are not markup
            for i, (e, s) in enumerate(grid)}
    todo = []
    for e, s in grid:  # finished runs first: they take no time and fix the count of what is left
        path = run_dir(out, e.label, s)
        if (path / SUMMARY_FILE).is_file():
            results[e.label, s] = json.loads((path / SUMMARY_FILE).read_text())
            eta.add(trained=False)
            console.print(_line(tags[e.label, s], results[e.label, s], True, 0.0, eta), highlight=False)
        else:
            todo.append((e, s))
    if todo:
        eta.mark_start()
    if jobs <= 1 or len(todo) <= 1:
        for e, s in todo:
            start = time.perf_counter()
            results[e.label, s] = train_one(e, recipe, s, run_dir(out, e.label, s), tags[e.label, s], console)
            eta.add()
            console.print(_line(tags[e.label, s], results[e.label, s], False, time.perf_counter() - start, eta),
                          highlight=False)
    else:
        _train_parallel(todo, recipe, out, console, jobs, tags, eta, results)
    return results, len(todo)


def _train_parallel(todo: list[tuple[StudyEntry, int]], recipe: TrainConfig, out: Path, console: Console, jobs: int,
                    tags: dict[tuple[str, int], str], eta: Eta, results: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Keep ``jobs`` worker processes busy until every run of ``todo`` is done (spawned: torch dislikes fork)."""
    console.print(f'training {len(todo)} run(s), {jobs} at a time (epoch lines in each run\'s {RUN_LOG})',
                  highlight=False)
    pending: dict[Future, tuple[str, int, float]] = {}
    queue = list(todo)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context('spawn')) as pool:
        try:
            while queue or pending:
                while queue and len(pending) < jobs:
                    e, s = queue.pop(0)
                    future = pool.submit(_run_quietly, e, recipe, s, str(run_dir(out, e.label, s)), tags[e.label, s])
                    pending[future] = (e.label, s, time.perf_counter())
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    label, seed, start = pending.pop(future)
                    results[label, seed] = future.result()
                    eta.add()
                    console.print(_line(tags[label, seed], results[label, seed], False,
                                        time.perf_counter() - start, eta), highlight=False)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a Ctrl-C reaches the workers too; their epochs are saved
            raise
