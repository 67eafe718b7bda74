"""Paired statistics for controlled experiments: the difference of two configurations paired by seed, its 95%
confidence interval, and a verdict.

Two configurations trained with the same seed share the data order, augmentation draws and the validation set, so
their per-seed difference cancels what the seeds share; its spread measures what differs. The interval is Student's
t on the paired differences, ``mean +- t(0.975, n - 1) * sd / sqrt(n)``. A bootstrap of three or five values can
only return intervals inside their range and covers the mean far less than 95% of the time, while the t interval
is exact for normal differences and wide when n is small, as it should be (t = 4.30 at n = 3).

Verdict rule, with the difference taken in the claimed direction (positive = the claim's side is better):

* ``held``: the 95% interval lies above 0;
* ``not held``: the interval lies below 0 (the opposite of the claim, significantly);
* ``inconclusive``: the interval contains 0, or there are fewer than two seeds (no interval).

A conclusion tested by several pairs is ``held`` only if every pair held, ``not held`` if any pair was ``not held``,
else ``inconclusive``.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ['HELD', 'NOT_HELD', 'INCONCLUSIVE', 'LEVEL', 'paired_difference', 'verdict', 'combine_verdicts']

HELD, NOT_HELD, INCONCLUSIVE = 'held', 'not held', 'inconclusive'
LEVEL = 0.95


def _t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(better: Sequence[float], other: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Per-seed differences ``better[i] - other[i]``, their mean, sd and the t confidence interval.

    Args:
        better: The metric of the configuration the claim says is better, one value per seed (higher = better).
        other: The metric of the other configuration, same seeds in the same order.
        level: Two-sided confidence level.

    Returns:
        ``n``, ``diffs``, ``mean``, ``sd`` (None for n < 2), ``ci`` ([low, high] or None for n < 2), ``level``,
        ``method`` and the ``verdict``.

    Raises:
        ValueError: The two samples differ in length or are empty (a programming error, not a user's).
    """
    if len(better) != len(other) or not better:
        raise ValueError(f'paired samples need equal, non-zero lengths, got {len(better)} and {len(other)}')
    diffs = [float(a) - float(b) for a, b in zip(better, other)]
    n, mean = len(diffs), statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else None
    ci = None
    if sd is not None:
        half = _t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        ci = [mean - half, mean + half]
    return dict(n=n, diffs=diffs, mean=mean, sd=sd, ci=ci, level=level, method=f'paired t, df={n - 1}',
                verdict=verdict(ci))


def verdict(ci: Sequence[float] | None) -> str:
    """``held`` / ``not held`` / ``inconclusive`` from an interval of the difference in the claimed direction."""
    if ci is None:
        return INCONCLUSIVE
    low, high = ci
    if low > 0:
        return HELD
    if high < 0:
        return NOT_HELD
    return INCONCLUSIVE


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict for a conclusion tested by several pairs: held only if all held; not held if any was not held."""
    if verdicts and all(v == HELD for v in verdicts):
        return HELD
    if any(v == NOT_HELD for v in verdicts):
        return NOT_HELD
    return INCONCLUSIVE
