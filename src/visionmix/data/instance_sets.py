"""Instance segmentation datasets: ``shapes-inst[:N]``, ``coins`` and ``coco:IMAGES_DIR:ANNOTATIONS.json``.

Every item is ``(image, target)`` in the layout torchvision's Mask R-CNN trains on: ``image`` float32 ``(3, H, W)``
in [0, 1] (the model normalises it with its backbone's mean / std), ``target`` a dict of ``boxes`` float32 ``(K, 4)``
(``x1, y1, x2, y2`` in pixels, exclusive end: the extent of the mask), ``labels`` int64 ``(K,)`` in ``1..len(classes)``
(0 is the background) and ``masks`` uint8 ``(K, H, W)``. Images keep their own size (the model resizes them).

Before an item can reach a training step, every source goes through one check (:func:`clean_instances`): empty
masks and degenerate boxes are dropped and counted (the count is in ``DatasetInfo.description`` and warned once), so
no batch can stop an epoch; a wrong file is a one-line :class:`DataError` when the dataset is built.

COCO (``coco:IMAGES_DIR:ANNOTATIONS.json``): polygons, uncompressed and compressed RLE are decoded with pycocotools;
categories become labels 1..K in the order of their ids (``classes`` are their names); crowd annotations are
dropped (counted), images without annotations kept; boxes are the masks' extents (the ``bbox`` field is only checked
to lie inside the image, 1 px of slack). The images are split 80 / 20 into train / val with a fixed shuffle
(``numpy.random.default_rng(0)``) of the image ids; one image serves as both.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .base import DataError, DatasetInfo, check_images, read_json
from .datasets import DatasetKind, register_dataset
from .instances import coins_instances, mask_boxes, shapes_inst_splits

__all__ = ['InstanceDataset', 'InstanceTransform', 'clean_instances', 'collate_instances', 'load_coco',
           'COCO_VAL_FRACTION', 'BBOX_SLACK']

COCO_VAL_FRACTION = 0.2
BBOX_SLACK = 1.0  # px a COCO bbox may pass the image border (float rounding in real annotation files)
Target = dict[str, torch.Tensor]


def clean_instances(sample: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``sample`` without empty masks or degenerate boxes, boxes reset to the masks' extents; and how many went.

    Args:
        sample: ``image`` uint8 (H, W, 3), ``masks`` bool (K, H, W), ``labels`` int64 (K,), optional ``boxes``.
    """
    masks = np.asarray(sample['masks'], bool).reshape(-1, *np.shape(sample['image'])[:2])
    boxes = mask_boxes(masks)
    keep = masks.any(axis=(1, 2)) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    given = sample.get('boxes')
    if given is not None and len(given) == len(masks):  # a source's own boxes must not be degenerate either
        given = np.asarray(given, np.float32).reshape(-1, 4)
        keep &= (given[:, 2] > given[:, 0]) & (given[:, 3] > given[:, 1])
    out = dict(sample, masks=masks[keep], boxes=boxes[keep], labels=np.asarray(sample['labels'], np.int64)[keep])
    return out, int((~keep).sum())


class InstanceTransform:
    """Sample dict -> ``(image, target)`` tensors; ``hflip``: flip probability, moving image, masks and boxes
    together (torch's RNG, which the training loop seeds per epoch)."""

    def __init__(self, hflip: float = 0.0) -> None:
        self.hflip = hflip

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, Target]:
        image = torch.from_numpy(np.ascontiguousarray(sample['image'])).permute(2, 0, 1).float().div_(255)
        masks = torch.from_numpy(np.ascontiguousarray(sample['masks'])).to(torch.uint8)
        boxes = torch.as_tensor(np.asarray(sample['boxes'], np.float32)).reshape(-1, 4)
        labels = torch.as_tensor(np.asarray(sample['labels'], np.int64))
        if self.hflip and torch.rand(()) < self.hflip:
            width = image.shape[-1]
            image, masks = image.flip(-1), masks.flip(-1)
            # exclusive-end boxes: [x1, x2) -> [W - x2, W - x1), still exactly the flipped mask's extent
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        return image, dict(boxes=boxes, labels=labels, masks=masks)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(hflip={self.hflip})'


