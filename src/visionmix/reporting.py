"""Small helpers every report writer shares: a headless pyplot, number formatting and rounding for humans.

A leaf: imports nothing of visionmix.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ['pyplot', 'fmt', 'round_floats']


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only; never needs a display)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def fmt(value: float | None, spec: str = '.2f') -> str:
    """``format(value, spec)``, or ``'-'`` for a missing value."""
    return '-' if value is None else format(value, spec)


def round_floats(obj: Any, digits: int = 6) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples) with every float rounded to ``digits`` significant digits, so files
    read by people show ``10.0``, not ``10.000000149011612``. Keep full precision where a program reads it back."""
    if isinstance(obj, float):
        if obj == 0 or not math.isfinite(obj):
            return obj
        return round(obj, max(0, digits - 1 - int(math.floor(math.log10(abs(obj))))))
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(round_floats(v, digits) for v in obj)
    return obj
