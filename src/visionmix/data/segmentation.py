"""Segmentation datasets: images with per-pixel class masks.

* ``synthetic-seg`` / ``synthetic-seg:N``: the shapes of :mod:`visionmix.data.synthetic` with their binary masks
  (one output map, ``classes == ['shape']``).
* ``segfolder:PATH``: the official UNeXt layout, ``PATH/images/<stem>.png`` and ``PATH/masks/<c>/<stem>.png`` for
  each mask folder ``c`` (``0``, ``1``, ...), matched by file stem. One mask folder is binary segmentation (one
  output map, BCE + Dice); ``M > 1`` folders are ``M + 1`` exclusive classes, background first (CE + Dice), and a
  pixel set in two masks is an error. A mask pixel is foreground when it is >= 128 (0/255 masks) or, in a mask whose
  values are all 0/1, when it is 1. The train/val split is fixed: the sorted stems split 80/20 with
  ``train_test_split(random_state=41)``, the seed of the official UNeXt training script.

Each item is ``transform(image, mask)``: a PIL RGB image and an (H, W) uint8 array of class indices (0/1 when
binary); the engine's joint transform turns both into tensors, moving them together.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .base import IMG_EXTENSIONS, DataError, DatasetInfo, check_images
from .synthetic import DEFAULT_SEED, DEFAULT_TRAIN, make_seg_arrays
from .textures import TEXTURE_CLASSES, textures_seg_splits

__all__ = ['SegmentationDataset', 'build_synthetic_seg', 'build_segfolder', 'build_textures_seg',
           'SEGFOLDER_SPLIT_SEED']

SEGFOLDER_VAL_FRACTION = 0.2
SEGFOLDER_SPLIT_SEED = 41  # UNeXt-pytorch train.py: train_test_split(img_ids, test_size=0.2, random_state=41)


class SegmentationDataset(Dataset):
    """Images and class-index masks, in memory (uint8 arrays (N, H, W, 3) and (N, H, W)) or as files.

    Args:
        images: Array of RGB images, or image paths.
        masks: Array of class-index masks, or per image a tuple of binary mask paths (one per mask folder).
        classes: Names of the output maps: one name for binary segmentation, else background first.
        transform: ``transform(PIL image, uint8 mask) -> (image, target)``.
    """

    def __init__(self, images: np.ndarray | Sequence[str], masks: np.ndarray | Sequence[tuple[str, ...]],
                 classes: Sequence[str], transform: Callable[[Image.Image, np.ndarray], Any] | None = None) -> None:
        if len(images) != len(masks):
            raise DataError(f'{len(images)} images but {len(masks)} masks')
        self.images, self.masks = images, masks
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image, masks = self.images[index], self.masks[index]
        if isinstance(image, np.ndarray):
            return Image.fromarray(image, 'RGB'), masks
        try:
            with Image.open(image) as img:
                img = img.convert('RGB')
        except (OSError, ValueError) as e:
            raise DataError(f'cannot read image {image}: {e}') from None
        return img, _mask_from_files(masks, img.size)

    def subset(self, indices: Sequence[int]) -> 'SegmentationDataset':
        pick = (lambda seq: seq[np.asarray(indices)]) if isinstance(self.images, np.ndarray) else \
            (lambda seq: [seq[i] for i in indices])
        return SegmentationDataset(pick(self.images), pick(self.masks), self.classes, self.transform)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, mask = self.load(index)
        return self.transform(image, mask) if self.transform else (image, mask)


def _binary_mask(path: str) -> np.ndarray:
    try:
        with Image.open(path) as m:
            values = np.asarray(m.convert('L'))
    except (OSError, ValueError) as e:
        raise DataError(f'cannot read mask {path}: {e}') from None
    return values > 0 if values.max() <= 1 else values >= 128


def _mask_from_files(paths: tuple[str, ...], size: tuple[int, int]) -> np.ndarray:
    """One binary mask file -> 0/1; several -> 0 background, c + 1 where mask folder c is set."""
    label = np.zeros((size[1], size[0]), dtype=np.uint8)
    for c, path in enumerate(paths):
        fg = _binary_mask(path)
        if fg.shape != label.shape:
            raise DataError(f'mask {path} is {fg.shape[1]}x{fg.shape[0]}, its image {size[0]}x{size[1]}')
        if len(paths) > 1 and label[fg].any():
            raise DataError(f'mask {path} overlaps another mask of the same image; with several mask folders the '
                            f'classes must be exclusive')
        label[fg] = 1 if len(paths) == 1 else c + 1
    return label


def build_synthetic_seg(img_size: int = 32, num_train: int | None = None,
                        ) -> tuple[SegmentationDataset, SegmentationDataset, DatasetInfo]:
    """``synthetic-seg[:N]``: N (default 2,000) train and N // 4 val images with their shape masks."""
    n_train = num_train or DEFAULT_TRAIN
    n_val = max(2, n_train // 4)
    classes = ['shape']
    train = SegmentationDataset(*make_seg_arrays(n_train, img_size, DEFAULT_SEED), classes)
    val = SegmentationDataset(*make_seg_arrays(n_val, img_size, DEFAULT_SEED + 1), classes)
    info = DatasetInfo(f'synthetic-seg:{n_train}', classes, n_train, n_val, task='segmentation',
                       description=f'synthetic shapes with binary masks, seed {DEFAULT_SEED}, {img_size}px')
    return train, val, info


def build_textures_seg(num_train: int | None = None, img_size: int = 64,
                       ) -> tuple[SegmentationDataset, SegmentationDataset, DatasetInfo]:
    """``textures-seg[:N]``: N (default 600) train and N // 4 val images whose classes differ by texture only."""
    train_x, train_y, val_x, val_y = textures_seg_splits(num_train=num_train, size=img_size)
    classes = list(TEXTURE_CLASSES)
    info = DatasetInfo(f'textures-seg:{len(train_x)}', classes, len(train_x), len(val_x), task='segmentation',
                       description=f'scikit-image CC0 textures ({", ".join(classes[1:])}) filling shapes, the horse '
                                   f'and blobs on a generated background, {img_size}px, masks exact')
    return SegmentationDataset(train_x, train_y, classes), SegmentationDataset(val_x, val_y, classes), info


def _by_stem(folder: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS:
            if p.stem in files:
                raise DataError(f'{p} and {files[p.stem]} have the same stem; segfolder matches masks by stem')
            files[p.stem] = str(p)
    return files


def _folder_key(path: Path) -> tuple:
    return (0, int(path.name), '') if path.name.isdigit() else (1, 0, path.name)  # 0, 1, ..., 10 in number order


def build_segfolder(path: str, skip_corrupt: bool = False,
                    ) -> tuple[SegmentationDataset, SegmentationDataset, DatasetInfo]:
    """``segfolder:PATH`` in the UNeXt layout (see the module docstring); unreadable files raise
    :class:`DataError` naming them, or with ``skip_corrupt`` drop their image/mask pair."""
    from sklearn.model_selection import train_test_split

    root = Path(path).expanduser()
    layout = 'segfolder:PATH needs PATH/images/*.png and PATH/masks/0/*.png (the UNeXt layout)'
    if not root.is_dir():
        raise DataError(f'dataset folder {root} does not exist')
    image_dir, mask_root = root / 'images', root / 'masks'
    for folder in (image_dir, mask_root):
        if not folder.is_dir():
            raise DataError(f'missing folder {folder} ({layout})')
    mask_dirs = sorted((d for d in mask_root.iterdir() if d.is_dir() and not d.name.startswith('.')), key=_folder_key)
    if not mask_dirs:
        raise DataError(f'no mask folders in {mask_root} ({layout})')
    images = _by_stem(image_dir)
    if not images:
        raise DataError(f'no images in {image_dir} ({", ".join(IMG_EXTENSIONS)})')
    masks = [_by_stem(d) for d in mask_dirs]
    for folder, found in zip(mask_dirs, masks):
        lacking = sorted(set(images) - set(found))
        if lacking:
            raise DataError(f'image {images[lacking[0]]} has no mask in {folder} ({len(lacking)} image(s) lack one; '
                            f'masks are matched to images by file stem)')
        orphans = sorted(set(found) - set(images))
        if orphans:
            raise DataError(f'mask {found[orphans[0]]} has no image in {image_dir} ({len(orphans)} such mask(s); '
                            f'masks are matched to images by file stem)')
    stems = sorted(images)
    good = set(range(len(stems)))
    skipped: list[str] = []
    for files in [[images[s] for s in stems], *([m[s] for s in stems] for m in masks)]:
        ok, bad = check_images(files, skip_corrupt)
        good &= set(ok)
        skipped += bad
    stems = [s for i, s in enumerate(stems) if i in good]
    for s in stems:  # headers only: a size mismatch is a broken dataset, not a corrupt file
        with Image.open(images[s]) as img:
            size = img.size
        for m in masks:
            with Image.open(m[s]) as mask:
                if mask.size != size:
                    raise DataError(f'mask {m[s]} is {mask.size[0]}x{mask.size[1]}, its image {images[s]} is '
                                    f'{size[0]}x{size[1]}')
    if len(stems) < 2:
        raise DataError(f'{root}: segfolder needs at least 2 readable image/mask pairs for its train/val split, '
                        f'found {len(stems)}')
    train_stems, val_stems = train_test_split(stems, test_size=SEGFOLDER_VAL_FRACTION,
                                              random_state=SEGFOLDER_SPLIT_SEED)
    names = [d.name for d in mask_dirs]
    classes = names if len(names) == 1 else ['background', *names]
    splits = [SegmentationDataset([images[s] for s in sorted(part)], [tuple(m[s] for m in masks) for s in sorted(part)],
                                  classes) for part in (train_stems, val_stems)]
    info = DatasetInfo(f'segfolder:{path}', classes, len(splits[0]), len(splits[1]), skipped, task='segmentation',
                       description=f'UNeXt-layout segmentation folder at {root}: {len(names)} mask folder(s), '
                                   f'80/20 split (random_state={SEGFOLDER_SPLIT_SEED})')
    return splits[0], splits[1], info