def collate_instances(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """A batch as two lists (images of different sizes cannot stack): what torchvision's detectors take."""
    return [item[0] for item in batch], [item[1] for item in batch]


class InstanceDataset(Dataset):
    """Instance samples, held in memory or read on access; returns ``transform(sample)`` (see module docstring).

    Args:
        records: Sample dicts (``image``, ``masks``, ``boxes``, ``labels``), or whatever ``loader`` turns into one.
        classes: Class names, ``classes[label - 1]``.
        loader: Reads one record into a sample dict (None: records are samples).
        transform: Sample -> ``(image, target)``; default :class:`InstanceTransform` without flips.
    """

    def __init__(self, records: Sequence[Any], classes: Sequence[str], loader: Callable[[Any], dict] | None = None,
                 transform: Callable[[dict], Any] | None = None) -> None:
        self.records = list(records)
        self.classes = list(classes)
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int) -> dict[str, Any]:
        """The raw sample dict (uint8 image, bool masks, boxes, labels)."""
        record = self.records[index]
        return self.loader(record) if self.loader is not None else record

    def subset(self, indices: Sequence[int]) -> 'InstanceDataset':
        """The samples at ``indices`` (in that order), same classes, loader and transform."""
        return InstanceDataset([self.records[i] for i in indices], self.classes, self.loader, self.transform)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        return (self.transform or InstanceTransform())(self.sample(index))


# ------------------------------------------------------------------------------------------------ embedded sets

def _cleaned(samples: Sequence[dict]) -> tuple[list[dict], int]:
    out, dropped = [], 0
    for sample in samples:
        sample, n = clean_instances(sample)
        out.append(sample)
        dropped += n
    return out, dropped


def _dropped_note(spec: str, dropped: int) -> str:
    if not dropped:
        return ''
    warnings.warn(f'{spec}: dropped {dropped} empty mask(s) / degenerate box(es)', stacklevel=3)
    return f'; dropped {dropped} empty mask(s) / degenerate box(es)'


@functools.lru_cache(maxsize=2)
def _shapes_inst_cached(num_train: int | None, size: int) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    train, val = shapes_inst_splits(num_train, size)  # ~25 ms an image: keep the last two sizes built
    return tuple(train), tuple(val)


def _shapes_inst(num_train: int | None, img_size: int, skip_corrupt: bool) -> tuple[Any, Any, DatasetInfo]:
    from .instances import SHAPE_CLASSES

    train, val = _shapes_inst_cached(num_train, img_size)
    (train, dropped_t), (val, dropped_v) = _cleaned(train), _cleaned(val)
    spec = 'shapes-inst' if num_train is None else f'shapes-inst:{num_train}'
    info = DatasetInfo(spec, list(SHAPE_CLASSES), len(train), len(val),
                       description=f'generated textured shapes, 0-6 instances an image, {img_size}x{img_size}, '
                                   f'seed 0 (visionmix.data.instances){_dropped_note(spec, dropped_t + dropped_v)}')
    return InstanceDataset(train, SHAPE_CLASSES), InstanceDataset(val, SHAPE_CLASSES), info


def _coins(arg: None, img_size: int, skip_corrupt: bool) -> tuple[Any, Any, DatasetInfo]:
    sample, dropped = clean_instances(coins_instances())
    info = DatasetInfo('coins', list(sample['classes']), 1, 1,
                       description='scikit-image coins photo (303x384), 24 coins, pseudo ground truth from Sobel + '
                                   'watershed; train = val = the one photo (a real-image fit / predict check, not a '
                                   f'benchmark){_dropped_note("coins", dropped)}')
    return InstanceDataset([sample], sample['classes']), InstanceDataset([sample], sample['classes']), info


# --------------------------------------------------------------------------------------------------------- COCO

