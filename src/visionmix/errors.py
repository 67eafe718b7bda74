"""The one error type for mistakes a user can fix (a wrong name, size, path, file or option).

Every error meant for the user derives from :class:`VisionmixError` (a ``ValueError``), so the command line prints
``error: <one line>`` and exits 2 for those and only those; any other exception is a bug and keeps its traceback.
This module imports nothing of visionmix: every layer of the package may raise these.
"""
from __future__ import annotations

__all__ = ['VisionmixError', 'UnknownModelError', 'CheckpointError', 'DataError', 'ConfigError', 'MissingExtraError']


class VisionmixError(ValueError):
    """Base of every user-facing error; the message is one line that says what is wrong and what works."""


class UnknownModelError(VisionmixError):
    """A model name (or composite spec) visionmix cannot build; the message lists the closest names."""


class CheckpointError(VisionmixError):
    """A checkpoint that cannot be read, cannot be fetched, or whose weights do not fit the model."""


class DataError(VisionmixError):
    """A dataset that cannot be used as asked: unknown spec, missing or empty folders, unreadable files."""


class ConfigError(VisionmixError):
    """A recipe or option that cannot be used: unknown key, wrong type or value, unreadable YAML."""


class MissingExtraError(VisionmixError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def first_line(e: BaseException) -> str:
    """``'TypeName: first line of the message'``, for reporting a low-level failure inside one user-facing line."""
    return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0]}'
