"""Dataset specs -> (train, val) datasets; transforms are applied by the caller's ``transform``.

A spec is ``KIND`` or ``KIND:ARG``. Each kind is registered once in :data:`DATASET_KINDS` with the task its data
serves, what its argument is (none, an optional count ``N``, or a required ``PATH``) and its builder, so parsing,
validation, ``--help`` texts and the task check all read one table.
"""
from __future__ import annotations

import codecs
import functools
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import IMG_EXTENSIONS, DataError, DatasetInfo, ImageListDataset, check_images
from .clutter import DIGIT_CLASSES, cluttered_digits_splits
from .segmentation import build_segfolder, build_synthetic_seg, build_textures_seg
from .synthetic import build_synthetic

__all__ = ['DATASET_KINDS', 'DatasetKind', 'build_datasets', 'dataset_task', 'parse_spec', 'dataset_specs',
           'register_dataset', 'load_digits_arrays', 'export_images', 'sample_image']

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
Splits = tuple[Any, Any, DatasetInfo]


@dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset spec.

    Attributes:
        name: The ``KIND`` part of the spec.
        task: The task its items serve: ``'classification'``, ``'segmentation'``, ``'instance'``, ...
        arg: ``''`` (no argument), ``'N'`` (an optional positive count of training images) or ``'PATH'`` (required).
        build: ``build(arg, img_size, skip_corrupt) -> (train, val, info)``; ``arg`` is an int for ``'N'`` kinds.
        help: One line for ``--help``.
        recipe: The training recipe that suits the data (a name of ``visionmix.engine.config.RECIPES``).
    """

    name: str
    task: str
    arg: str
    build: Callable[[Any, int, bool], Splits]
    help: str
    recipe: str = 'imagenet'

    @property
    def usage(self) -> str:
        return {'': self.name, 'N': f'{self.name}[:N]', 'PATH': f'{self.name}:PATH'}[self.arg]


DATASET_KINDS: dict[str, DatasetKind] = {}


def register_dataset(kind: DatasetKind) -> DatasetKind:
    """Add a dataset kind (a new embedded set or file layout) to every command that takes ``--dataset``."""
    if kind.name in DATASET_KINDS:
        raise ValueError(f'dataset kind {kind.name!r} is already registered')
    if kind.arg not in ('', 'N', 'PATH'):
        raise ValueError(f'dataset kind {kind.name!r}: arg must be "", "N" or "PATH", got {kind.arg!r}')
    DATASET_KINDS[kind.name] = kind
    return kind


def dataset_specs(task: str | None = None) -> list[str]:
    """Usage strings of the registered kinds (of one task)."""
    return [k.usage for k in DATASET_KINDS.values() if task is None or k.task == task]


def parse_spec(spec: str) -> tuple[DatasetKind, Any]:
    """``'folder:/data'`` -> (the ``folder`` kind, ``'/data'``); ``'synthetic:500'`` -> (kind, 500).

    Raises:
        DataError: Unknown kind, a missing path, or a count that is not a positive integer.
    """
    usage = ', '.join(dataset_specs())
    if not isinstance(spec, str) or not spec:
        raise DataError(f'dataset spec must be a non-empty string, got {spec!r}; use one of {usage}')
    name, sep, arg = spec.partition(':')
    kind = DATASET_KINDS.get(name.lower())
    if kind is None:
        raise DataError(f'unknown dataset {spec!r}; use one of {usage}')
    if kind.arg == 'PATH':
        if not arg:
            raise DataError(f'dataset {spec!r} needs a path: {kind.usage}')
        return kind, arg
    if kind.arg == '':
        if sep:
            raise DataError(f'dataset {kind.name!r} takes no argument, got {spec!r}')
        return kind, None
    if not sep:
        return kind, None
    if not (arg.isdigit() and int(arg) > 0):
        raise DataError(f'{kind.usage} needs a positive integer N, got {arg!r}')
    return kind, int(arg)


def dataset_task(spec: str) -> str:
    """The task a dataset spec's items serve (``'classification'``, ``'segmentation'``, ...)."""
    return parse_spec(spec)[0].task


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


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    meta: str
    names_key: str
    labels_key: str


CIFAR_LAYOUTS = {
    'cifar10': _CifarLayout('cifar-10-batches-py', tuple(f'data_batch_{i}' for i in range(1, 6)), ('test_batch',),
                            'batches.meta', 'label_names', 'labels'),
    'cifar100': _CifarLayout('cifar-100-python', ('train',), ('test',), 'meta', 'fine_label_names', 'fine_labels'),
}
CIFAR_ROW = 3 * 32 * 32  # one image: 1024 R, then 1024 G, then 1024 B values, each plane row-major


