"""The data types every dataset builder shares (a leaf: the builders import it, never the other way round)."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ['DataError', 'DatasetInfo', 'ImageListDataset', 'check_images', 'read_json', 'IMG_EXTENSIONS']

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


@dataclass
class DatasetInfo:
    """What was loaded: the spec, class names, split sizes and skipped (corrupt) files."""

    spec: str
    classes: list[str]
    num_train: int
    num_val: int
    skipped: list[str] = field(default_factory=list)
    description: str = ''
    task: str = 'classification'  # or 'segmentation': classes are then the output maps

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ImageListDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W, 3), or as files; returns ``(transform(PIL image), label)``."""

    def __init__(self, images: np.ndarray | Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.images = images
        self.targets = [int(t) for t in labels]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        item = self.images[index]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item, 'RGB')
        try:
            with Image.open(item) as img:
                return img.convert('RGB')
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f'cannot read image {item}: {e}') from None

    def subset(self, indices: Sequence[int]) -> 'ImageListDataset':
        """The images at ``indices`` (in that order), same classes and transform."""
        images = self.images[np.asarray(indices)] if isinstance(self.images, np.ndarray) else \
            [self.images[i] for i in indices]
        return ImageListDataset(images, [self.targets[i] for i in indices], self.classes, self.transform)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load(index)
        return (self.transform(img) if self.transform else img), self.targets[index]


def check_images(files: Sequence[str], skip_corrupt: bool = False) -> tuple[list[int], list[str]]:
    """Open every file once. Returns (indices of good files, corrupt files); without ``skip_corrupt`` the first
    corrupt file raises :class:`DataError` naming it."""
    good, bad = [], []
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img.verify()
            with Image.open(path) as img:  # verify() does not decode; a truncated file only fails on load
                img.load()
            good.append(i)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
            if not skip_corrupt:
                raise DataError(f'cannot read image {path}: {type(e).__name__}: {e} '
                                f'(pass --skip-corrupt to skip and count such files)') from None
            bad.append(str(path))
    return good, bad


def read_json(path: str | Path, what: str = 'file') -> Any:
    """The content of a JSON file, read with ``json.loads`` (data files are never evaluated).

    Args:
        path: The file.
        what: What the file is, for the error (``'COCO annotation file'``).

    Raises:
        DataError: One line: the file is missing, unreadable or not valid JSON (with the line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f'{what} {path} does not exist')
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f'cannot read {path}: {e}') from None
    except json.JSONDecodeError as e:
        raise DataError(f'{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}') from None
