"""Dataset specs -> (train, val) datasets of PIL images; transforms are applied by the caller's ``transform``."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = ['DATASET_SPECS', 'DataError', 'DatasetInfo', 'ImageListDataset', 'build_datasets', 'check_images',
           'parse_spec']

DATASET_SPECS = ('digits', 'synthetic[:N]', 'folder:PATH', 'cifar10:PATH', 'cifar100:PATH')
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class DataError(ValueError):
    """A dataset that cannot be used as asked: unknown spec, missing or empty folders, unreadable images."""


@dataclass
class DatasetInfo:
    """What was loaded: the spec, class names, split sizes and skipped (corrupt) files."""

    spec: str
    classes: list[str]
    num_train: int
    num_val: int
    skipped: list[str] = field(default_factory=list)
    description: str = ''

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

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load(index)
        return (self.transform(img) if self.transform else img), self.targets[index]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``'folder:/data'`` -> ``('folder', '/data')``; raises :class:`DataError` for unknown kinds."""
    if not isinstance(spec, str) or not spec:
        raise DataError(f'dataset spec must be a non-empty string, got {spec!r}; use one of {", ".join(DATASET_SPECS)}')
    kind, _, arg = spec.partition(':')
    kind = kind.lower()
    if kind == 'digits' and not arg:
        return kind, None
    if kind == 'synthetic':
        return kind, arg or None
    if kind in ('folder', 'cifar10', 'cifar100'):
        if not arg:
            raise DataError(f'dataset {spec!r} needs a path: {kind}:PATH')
        return kind, arg
    raise DataError(f'unknown dataset {spec!r}; use one of {", ".join(DATASET_SPECS)}')


def _upscale(images: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img, 'L').resize((size, size), Image.BILINEAR).convert('RGB'))
    return out


@functools.lru_cache(maxsize=4)
def load_digits_arrays(img_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 RGB (N, S, S, 3), split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # pixel values are 0..16
    x_train, x_val, y_train, y_val = train_test_split(
        images, digits.target, test_size=DIGITS_VAL_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    return _upscale(x_train, img_size), y_train, _upscale(x_val, img_size), y_val


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


def _scan_split(root: Path) -> tuple[list[str], dict[str, list[str]]]:
    if not root.is_dir():
        raise DataError(f'missing folder {root} (folder:PATH needs PATH/train/<class>/ and PATH/val/<class>/)')
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.'))
    if not classes:
        raise DataError(f'no class folders in {root}')
    files = {}
    for c in classes:
        found = sorted(str(p) for p in (root / c).rglob('*') if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not found:
            raise DataError(f'class folder {root / c} has no images ({", ".join(IMG_EXTENSIONS)})')
        files[c] = found
    return classes, files


def _folder(path: str, skip_corrupt: bool) -> tuple[ImageListDataset, ImageListDataset, DatasetInfo]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f'dataset folder {root} does not exist')
    train_classes, train_files = _scan_split(root / 'train')
    val_classes, val_files = _scan_split(root / 'val')
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f'train/val class mismatch in {root}: only in train {only_train}, only in val {only_val}')
    skipped: list[str] = []
    splits = []
    for files in (train_files, val_files):
        paths = [f for c in train_classes for f in files[c]]
        labels = [i for i, c in enumerate(train_classes) for _ in files[c]]
        good, bad = check_images(paths, skip_corrupt)
        skipped += bad
        splits.append(ImageListDataset([paths[i] for i in good], [labels[i] for i in good], train_classes))
    info = DatasetInfo(f'folder:{path}', train_classes, len(splits[0]), len(splits[1]), skipped,
                       f'ImageFolder tree at {root}')
    return splits[0], splits[1], info


def _cifar(kind: str, path: str) -> tuple[ImageListDataset, ImageListDataset, DatasetInfo]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if kind == 'cifar10' else CIFAR100
    root = Path(path).expanduser()
    if (root / cls.base_folder).is_dir():
        parent = root
    elif root.name == cls.base_folder and root.is_dir():
        parent = root.parent
    else:
        raise DataError(f'{kind}: no {cls.base_folder}/ folder at {root} (visionmix never downloads; extract the '
                        f'python version of the dataset there)')
    try:
        train, val = cls(str(parent), train=True, download=False), cls(str(parent), train=False, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f'{kind} at {parent / cls.base_folder}: {e}') from None
    splits = [ImageListDataset(np.ascontiguousarray(d.data), d.targets, d.classes) for d in (train, val)]
    info = DatasetInfo(f'{kind}:{path}', list(train.classes), len(splits[0]), len(splits[1]),
                       description=f'{kind.upper()} python batches at {parent / cls.base_folder}')
    return splits[0], splits[1], info


def build_datasets(spec: str, img_size: int = 32, skip_corrupt: bool = False, limit: int | None = None,
                   ) -> tuple[ImageListDataset, ImageListDataset, DatasetInfo]:
    """Build (train, val, info) for a dataset spec; set ``.transform`` on the returned datasets.

    Args:
        spec: See :data:`DATASET_SPECS`.
        img_size: Side of the embedded datasets' images (digits, synthetic); other datasets keep their size.
        skip_corrupt: Skip unreadable images (counted in ``info.skipped``) instead of raising.
        limit: Keep at most this many training images (the first ones of a fixed shuffle), for quick runs.
    """
    kind, arg = parse_spec(spec)
    if kind == 'digits':
        x_train, y_train, x_val, y_val = load_digits_arrays(img_size)
        classes = [str(i) for i in range(10)]
        train, val = ImageListDataset(x_train, y_train, classes), ImageListDataset(x_val, y_val, classes)
        info = DatasetInfo('digits', classes, len(train), len(val),
                           description='scikit-learn digits (8x8, 1797 images), bilinear-upscaled to '
                                       f'{img_size}x{img_size} RGB, stratified 80/20 split (random_state=0)')
    elif kind == 'synthetic':
        from .synthetic import build_synthetic

        try:
            n = int(arg) if arg else None
        except ValueError:
            raise DataError(f'synthetic:N needs an integer N, got {arg!r}') from None
        train, val, info = build_synthetic(img_size=img_size, num_train=n)
    elif kind == 'folder':
        train, val, info = _folder(arg, skip_corrupt)
    else:
        train, val, info = _cifar(kind, arg)
    if limit is not None and limit < len(train):
        order = np.random.default_rng(0).permutation(len(train))[:limit]
        images = train.images[order] if isinstance(train.images, np.ndarray) else [train.images[i] for i in order]
        train = ImageListDataset(images, [train.targets[i] for i in order], train.classes)
        info.num_train = len(train)
    return train, val, info
