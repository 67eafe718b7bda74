"""Image sizes, one syntax everywhere: ``N`` (square) or ``HxW`` on the command line, an int or ``[H, W]`` in recipes
and Python. A leaf: imports nothing of visionmix but its errors."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from .errors import ConfigError

__all__ = ['Size', 'parse_size', 'check_size', 'hw', 'size_str']

Size = Union[int, tuple[int, int]]


def parse_size(text: str | int | Sequence[int]) -> Size:
    """``'224'`` -> 224, ``'224x192'`` -> (224, 192) (H x W); ints and ``[H, W]`` pass through :func:`check_size`."""
    if isinstance(text, str):
        parts = text.lower().replace(' ', '').split('x')
        if len(parts) in (1, 2) and all(p.isdigit() for p in parts):
            return check_size(int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1])))
        raise ConfigError(f'an image size is N or HxW (e.g. 224 or 224x192), got {text!r}')
    return check_size(text)


def check_size(size: object) -> Size:
    """A positive int, or two positive ints (H, W); a square pair becomes one int."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        return size[0] if size[0] == size[1] else (size[0], size[1])
    raise ConfigError(f'an image size is a positive integer N or [H, W], got {size!r}')


def hw(size: Size) -> tuple[int, int]:
    """(H, W) of a size."""
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def size_str(size: Size) -> str:
    """``'32x32'`` / ``'32x48'``: how messages and metadata print a size."""
    h, w = hw(size)
    return f'{h}x{w}'
