"""Train a grid of (configuration, seed) runs with compare's machinery, one after another or a few at once.

Each run is :func:`visionmix.engine.compare.train_one` in its own folder of the study (``<label>/seed<k>``), so a
finished run is read back instead of trained and an interrupted one resumes from its last epoch. With ``jobs > 1``
the runs go to that many worker processes (one torch thread each, which is also how the recipe trains them), so two
cores train two small models at once instead of sharing one model's small matrix products; every run's epoch lines
then go to ``console.log`` in its folder and the console shows one line per finished run with the time left.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console

from ..engine.compare import Eta, StudyEntry, duration, run_dir, train_one
from ..engine.config import TrainConfig
from ..engine.train import SUMMARY_FILE

__all__ = ['train_grid']

RUN_LOG = 'console.log'


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
    tags = {(e.label, s): f'[{i + 1}/{len(grid)}] {e.label} seed {s}' for i, (e, s) in enumerate(grid)}
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
