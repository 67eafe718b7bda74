"""BPR training patches on disk and the ``bpr-patches:DIR`` dataset spec (task ``refinement``).

``visionmix bpr extract`` (:mod:`visionmix.analysis.bpr_tools`) writes, with :func:`write_patch_dataset`::

    DIR/index.json                      what the patches are (format, geometry, provenance, one record per patch)
    DIR/train/000000_img.png            image patch, RGB, at the crop size (patch_size + 2 * padding)
    DIR/train/000000_coarse.png         coarse-mask patch, L, 0 / 255
    DIR/train/000000_gt.png             ground-truth patch, L, 0 / 255
    DIR/val/...                         the same for the held-out images

The official ``split_patches.py`` also writes PNG patches (mask x 255) but keeps their boxes in ``detail_dir`` text
files that its tools read back with ``eval``; here everything is one JSON file read with ``json.loads`` and checked
field by field, and patch file names are derived from the patch's position (the index holds no path), so a crafted
index can neither run code nor point outside ``DIR``. Nothing is pickled.

Items are ``(image uint8 (s, s, 3), coarse bool (s, s), gt bool (s, s))`` until a ``transform`` (the refinement
task's) turns them into the network's input and target. The whole directory is written atomically
(:func:`atomic_directory`): a failed or killed extraction leaves no ``DIR``, or the previous one.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import DataError, DatasetInfo, read_json
from .datasets import DatasetKind, register_dataset

__all__ = ['PATCH_FORMAT', 'PATCH_VERSION', 'INDEX_FILE', 'PATCH_SPLITS', 'REFINEMENT_CLASSES', 'PatchDataset',
           'PatchSample', 'atomic_directory', 'read_patch_index', 'write_patch_dataset', 'patch_files']

PATCH_FORMAT = 'visionmix-bpr-patches'
PATCH_VERSION = 1
INDEX_FILE = 'index.json'
PATCH_SPLITS = ('train', 'val')
REFINEMENT_CLASSES = ['background', 'foreground']
# per-patch record: key -> accepted types (bool is an int in Python: refused separately)
_RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    'image_id': int, 'instance': int, 'category_id': int, 'box': list, 'coarse_iou': (int, float)}
_META_INTS = ('patch_size', 'padding')
PatchSample = tuple[np.ndarray, np.ndarray, np.ndarray]


def patch_files(root: Path, split: str, index: int) -> tuple[Path, Path, Path]:
    """The image, coarse-mask and ground-truth PNG of patch ``index`` of ``split``."""
    stem = root / split / f'{index:06d}'
    return Path(f'{stem}_img.png'), Path(f'{stem}_coarse.png'), Path(f'{stem}_gt.png')


# ---------------------------------------------------------------------------------------------------- writing

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory all or nothing: yields a hidden temp folder next to ``path``, renamed to ``path`` when the
    block ends without error; on an error it is removed and ``path`` is untouched.

    Args:
        path: The directory to write.
        overwrite: Replace an existing non-empty ``path`` (it is swapped out, then deleted); otherwise that is an
            error, raised before anything is written.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path('.')
    if not parent.is_dir():
        raise DataError(f'cannot write {path}: directory {parent} does not exist')
    if path.exists() and not path.is_dir():
        raise DataError(f'cannot write {path}: it is a file')
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DataError(f'{path} already exists and is not empty; choose another output or pass --overwrite')
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.tmp', dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: the result should read like a plain mkdir's
        old = None
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.old', dir=parent))
            os.replace(path, old / 'content')
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_png(array: np.ndarray, path: Path, mode: str) -> None:
    Image.fromarray(array, mode).save(path, compress_level=1)  # patches are small; speed over size


def write_patch_dataset(path: str | os.PathLike, splits: dict[str, Iterable[tuple[PatchSample, dict[str, Any]]]],
                        meta: dict[str, Any], overwrite: bool = False) -> dict[str, int]:
    """Write a patch dataset (see the module docstring), atomically.

    Args:
        path: Output directory.
        splits: ``{'train': items, 'val': items}``; an item is ``((image, coarse, gt), record)`` with ``image`` uint8
            (s, s, 3), the masks bool (s, s), and ``record`` the patch's ``image_id``, ``instance``, ``category_id``,
            ``box`` and ``coarse_iou``.
        meta: Geometry and provenance: must hold ``patch_size`` and ``padding``; stored as is in the index.
        overwrite: Replace an existing directory.

    Returns:
        Patches written per split.
    """
    counts, records = {}, {}
    with atomic_directory(path, overwrite) as tmp:
        for split in PATCH_SPLITS:
            (tmp / split).mkdir()
            records[split] = []
            for k, ((image, coarse, gt), record) in enumerate(splits.get(split, ())):
                img_file, coarse_file, gt_file = patch_files(tmp, split, k)
                _save_png(np.ascontiguousarray(image, np.uint8), img_file, 'RGB')
                _save_png(np.asarray(coarse, bool).astype(np.uint8) * 255, coarse_file, 'L')
                _save_png(np.asarray(gt, bool).astype(np.uint8) * 255, gt_file, 'L')
                records[split].append(record)
            counts[split] = len(records[split])
        # built after the patches, so counts the item generators keep in ``meta`` are final
        index = dict(format=PATCH_FORMAT, version=PATCH_VERSION, **meta, splits=records)
        (tmp / INDEX_FILE).write_text(json.dumps(index))
    return counts


# ---------------------------------------------------------------------------------------------------- reading

def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f'{where}: a patch record must be an object, got {type(record).__name__}')
    for key, kind in _RECORD_FIELDS.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            expected = getattr(kind, '__name__', 'a number')
            raise DataError(f'{where}: field {key!r} must be {expected}, got {value!r:.40}')
    box = record['box']
    if len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        raise DataError(f'{where}: box must be 4 integers x1, y1, x2, y2, got {box!r:.60}')


def read_patch_index(root: str | os.PathLike) -> dict[str, Any]:
    """The checked ``index.json`` of a patch dataset (raises a one-line :class:`DataError` for anything wrong)."""
    root = Path(root).expanduser()
    file = root / INDEX_FILE
    if not root.is_dir():
        raise DataError(f'patch dataset {root} does not exist (write one with `visionmix bpr extract`)')
    if not file.is_file():
        raise DataError(f'{root} holds no {INDEX_FILE}: not a patch dataset of `visionmix bpr extract`')
    index = read_json(file)
    if not isinstance(index, dict) or index.get('format') != PATCH_FORMAT:
        raise DataError(f'{file} is not a visionmix BPR patch index (format {PATCH_FORMAT!r})')
    if index.get('version') != PATCH_VERSION:
        raise DataError(f'{file} has version {index.get("version")!r}; this visionmix reads version {PATCH_VERSION}')
    for key in _META_INTS:
        value = index.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f'{file}: {key} must be an integer >= 0, got {value!r}')
    splits = index.get('splits')
    if not isinstance(splits, dict) or not all(isinstance(splits.get(s), list) for s in PATCH_SPLITS):
        raise DataError(f'{file}: "splits" must hold a list of patch records for each of {", ".join(PATCH_SPLITS)}')
    for split in PATCH_SPLITS:
        for k, record in enumerate(splits[split]):
            _check_record(record, f'{file}: {split} patch {k}')
    return index


def _read_png(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode != mode:
                raise DataError(f'{path} is a {img.mode} image; a patch dataset stores {mode} PNGs here')
            return np.array(img)  # a writable copy: torch.from_numpy warns on read-only arrays
    except FileNotFoundError:
        raise DataError(f'missing patch file {path} (the patch dataset is incomplete; extract it again)') from None
    except OSError as e:
        raise DataError(f'cannot read patch file {path}: {e}') from None


class PatchDataset(Dataset):
    """One split of a patch dataset; returns ``transform((image, coarse, gt))`` (raw arrays without a transform).

    Args:
        root: The dataset directory.
        split: ``'train'`` or ``'val'``.
        index: Its checked index (read when not given).
        transform: Sample -> whatever the task trains on.
    """

    def __init__(self, root: str | os.PathLike, split: str, index: dict[str, Any] | None = None,
                 transform: Callable[[PatchSample], Any] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.index = index if index is not None else read_patch_index(self.root)
        self.records = list(self.index['splits'][split])
        self.positions = list(range(len(self.records)))  # file numbers of the items (a subset keeps its files)
        self.crop = self.index['patch_size'] + 2 * self.index['padding']
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def sample(self, i: int) -> PatchSample:
        """The raw patch ``i``: uint8 image (s, s, 3), bool coarse mask and bool ground truth (s, s)."""
        img_file, coarse_file, gt_file = patch_files(self.root, self.split, self.positions[i])
        image, coarse, gt = _read_png(img_file, 'RGB'), _read_png(coarse_file, 'L'), _read_png(gt_file, 'L')
        if image.shape[:2] != (self.crop, self.crop) or coarse.shape != gt.shape or coarse.shape != image.shape[:2]:
            raise DataError(f'{img_file}: patch files of {image.shape[:2]}, {coarse.shape}, {gt.shape}; the index '
                            f'says {self.crop}x{self.crop}')
        return image, coarse > 127, gt > 127

    def subset(self, indices: Iterable[int]) -> 'PatchDataset':
        """The patches at ``indices`` (``limit_train``), same files, index and transform."""
        out = copy.copy(self)
        keep = [int(i) for i in indices]
        out.records, out.positions = [self.records[i] for i in keep], [self.positions[i] for i in keep]
        return out

    def __getitem__(self, i: int) -> Any:
        sample = self.sample(i)
        return self.transform(sample) if self.transform else sample


def _bpr_patches(path: str, img_size: int, skip_corrupt: bool) -> tuple[PatchDataset, PatchDataset, DatasetInfo]:
    root = Path(path).expanduser()
    index = read_patch_index(root)
    train, val = PatchDataset(root, 'train', index), PatchDataset(root, 'val', index)
    if not len(train):
        raise DataError(f'{root}: the train split holds no patches (no coarse instance matched a ground truth with '
                        f'IoU > the extraction threshold?)')
    if not len(val):
        raise DataError(f'{root}: the val split holds no patches; extract with a --val-fraction that leaves images '
                        f'for it')
    missing = [f for k in (0, len(train) - 1) for f in patch_files(root, 'train', k) if not f.is_file()]
    if missing:
        raise DataError(f'missing patch file {missing[0]} (the patch dataset is incomplete; extract it again)')
    info = DatasetInfo(f'bpr-patches:{path}', list(REFINEMENT_CLASSES), len(train), len(val),
                       description=f'BPR boundary patches of {index["patch_size"]} px (+{index["padding"]} context) '
                                   f'at {root}, from {index.get("source", "?")}: image + coarse mask -> ground truth')
    return train, val, info


register_dataset(DatasetKind('bpr-patches', 'refinement', 'PATH', _bpr_patches,
                             'BPR boundary patches written by `visionmix bpr extract` (bpr-patches:DIR)',
                             'refinement'))