def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, 'COCO annotation file')
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) \
            or not isinstance(data.get('categories'), list) or not isinstance(data.get('annotations', []), list):
        raise DataError(f'{path} is not a COCO instances file (needs lists "images", "categories", "annotations")')
    return data


def _ann_rle(ann: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """One annotation's segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    from pycocotools import mask as mask_utils

    segm = ann.get('segmentation')
    try:
        if isinstance(segm, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
            if not segm or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm):
                raise ValueError('polygons must be lists of >= 3 x, y pairs')
            return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        if isinstance(segm, dict) and isinstance(segm.get('counts'), list):  # uncompressed RLE
            return mask_utils.frPyObjects(segm, height, width)
        if isinstance(segm, dict) and isinstance(segm.get('counts'), (str, bytes)):
            if list(segm.get('size', [])) != [height, width]:
                raise ValueError(f'RLE size {segm.get("size")} is not the image size [{height}, {width}]')
            return dict(segm)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f'{where}: bad segmentation ({e})') from None
    raise DataError(f'{where}: segmentation must be polygons or RLE, got {type(segm).__name__}')


def _check_bbox(ann: dict[str, Any], height: int, width: int, where: str) -> bool:
    """False for a degenerate bbox (dropped); DataError for a malformed one or one outside the image."""
    bbox = ann.get('bbox')
    if bbox is None:
        return True
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise DataError(f'{where}: bbox must be [x, y, width, height], got {bbox!r}')
    x, y, w, h = bbox
    if x < -BBOX_SLACK or y < -BBOX_SLACK or x + w > width + BBOX_SLACK or y + h > height + BBOX_SLACK:
        raise DataError(f'{where}: bbox {bbox} lies outside the {width}x{height} image')
    return w > 0 and h > 0


def _image_table(data: dict[str, Any], images_dir: Path, ann_path: Path) -> dict[Any, dict[str, Any]]:
    table = {}
    for img in data['images']:
        if not isinstance(img, dict) or not {'id', 'file_name', 'width', 'height'} <= set(img):
            raise DataError(f'{ann_path}: image entry {img!r:.80} needs id, file_name, width and height')
        file = images_dir / img['file_name']
        if not file.is_file():
            raise DataError(f'{ann_path}: image {img["id"]} file {file} does not exist')
        table[img['id']] = dict(file=str(file), image_id=img['id'], height=int(img['height']),
                                width=int(img['width']), anns=[])
    return table


def load_coco(images_dir: str | Path, ann_file: str | Path, skip_corrupt: bool = False,
              ) -> tuple[list[dict[str, Any]], list[str], dict[str, int], list[str]]:
    """Read a COCO instances file: (image records, class names, drop counts, skipped unreadable files).

    A record holds ``file``, ``image_id``, ``height``, ``width`` and ``anns`` (compressed RLE, label, annotation id);
    :func:`read_coco_record` turns it into a sample. Raises :class:`DataError` naming the file (and annotation id)
    for missing files, bad JSON, unknown image or category ids and boxes outside the image.
    """
    from pycocotools import mask as mask_utils

    images_dir, ann_path = Path(images_dir).expanduser(), Path(ann_file).expanduser()
    if not images_dir.is_dir():
        raise DataError(f'COCO images folder {images_dir} does not exist')
    data = _read_json(ann_path)
    categories = sorted(data['categories'], key=lambda c: c['id'])
    label_of = {c['id']: i + 1 for i, c in enumerate(categories)}
    table = _image_table(data, images_dir, ann_path)
    counts = dict(crowd=0, empty=0, degenerate=0)
    for ann in data.get('annotations', []):
        where = f'{ann_path}: annotation {ann.get("id")!r}'
        image = table.get(ann.get('image_id'))
        if image is None:
            raise DataError(f'{where}: unknown image_id {ann.get("image_id")!r}')
        if ann.get('category_id') not in label_of:
            raise DataError(f'{where}: unknown category_id {ann.get("category_id")!r}')
        where += f' (image {image["file"]})'
        if ann.get('iscrowd'):
            counts['crowd'] += 1  # torchvision's Mask R-CNN has no notion of crowd regions
            continue
        if not _check_bbox(ann, image['height'], image['width'], where):
            counts['degenerate'] += 1
            continue
        rle = _ann_rle(ann, image['height'], image['width'], where)
        if mask_utils.area(rle) == 0:
            counts['empty'] += 1
            continue
        image['anns'].append((rle, label_of[ann['category_id']], ann.get('id')))
    records = list(table.values())
    good, skipped = check_images([r['file'] for r in records], skip_corrupt)
    records = [records[i] for i in good]
    for r in records:
        with Image.open(r['file']) as img:
            if img.size != (r['width'], r['height']):
                raise DataError(f'{ann_path}: image {r["image_id"]} ({r["file"]}) is {img.size[0]}x{img.size[1]}, '
                                f'the file says {r["width"]}x{r["height"]}')
    return records, [str(c.get('name', c['id'])) for c in categories], counts, skipped


def read_coco_record(record: dict[str, Any]) -> dict[str, Any]:
    """A :func:`load_coco` record as a sample dict (image read, masks decoded; cleaned, though load_coco already
    dropped what could be dropped)."""
    from pycocotools import mask as mask_utils

    try:
        with Image.open(record['file']) as img:
            image = np.asarray(img.convert('RGB'))
    except OSError as e:
        raise DataError(f'cannot read image {record["file"]}: {e}') from None
    anns = record['anns']
    masks = np.zeros((len(anns), record['height'], record['width']), bool)
    if anns:  # a list of RLEs decodes to (H, W, K) in one call
        masks[:] = mask_utils.decode([rle for rle, _, _ in anns]).transpose(2, 0, 1).astype(bool)
    sample = dict(image=image, masks=masks, labels=np.array([a[1] for a in anns], np.int64))
    return clean_instances(sample)[0]


def _coco(arg: str, img_size: int, skip_corrupt: bool) -> tuple[Any, Any, DatasetInfo]:
    images_dir, sep, ann_file = arg.rpartition(':')
    if not sep or not images_dir or not ann_file:
        raise DataError(f'coco:{arg}: use coco:IMAGES_DIR:ANNOTATIONS.json')
    records, classes, counts, skipped = load_coco(images_dir, ann_file, skip_corrupt)
    if not records:
        raise DataError(f'{ann_file}: no readable images')
    if not classes:
        raise DataError(f'{ann_file}: no categories')
    order = np.random.default_rng(0).permutation(len(records))
    num_val = max(1, round(COCO_VAL_FRACTION * len(records))) if len(records) > 1 else 0
    val_idx, train_idx = sorted(order[:num_val]), sorted(order[num_val:])
    val_idx = val_idx or train_idx  # one image: it is both
    train = InstanceDataset([records[i] for i in train_idx], classes, read_coco_record)
    val = InstanceDataset([records[i] for i in val_idx], classes, read_coco_record)
    dropped = counts['empty'] + counts['degenerate']
    note = _dropped_note(f'coco:{arg}', dropped)
    info = DatasetInfo(f'coco:{arg}', classes, len(train), len(val), skipped,
                       description=f'COCO instances {ann_file} over {images_dir}, {len(records)} images split '
                                   f'{len(train)} / {len(val)} (seed 0); dropped {counts["crowd"]} crowd '
                                   f'annotation(s){note}')
    return train, val, info


_RECIPE = 'instance'  # engine/config.py RECIPES: batch 4, flips, AdamW 1e-3
for _kind in (
    DatasetKind('shapes-inst', 'instance', 'N', _shapes_inst,
                'generated textured shapes with instance masks (400 / 100 by default)', _RECIPE),
    DatasetKind('coins', 'instance', '', _coins, "scikit-image's coins photo, 24 coin masks (pseudo ground truth)",
                _RECIPE),
    DatasetKind('coco', 'instance', 'PATH', _coco, 'COCO instances: coco:IMAGES_DIR:ANNOTATIONS.json (80/20 split)',
                _RECIPE),
):
    register_dataset(_kind)