@functools.cache
def _cifar_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch may name: what NumPy's pickles use to rebuild arrays and scalars."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray
    allowed: dict[tuple[str, str], Any] = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
                                           ('_codecs', 'encode'): codecs.encode}  # protocol 2 stores bytes this way
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # written by NumPy 1.x / 2.x
        allowed[module, '_reconstruct'] = multiarray._reconstruct
        allowed[module, 'scalar'] = multiarray.scalar
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR python batch without ever calling code the file names: any global outside NumPy's array
    reconstruction (e.g. ``os.system`` in a crafted file) raises :class:`DataError` before it is looked up."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding='latin1')  # the batches come from Python 2; latin1 keeps their bytes intact
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _cifar_pickle_globals().get((module, name))
        if allowed is None:
            raise DataError(f'{self.source}: refused to unpickle {module}.{name}; a CIFAR batch holds only NumPy '
                            f'arrays and lists (the file is not one, or was crafted to run code)')
        return allowed


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One batch file as a dict with str keys (Python 2 wrote str keys, re-pickled copies often have bytes)."""
    try:
        with open(path, 'rb') as f:
            obj = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f'missing CIFAR file {path}') from None
    except OSError as e:
        raise DataError(f'cannot read {path}: {e.strerror or e}') from None
    except Exception as e:  # noqa: BLE001 - corrupt pickles raise UnpicklingError, EOFError, ValueError, ...
        msg = (str(e).splitlines() or [''])[0]
        raise DataError(f'{path} is not a readable CIFAR python batch ({type(e).__name__}: {msg})') from None
    if not isinstance(obj, dict) or not all(isinstance(k, (str, bytes)) for k in obj):
        raise DataError(f'{path} is not a CIFAR python batch (expected a dict with string keys, got '
                        f'{type(obj).__name__})')
    return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_names(path: Path, key: str) -> list[str]:
    names = _read_cifar_pickle(path).get(key)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path}: '{key}' must be a non-empty list of class names")
    return [n.decode('utf-8', 'replace') if isinstance(n, bytes) else n for n in names]


def _cifar_split(folder: Path, files: Sequence[str], labels_key: str,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels of the batch files, checked."""
    images, targets = [], []
    for name in files:
        path = folder / name
        batch = _read_cifar_pickle(path)
        data, labels = batch.get('data'), batch.get(labels_key)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == CIFAR_ROW):
            got = f'{data.dtype} array of shape {data.shape}' if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: 'data' must be an N x {CIFAR_ROW} uint8 array, got {got}")
        labels = np.asarray(labels) if isinstance(labels, (list, tuple, np.ndarray)) else None
        if labels is None or labels.shape != (len(data),) or not (labels.size == 0 or labels.dtype.kind in 'iu'):
            raise DataError(f"{path}: '{labels_key}' must be {len(data)} integer labels (one per row of 'data')")
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise DataError(f"{path}: label {bad[0]} in '{labels_key}' is outside 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planes -> HWC
        targets.append(labels.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(targets)


def _cifar(kind: str, path: str) -> tuple[ImageListDataset, ImageListDataset, DatasetInfo]:
    """The python version of CIFAR-10 / -100, read with :class:`_CifarUnpickler` (never plain ``pickle.load``).

    Checksums are not verified: a wrong file fails the unpickler's allow-list or the shape and label checks.
    """
    layout = CIFAR_LAYOUTS[kind]
    root = Path(path).expanduser()
    if (root / layout.folder).is_dir():
        folder = root / layout.folder
    elif root.name == layout.folder and root.is_dir():
        folder = root
    else:
        raise DataError(f'{kind}: no {layout.folder}/ folder at {root} (visionmix never downloads; extract the '
                        f'python version of the dataset there)')
    missing = [n for n in (*layout.train, *layout.val, layout.meta) if not (folder / n).is_file()]
    if missing:
        raise DataError(f'{kind}: missing {", ".join(missing)} in {folder}')
    classes = _cifar_names(folder / layout.meta, layout.names_key)
    splits = [ImageListDataset(*_cifar_split(folder, files, layout.labels_key, len(classes)), classes)
              for files in (layout.train, layout.val)]
    info = DatasetInfo(f'{kind}:{path}', classes, len(splits[0]), len(splits[1]),
                       description=f'{kind.upper()} python batches at {folder}')
    return splits[0], splits[1], info


def _cluttered_digits(num_train: int | None, img_size: int, skip_corrupt: bool) -> Splits:
    x_train, y_train, x_val, y_val = cluttered_digits_splits(num_train=num_train, size=img_size)
    classes = list(DIGIT_CLASSES)
    train, val = ImageListDataset(x_train, y_train, classes), ImageListDataset(x_val, y_val, classes)
    info = DatasetInfo(f'cluttered-digits:{len(train)}', classes, len(train), len(val),
                       description=f'scikit-learn digits, large, bright and centred at random scales on a '
                                   f'{img_size}px canvas over dark CC0 texture clutter with distractor fragments and '
                                   f'noise; train and val drawn from disjoint source digits')
    return train, val, info


def _digits(arg: None, img_size: int, skip_corrupt: bool) -> Splits:
    x_train, y_train, x_val, y_val = load_digits_arrays(img_size)
    classes = [str(i) for i in range(10)]
    train, val = ImageListDataset(x_train, y_train, classes), ImageListDataset(x_val, y_val, classes)
    info = DatasetInfo('digits', classes, len(train), len(val),
                       description='scikit-learn digits (8x8, 1797 images), bilinear-upscaled to '
                                   f'{img_size}x{img_size} RGB, stratified 80/20 split (random_state=0)')
    return train, val, info


for _kind in (
    DatasetKind('digits', 'classification', '', _digits, "scikit-learn's 1,797 8x8 digits, upscaled",
                'small-images'),
    DatasetKind('cluttered-digits', 'classification', 'N', _cluttered_digits,
                'digits over dark texture clutter with distractor fragments (64 px): does not saturate small models',
                'small-images'),
    DatasetKind('synthetic', 'classification', 'N',
                lambda n, size, skip: build_synthetic(img_size=size, num_train=n), 'generated shapes x arrangement',
                'small-images'),
    DatasetKind('folder', 'classification', 'PATH', lambda path, size, skip: _folder(path, skip),
                'ImageFolder tree PATH/train/<class>/, PATH/val/<class>/', 'imagenet'),
    DatasetKind('cifar10', 'classification', 'PATH', lambda path, size, skip: _cifar('cifar10', path),
                'local CIFAR-10 python batches', 'small-photos'),
    DatasetKind('cifar100', 'classification', 'PATH', lambda path, size, skip: _cifar('cifar100', path),
                'local CIFAR-100 python batches', 'small-photos'),
    DatasetKind('synthetic-seg', 'segmentation', 'N',
                lambda n, size, skip: build_synthetic_seg(img_size=size, num_train=n), 'generated shapes with masks',
                'segmentation'),
    DatasetKind('segfolder', 'segmentation', 'PATH', lambda path, size, skip: build_segfolder(path, skip),
                'UNeXt layout PATH/images/, PATH/masks/0/', 'segmentation'),
    DatasetKind('textures-seg', 'segmentation', 'N', lambda n, size, skip: build_textures_seg(n, size),
                'CC0 textures filling shapes, the horse and blobs: background + 3 texture classes', 'segmentation'),
):
    register_dataset(_kind)


def build_datasets(spec: str, img_size: int = 32, skip_corrupt: bool = False, limit: int | None = None,
                   ) -> Splits:
    """Build (train, val, info) for a dataset spec; set ``.transform`` on the returned datasets.

    Args:
        spec: ``KIND[:ARG]``, see :func:`dataset_specs`.
        img_size: Side of the embedded datasets' images (digits, synthetic, ...); file datasets keep their size.
        skip_corrupt: Skip unreadable images (counted in ``info.skipped``) instead of raising.
        limit: Keep at most this many training images (the first ones of a fixed shuffle), for quick runs.
    """
    kind, arg = parse_spec(spec)
    train, val, info = kind.build(arg, img_size, skip_corrupt)
    info.task = kind.task
    if limit is not None and limit < len(train):
        train = train.subset(np.random.default_rng(0).permutation(len(train))[:limit])
        info.num_train = len(train)
    return train, val, info


def sample_image(dataset: Any, index: int) -> Image.Image:
    """Item ``index`` of any split :func:`build_datasets` gives, as a PIL RGB image (without its label / mask)."""
    if hasattr(dataset, 'sample'):  # instance datasets: a dict with the image array
        return Image.fromarray(np.asarray(dataset.sample(index)['image'], dtype=np.uint8)).convert('RGB')
    item = dataset.load(index)
    return item[0] if isinstance(item, tuple) else item


def export_images(spec: str, output: str | Path, count: int = 8, split: str = 'val', img_size: int = 64,
                  ) -> list[Path]:
    """Write the first ``count`` images of a dataset split as PNGs (e.g. to try ``visionmix predict`` on them)."""
    if split not in ('train', 'val'):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    if not isinstance(count, int) or count < 1:
        raise DataError(f'count must be a positive integer, got {count!r}')
    train, val, _ = build_datasets(spec, img_size=img_size)
    dataset = train if split == 'train' else val
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stem = spec.split(':')[0]
    paths = []
    for i in range(min(count, len(dataset))):
        path = out / f'{stem}_{split}{i}.png'
        sample_image(dataset, i).save(path)
        paths.append(path)
    return paths
