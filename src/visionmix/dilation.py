"""Hybrid Dilated Convolution (HDC): gridding checks, rate schedules and exact coverage maps.

Stacking dilated convolutions whose rates share a factor (``[2, 2, 2]``) or grow too fast (``[1, 2, 9]``) leaves
holes in the receptive field: input pixels no path reaches (the *gridding* effect). Wang et al. 2018,
"Understanding Convolution for Semantic Segmentation", propose HDC: rates without a common factor, arranged as a
rising sawtooth such as ``[1, 2, 5, 1, 2, 5]``, checked with the maximum distance ``M_i`` between two non-zero
weights.

Conventions used throughout: ``rates[0]`` is the *bottom* layer (applied first, to the input) and ``rates[-1]`` the
top one. Kernels are ``k x k`` all-ones with odd ``k`` (a dilated even kernel has no centre tap). A ``k x k``
all-ones kernel is the outer product of two ``k``-tap 1-D kernels, so every map here is the outer product of a
1-D map with itself: that is how the 2-D results are computed exactly and cheaply.

This module is a leaf: it imports only numpy, the standard library and :mod:`visionmix.errors`.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ['HDCCheck', 'hdc_check', 'hdc_rates', 'coverage', 'holes', 'receptive_field']

_MAX_FIELD = 1_000_001  # 1-D receptive field we agree to walk (bytes, not time, are the limit)
_MAX_SIDE = 2049  # side of a 2-D coverage map: 2049^2 int64 is 34 MB


@dataclass(frozen=True)
class HDCCheck:
    """Verdict of :func:`hdc_check` on one stack of dilated convolutions.

    Attributes:
        rates: Dilation rates, bottom layer first.
        kernel_size: Side ``k`` of every (square) kernel.
        m: ``M_1 ... M_n`` with ``m[0] = M_1`` (bottom layer) and ``m[-1] = M_n``: ``M_i`` is the largest distance
            between two neighbouring non-zero weights of the kernel that layers ``i..n`` compose to (the paper's
            definition, computed exactly). ``M_n = r_n`` for ``k >= 3``; a ``1 x 1`` kernel has a single weight and
            every ``M_i`` is 0. The stack is gridding-free exactly when ``M_1 <= 1``.
        m_paper: The same list from the paper's recursion ``M_i = max[M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i),
            r_i]``, ``M_n = r_n``. It equals ``m`` while ``M_{i+1} >= 2 r_i`` (a rising sawtooth such as
            ``[1, 2, 5]``) and is otherwise only an upper bound: it flags ``[1, 2, 5, 1, 2, 5]`` (``M_2 = 5``) although
            that stack has no holes. Kept for reference; the verdict does not use it.
        common_factor: Greatest common divisor of the rates; above 1, only every ``common_factor``-th pixel is reached.
        receptive_field: Side of the (square) receptive field, ``1 + sum((k - 1) * r)``.
        holes: Input pixels inside the receptive field that no path reaches.
        ok: True when the receptive field has no holes (gridding-free).
        reason: One sentence saying why the stack is, or is not, gridding-free.
    """

    rates: tuple[int, ...]
    kernel_size: int
    m: tuple[int, ...]
    m_paper: tuple[int, ...]
    common_factor: int
    receptive_field: int
    holes: int
    ok: bool
    reason: str


def _check_kernel(kernel_size: object) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ConfigError(f'kernel_size must be an odd int >= 1 (a dilated even kernel has no centre tap), '
                          f'got {kernel_size!r}')
    return int(kernel_size)


def _check_rates(rates: object, kernel_size: int) -> tuple[int, ...]:
    """Validated rates as a tuple of ints; the receptive field must stay small enough to walk."""
    if isinstance(rates, (str, bytes)) or not isinstance(rates, (Sequence, np.ndarray)) or len(rates) == 0:
        raise ConfigError(f'rates must be a non-empty list of positive ints such as [1, 2, 5], got {rates!r}')
    bad = [r for r in rates if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1]
    if bad:
        raise ConfigError(f'rates must be positive ints such as [1, 2, 5]; {bad[0]!r} is not')
    out = tuple(int(r) for r in rates)
    if _field(out, kernel_size) > _MAX_FIELD:
        raise ConfigError(f'rates {list(out)} give a receptive field wider than {_MAX_FIELD} px; use smaller rates')
    return out


def _field(rates: Sequence[int], kernel_size: int) -> int:
    """``1 + sum((k - 1) * r)`` without validation (internal; use :func:`receptive_field`)."""
    return 1 + sum((kernel_size - 1) * r for r in rates)


def receptive_field(rates: Sequence[int], kernel_size: int = 3) -> int:
    """Side of the square receptive field of stride-1 ``k x k`` convolutions with these dilation rates.

    Args:
        rates: Dilation rates, bottom layer first (the order does not matter here).
        kernel_size: Odd kernel side ``k``.

    Returns:
        ``1 + sum((k - 1) * r)``, e.g. 17 for ``[1, 2, 5]`` and ``k = 3``.
    """
    kernel_size = _check_kernel(kernel_size)
    return _field(_check_rates(rates, kernel_size), kernel_size)


def _taps(kernel_size: int, rate: int) -> range:
    """Offsets of the taps of a centred ``k``-tap kernel dilated by ``rate``."""
    half = (kernel_size - 1) // 2
    return range(-half * rate, half * rate + 1, rate)


def _spread(row: np.ndarray, offsets: range) -> np.ndarray:
    """Sum of ``row`` shifted by each offset (zero fill): one 1-D layer of an all-ones dilated kernel, transposed."""
    out = np.zeros_like(row)
    n = row.shape[0]
    for o in offsets:
        if o >= 0:
            out[o:] += row[:n - o]
        else:
            out[:o] += row[-o:]
    return out


def _max_gap(support: np.ndarray) -> int:
    """Largest distance between neighbouring non-zero entries of a 1-D map (0 for a single one)."""
    idx = np.flatnonzero(support)
    return int(np.diff(idx).max()) if idx.size > 1 else 0


def _paper_m(rates: tuple[int, ...]) -> tuple[int, ...]:
    m = [rates[-1]]
    for r in reversed(rates[:-1]):
        nxt = m[0]
        m.insert(0, max(nxt - 2 * r, nxt - 2 * (nxt - r), r))
    return tuple(m)


def hdc_check(rates: Sequence[int], kernel_size: int = 3) -> HDCCheck:
    """Is a stack of dilated ``k x k`` convolutions free of gridding holes, and why (not)?

    The verdict is exact: the composed 1-D support is walked from the top layer down, recording ``M_i`` (see
    :class:`HDCCheck`); the field is hole-free iff ``M_1 <= 1``. For a single layer, rate 1 is ok and any rate
    ``r > 1`` reads only every ``r``-th pixel (``[2]`` with ``k = 3`` has 16 holes in its 5 x 5 field).

    Args:
        rates: Dilation rates, bottom layer first, e.g. ``[1, 2, 5]``.
        kernel_size: Odd kernel side ``k`` (3 by default).

    Returns:
        An :class:`HDCCheck`; ``[1, 2, 5]`` is ok, ``[1, 2, 9]`` is not (``M_2 = 5 > 3``), ``[2, 4, 6]`` and
        ``[2, 2, 2]`` are not (common factor 2).

    Raises:
        ConfigError: Empty rates, a rate that is not a positive int, an even / non-positive kernel size, or a
            receptive field wider than 1,000,001 px.
    """
    kernel_size = _check_kernel(kernel_size)
    rates = _check_rates(rates, kernel_size)
    side = _field(rates, kernel_size)
    support = np.zeros(side, dtype=bool)
    support[side // 2] = True
    m: list[int] = []
    for r in reversed(rates):  # top layer first: M_n describes the top layer alone
        support = _spread(support, _taps(kernel_size, r))
        m.insert(0, _max_gap(support))
    reached = int(support.sum())
    n_holes = side * side - reached * reached  # separable: the 2-D support is the outer product of the 1-D one
    gcd = math.gcd(*rates)
    check = dict(rates=rates, kernel_size=kernel_size, m=tuple(m), m_paper=_paper_m(rates), common_factor=gcd,
                 receptive_field=side, holes=n_holes)
    return HDCCheck(**check, ok=n_holes == 0, reason=_reason(**check))


def _reason(rates: tuple[int, ...], kernel_size: int, m: tuple[int, ...], m_paper: tuple[int, ...],
            common_factor: int, receptive_field: int, holes: int) -> str:
    """One sentence for :class:`HDCCheck.reason`; the branches follow the causes in the order HDC names them."""
    k, side = kernel_size, f'{receptive_field}x{receptive_field}'
    if k == 1:
        return 'gridding-free: a 1x1 kernel reads one pixel whatever the rates.'
    if holes == 0:
        if len(rates) == 1:
            return f'gridding-free: a single {k}x{k} layer at rate 1 reads every pixel of its {side} field.'
        if m[1] > k:  # the bottom layers close gaps wider than k: possible, the HDC rule is only sufficient
            return (f'gridding-free: the {side} field has no holes although M_2 = {m[1]} > {k} (the HDC rule is '
                    f'sufficient, not necessary).')
        if m_paper[1] > k:
            return (f'gridding-free: the {side} field has no holes (M_2 = {m[1]} <= {k}), although the paper\'s '
                    f'recursion bounds M_2 by {m_paper[1]} > {k}; that bound is sufficient, not necessary.')
        return f'gridding-free: rates share no factor and M_2 = {m[1]} <= {k}, so the {side} field has no holes.'
    example = ', '.join(map(str, hdc_rates(3, k)))
    if common_factor > 1:
        return (f'gridding: every rate is a multiple of {common_factor}, so only 1 pixel in {common_factor} per axis '
                f'is reached ({holes} holes in the {side} field); use rates without a common factor, e.g. {example}.')
    if m[1] > k:
        return (f'gridding: M_2 = {m[1]} > kernel size {k} (HDC rule), leaving {holes} holes in the {side} field; '
                f'use smaller upper rates, e.g. {example}.')
    return (f'gridding: M_2 = {m[1]} <= {k} but the bottom rate is {rates[0]}, not 1, so gaps of M_1 = {m[0]} '
            f'remain ({holes} holes in the {side} field); start the rates with 1.')


def hdc_rates(num_layers: int, kernel_size: int = 3, max_rate: int | None = None, cycle: int = 3) -> list[int]:
    """A rising-sawtooth HDC schedule for ``num_layers`` dilated ``k x k`` layers, bottom layer first.

    One group of up to ``cycle`` rates is built and repeated (the paper's groups, e.g. ``1, 2, 5, 1, 2, 5``). The
    group starts at 1; each next rate is the largest that

    * keeps one pixel of overlap between the shifted copies of the field the group's lower rates already cover:
      ``r <= 2 E`` with ``E`` that field's half-width. ``2 E + 1`` would tile the copies edge to edge (``1, 3, 9``
      for 3x3: every pixel reached by a single path, the layout most fragile to one weak tap) and more opens holes;
    * is coprime to the group's earlier rates (the paper's "no common factor relationship", not ``2, 4, 8``);
    * is at most ``max_rate`` and above the previous rate; when no rate qualifies the group stops early.

    For ``k = 3`` the group is the paper's ``1, 2, 5`` (``1, 4, 19`` for ``k = 5``); ``max_rate=4`` gives
    ``1, 2, 3``, ``max_rate=1`` all ones. A single layer gets ``[1]``, the only single rate without holes. Every
    group has a hole-free field, so any repetition passes :func:`hdc_check` (stacked fields add up, in any order).

    Args:
        num_layers: Number of layers (blocks of a dilated stage), >= 1.
        kernel_size: Odd kernel side ``k``.
        max_rate: Cap on every rate (``None``: no cap).
        cycle: Longest group before the sawtooth drops back to 1.

    Returns:
        ``num_layers`` rates.

    Raises:
        ConfigError: A count, cap or kernel size that is not a positive int (odd for the kernel).
    """
    kernel_size = _check_kernel(kernel_size)
    checks = (('num_layers', num_layers), ('cycle', cycle), ('max_rate', 1 if max_rate is None else max_rate))
    for name, value in checks:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f'{name} must be an int >= 1, got {value!r}')
    half = (kernel_size - 1) // 2
    group, extent = [1], half
    while len(group) < cycle:
        limit = 2 * extent if max_rate is None else min(2 * extent, int(max_rate))
        rate = next((r for r in range(limit, group[-1], -1) if all(math.gcd(r, g) == 1 for g in group)), None)
        if rate is None:
            break
        group.append(rate)
        extent += half * rate
    return [group[i % len(group)] for i in range(int(num_layers))]


def coverage(rates: Sequence[int], kernel_size: int = 3, size: int | None = None) -> np.ndarray:
    """How many times each input pixel is used by the centre output pixel of stacked dilated ``k x k`` convolutions.

    Entry ``(y, x)`` counts the paths from the centre output pixel down to input pixel ``(y, x)``, one tap per layer:
    the transposed convolution of a delta with each all-ones dilated kernel, top layer first. The counts do not
    depend on the layer order. All-ones kernels are separable, so the map is the outer product of the 1-D counts
    (each layer a sum of shifted copies), in exact int64.

    Args:
        rates: Dilation rates, bottom layer first.
        kernel_size: Odd kernel side ``k``.
        size: Odd side of the returned map, centred on the field: larger pads with zeros, smaller crops. Defaults to
            the receptive field (:func:`receptive_field`). Even sides are refused: they have no centre pixel.

    Returns:
        An int64 array of shape ``(size, size)``; its sum is ``k ** (2 * len(rates))`` when nothing is cropped.

    Raises:
        ConfigError: Bad rates / kernel size, an even, non-positive or too large ``size``, or counts beyond int64.
    """
    kernel_size = _check_kernel(kernel_size)
    rates = _check_rates(rates, kernel_size)
    field = _field(rates, kernel_size)
    side = field if size is None else size
    if isinstance(side, bool) or not isinstance(side, numbers.Integral) or side < 1 or side % 2 == 0 \
            or side > _MAX_SIDE:
        hint = f'the receptive field is {field}' if field <= _MAX_SIDE else f'pass size=<odd int up to {_MAX_SIDE}>'
        raise ConfigError(f'coverage size must be an odd int between 1 and {_MAX_SIDE}, got {side!r} ({hint})')
    if kernel_size ** len(rates) >= 2 ** 63:  # total 1-D paths; a 1-D count can reach it
        raise ConfigError(f'{len(rates)} layers of {kernel_size}x{kernel_size} give more paths than int64 holds; '
                          f'split the stack')
    length = max(field, int(side))
    row = np.zeros(length, dtype=np.int64)
    row[length // 2] = 1
    for r in reversed(rates):
        row = _spread(row, _taps(kernel_size, r))
    if int(row.max()) ** 2 >= 2 ** 63:
        raise ConfigError(f'{len(rates)} layers of {kernel_size}x{kernel_size} give more paths than int64 holds; '
                          f'split the stack')
    start = length // 2 - int(side) // 2
    row = row[start:start + int(side)]
    return np.outer(row, row)


def holes(cov: np.ndarray) -> int:
    """Zeros inside the receptive field of a coverage map: input pixels no path reaches.

    The field is taken as the bounding box of the non-zero entries. For a map from :func:`coverage` with ``size`` at
    least the receptive field, that box is exactly the field, because its corners are always reached (the path
    through every layer's corner tap); on a cropped map only the visible part is counted.

    Args:
        cov: A 2-D coverage map.

    Returns:
        The number of zeros inside the box (0 for an all-zero map).

    Raises:
        ConfigError: ``cov`` is not 2-D.
    """
    cov = np.asarray(cov)
    if cov.ndim != 2:
        raise ConfigError(f'holes() needs a 2-D coverage map, got an array of shape {cov.shape}')
    rows, cols = np.flatnonzero(cov.any(axis=1)), np.flatnonzero(cov.any(axis=0))
    if rows.size == 0:
        return 0
    box = cov[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return int((box == 0).sum())
