"""The BPR pipeline around :mod:`visionmix.bpr`: coarse masks in, patch datasets, refined masks and the report out.

* :func:`coarse_from_gt` / :func:`coarse_from_checkpoint`: coarse instance masks as a COCO results JSON, from the
  ground truth degraded to 1/N resolution, or from a ``maskrcnn:`` run (``visionmix bpr coarse``).
* :func:`extract`: coarse masks + ground truth -> a ``bpr-patches:DIR`` training set (``visionmix bpr extract``;
  the official ``tools/filter.py`` + ``tools/split_patches.py``).
* :func:`refine`: images + coarse results + a trained ``bpr:`` refiner -> refined results JSON, overlay PNGs and,
  with ground truth, the report (``visionmix bpr refine``; the official ``split_patches`` + ``test_float`` +
  ``merge_patches`` in one pass, nothing written per patch).
* :func:`report`: mask AP, Boundary AP and Boundary IoU of results files against the ground truth, side by side
  (``visionmix bpr report``).

Images are identified by COCO ``image_id``: for a dataset spec, the file's own ids (``coco:``) or position + 1 in
the split (embedded sets such as ``shapes-inst``); for image files, position + 1 in the order they are listed
(folders sorted), the numbering ``visionmix predict`` gives. ``category_id`` is the dataset's label, 1..K (also what
``visionmix predict`` writes). Results files are read with ``json.loads`` and checked entry by entry before anything
is written; a wrong entry is a one-line :class:`~visionmix.errors.DataError` naming it. Outputs are written
atomically: a results or report file with :func:`visionmix.checkpoint.atomic_write`, an output directory as a whole.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .. import bpr
from ..checkpoint import atomic_write
from ..data import build_datasets
from ..data.base import read_json
from ..data.bpr_patches import atomic_directory, read_patch_index, write_patch_dataset
from ..errors import ConfigError, DataError, VisionmixError

__all__ = ['Scene', 'SceneSource', 'Entry', 'dataset_source', 'files_source', 'read_results', 'degrade_mask',
           'coarse_from_gt', 'coarse_from_checkpoint', 'extract', 'refine', 'report', 'DEGRADE_FACTOR',
           'RESULTS_FILE', 'REPORT_FILE', 'OVERLAY_DIR', 'report_entries']

DEGRADE_FACTOR = 4
VAL_FRACTION = 0.1
RESULTS_FILE = 'refined_results.json'
REPORT_FILE = 'report.json'
OVERLAY_DIR = 'overlays'
OVERLAY_SCORE = 0.5  # instances drawn in the overlays (the results JSON keeps every instance)
OVERLAY_MIN_SIDE = 384  # small images are drawn enlarged (nearest) so 1-px contours stay visible
COARSE_COLOUR, REFINED_COLOUR, BOTH_COLOUR = (255, 60, 60), (60, 220, 60), (255, 220, 0)


# ------------------------------------------------------------------------------------------------- image sources

@dataclass
class Scene:
    """One image and its ground truth (``None`` without ground truth)."""

    image_id: int
    name: str
    image: np.ndarray  # uint8 (H, W, 3) RGB
    gt_masks: np.ndarray | None = None  # bool (K, H, W)
    gt_labels: np.ndarray | None = None  # int64 (K,), 1..len(classes)


@dataclass
class SceneSource:
    """Images (and ground truth) addressed by COCO image id.

    Attributes:
        description: What the images are, for messages and reports.
        sizes: ``image_id -> (H, W)`` of every image.
        load: ``load(image_id) -> Scene``.
        classes: Class names (``classes[label - 1]``), ``None`` when unknown (image files).
        elsewhere: Ids of the dataset's other split (``coco:``): results for them are skipped, not refused, so one
            results file of a whole dataset serves each split.
    """

    description: str
    sizes: dict[Any, tuple[int, int]]
    load: Callable[[Any], Scene]
    classes: list[str] | None = None
    elsewhere: frozenset = frozenset()

    @property
    def has_gt(self) -> bool:
        return self.classes is not None

    @property
    def ids(self) -> list[Any]:
        return list(self.sizes)


def dataset_source(spec: str, split: str = 'val', img_size: int = 128) -> SceneSource:
    """The images of one split of an instance dataset (``shapes-inst``, ``coins``, ``coco:IMAGES:ANN.json``), with
    its ground truth; embedded sets are generated at ``img_size``."""
    if split not in ('train', 'val'):
        raise ConfigError(f'split must be train or val, got {split!r}')
    train, val, info = build_datasets(spec, img_size=img_size)
    if info.task != 'instance':
        raise DataError(f'{spec!r} is a {info.task} dataset; BPR needs instance masks (shapes-inst, coins, '
                        f'coco:IMAGES_DIR:ANNOTATIONS.json)')
    ds, other = (train, val) if split == 'train' else (val, train)
    position: dict[Any, int] = {}
    sizes: dict[Any, tuple[int, int]] = {}
    for i, record in enumerate(ds.records):
        from_file = isinstance(record, dict) and 'image_id' in record and 'height' in record
        image_id = record['image_id'] if from_file else i + 1
        position[image_id] = i
        sizes[image_id] = (record['height'], record['width']) if from_file else tuple(record['image'].shape[:2])

    def load(image_id: Any) -> Scene:
        i = position[image_id]
        sample, record = ds.sample(i), ds.records[i]
        name = Path(record['file']).stem if isinstance(record, dict) and 'file' in record else \
            f'{info.spec.split(":")[0]}_{split}_{image_id:04d}'
        return Scene(image_id, name, np.array(sample['image'], np.uint8), np.asarray(sample['masks'], bool),
                     np.asarray(sample['labels'], np.int64))

    elsewhere = frozenset(r['image_id'] for r in other.records if isinstance(r, dict) and 'image_id' in r and
                          'height' in r) - set(sizes)  # embedded sets number each split 1..N: nothing to skip
    return SceneSource(f'{info.spec} {split} split ({len(sizes)} images)', sizes, load, list(info.classes),
                       elsewhere)


def files_source(images: Sequence[str | Path]) -> SceneSource:
    """Image files, folders (recursive, sorted) or globs, numbered 1..N in that order; no ground truth."""
    from ..engine.evaluate import expand_images

    paths = expand_images(images)
    sizes: dict[Any, tuple[int, int]] = {}
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                sizes[i + 1] = (img.height, img.width)
        except OSError as e:
            raise DataError(f'cannot read image {path}: {e}') from None

    def load(image_id: Any) -> Scene:
        path = paths[image_id - 1]
        with Image.open(path) as img:
            return Scene(image_id, path.stem, np.array(img.convert('RGB')))  # writable: torch warns otherwise

    return SceneSource(f'{len(paths)} image file(s)', sizes, load)


# ---------------------------------------------------------------------------------------------- results files

@dataclass
class Entry:
    """One instance of a COCO results file."""

    index: int  # position in the file
    image_id: Any
    category_id: int
    score: float
    rle: dict[str, Any]  # compressed RLE of the image's size
    raw: dict[str, Any] = field(repr=False)  # the entry as read (written back with a new segmentation)

    def mask(self) -> np.ndarray:
        from pycocotools import mask as mask_utils

        return mask_utils.decode(self.rle).astype(bool)


def _entry_rle(entry: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """The entry's segmentation (compressed / uncompressed RLE or polygons) as a compressed RLE of the image size."""
    from pycocotools import mask as mask_utils

    segm = entry.get('segmentation')
    if isinstance(segm, dict) and isinstance(segm.get('size'), list):
        size = segm['size']
        if size != [height, width]:
            got = 'x'.join(map(str, size)) if all(isinstance(v, int) for v in size) else repr(size)
            raise DataError(f'{where}: the mask is {got} (H x W) but the image is {height}x{width}; give masks of '
                            f'these images at their own size')
    try:
        if isinstance(segm, dict) and isinstance(segm.get('counts'), str):
            rle = dict(size=[height, width], counts=segm['counts'].encode('ascii'))
        elif isinstance(segm, dict) and isinstance(segm.get('counts'), list):
            rle = mask_utils.frPyObjects(segm, height, width)
        elif isinstance(segm, list) and segm and all(isinstance(p, list) and len(p) >= 6 for p in segm):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        else:
            raise ValueError('expected an RLE {"size", "counts"} or polygons')
        mask_utils.area(rle)  # a malformed RLE string fails here, before anything is written
        mask_utils.decode(rle)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise DataError(f'{where}: bad segmentation ({(str(e).splitlines() or [""])[0]})') from None
    return rle


def _check_entry(entry: Any, source: SceneSource, where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f'{where}: a result must be an object with image_id, category_id, score and segmentation, '
                        f'got {type(entry).__name__}')
    image_id = entry.get('image_id')
    if not isinstance(image_id, (int, str)) or isinstance(image_id, bool) or image_id not in source.sizes:
        ids = source.ids
        span = f' (ids {min(ids)}..{max(ids)})' if ids and all(isinstance(i, int) for i in ids) else ''
        raise DataError(f'{where}: image_id {image_id!r} is not one of the images of {source.description}{span}')
    category = entry.get('category_id')
    limit = len(source.classes) if source.classes is not None else None
    if not isinstance(category, int) or isinstance(category, bool) or category < 1 or \
            (limit is not None and category > limit):
        expected = f'1..{limit} (the dataset\'s labels)' if limit else 'an integer >= 1'
        raise DataError(f'{where}: category_id {category!r} is not {expected}')
    score = entry.get('score', 1.0)
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not np.isfinite(score):
        raise DataError(f'{where}: score must be a number, got {score!r}')


def _load_json_list(path: str | Path) -> list[Any]:
    data = read_json(path, 'results file')
    if not isinstance(data, list):
        raise DataError(f'{path} is not a COCO results file (a JSON list of instances), got a {type(data).__name__}')
    return data


def read_results(path: str | Path, source: SceneSource, skip_empty: bool = False) -> dict[Any, list[Entry]]:
    """A COCO results JSON as checked entries per image id (every image of ``source`` has a list, maybe empty).

    Raises a one-line :class:`DataError` for an entry naming an unknown image or category, a mask of another size
    than its image, a malformed segmentation, or an empty mask (unless ``skip_empty``: such entries are dropped).
    Entries of the dataset's other split (``source.elsewhere``) are skipped.
    """
    data = _load_json_list(path)
    out: dict[Any, list[Entry]] = {image_id: [] for image_id in source.ids}
    for i, raw in enumerate(data):
        where = f'{path}: entry {i}'
        if isinstance(raw, dict) and isinstance(raw.get('image_id'), (int, str)) and \
                raw['image_id'] in source.elsewhere:
            continue
        _check_entry(raw, source, where)
        height, width = source.sizes[raw['image_id']]
        rle = _entry_rle(raw, height, width, f'{where} (image_id {raw["image_id"]})')
        if _area(rle) == 0:
            if skip_empty:
                continue
            raise DataError(f'{where} (image_id {raw["image_id"]}): the instance mask is empty; remove it or pass '
                            f'--skip-empty')
        out[raw['image_id']].append(Entry(i, raw['image_id'], raw['category_id'], float(raw.get('score', 1.0)), rle,
                                          raw))
    return out


def _area(rle: dict[str, Any]) -> int:
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(rle))


def _encode(mask: np.ndarray) -> dict[str, Any]:
    """A bool (H, W) mask as a JSON-ready compressed RLE (``counts`` a str, as COCO results files hold it)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(v) for v in rle['size']], counts=rle['counts'].decode('ascii'))


def _mask_bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def _write_json(path: str | Path, data: Any, indent: int | None = None) -> Path:
    text = json.dumps(data, indent=indent)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------------------------------------- coarse masks

def degrade_mask(mask: np.ndarray, factor: int = DEGRADE_FACTOR) -> np.ndarray:
    """A mask at 1/``factor`` resolution and back: area-average down to ``round(H / factor)`` x
    ``round(W / factor)``, bilinear up (``align_corners=False``), foreground where >= 0.5. This mimics a mask head's
    low-resolution output pasted back into the image (Mask R-CNN's 28 x 28 masks): corners round off and thin parts
    vanish, so the result may be empty."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ConfigError(f'the degrade factor must be an integer >= 1 such as 4, got {factor!r}')
    m = torch.from_numpy(np.asarray(mask, bool)).float()[None, None]
    height, width = m.shape[-2:]
    small = F.interpolate(m, size=(max(1, round(height / factor)), max(1, round(width / factor))), mode='area')
    back = F.interpolate(small, size=(height, width), mode='bilinear', align_corners=False)
    return (back[0, 0] >= 0.5).numpy()


def coarse_from_gt(source: SceneSource, output: str | Path, factor: int = DEGRADE_FACTOR) -> dict[str, Any]:
    """Coarse masks from the ground truth degraded by :func:`degrade_mask` as a COCO results JSON (score 1).

    Returns counts: ``instances`` written and ``vanished`` (masks that were empty after degrading, left out).
    """
    if not source.has_gt:
        raise DataError(f'{source.description} has no ground truth to degrade; give a --dataset')
    results, vanished = [], 0
    for image_id in source.ids:
        scene = source.load(image_id)
        for mask, label in zip(scene.gt_masks, scene.gt_labels):
            coarse = degrade_mask(mask, factor)
            if not coarse.any():
                vanished += 1
                continue
            results.append(dict(image_id=image_id, category_id=int(label), score=1.0, bbox=_mask_bbox(coarse),
                                segmentation=_encode(coarse)))
    _write_json(output, results)
    return dict(output=str(output), instances=len(results), vanished=vanished, images=len(source.ids),
                method=f'ground truth at 1/{factor} resolution (area down, bilinear up, >= 0.5)')


def coarse_from_checkpoint(source: SceneSource, checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Coarse masks of a ``maskrcnn:`` run on the source's images as a COCO results JSON (every detection, with the
    ids of this source). Detections whose mask is empty after thresholding are left out (counted in ``empty``)."""
    from ..engine.evaluate import load_trained
    from ..engine.tasks.instance import MASK_THRESHOLD, coco_results

    model, trained = load_trained(checkpoint)
    if trained['task'] != 'instance':
        raise VisionmixError(f'{checkpoint} is a {trained["task"]} checkpoint; coarse masks come from an instance '
                             f'segmentation run (maskrcnn:BACKBONE)')
    results, empty = [], 0
    with torch.no_grad():
        for image_id in source.ids:
            scene = source.load(image_id)
            image = torch.from_numpy(scene.image.copy()).permute(2, 0, 1).float() / 255
            det = {k: v.detach().cpu() for k, v in model([image])[0].items()}
            det['masks'] = det['masks'][:, 0] > MASK_THRESHOLD
            keep = det['masks'].flatten(1).any(1)
            empty += int((~keep).sum())
            results += coco_results({k: v[keep] for k, v in det.items()}, image_id)
    _write_json(output, results)
    return dict(output=str(output), instances=len(results), empty=empty, images=len(source.ids),
                method=f'{trained["model"]} ({trained["checkpoint"]})')


# ------------------------------------------------------------------------------------------ patch extraction

def _val_ids(ids: list[Any], fraction: float, seed: int) -> set[Any]:
    """The images whose patches go to the val split: a fixed shuffle, at least one (and one left for training)."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction < 1:
        raise ConfigError(f'val_fraction must be in [0, 1) such as 0.1, got {fraction!r}')
    count = round(fraction * len(ids))
    if fraction > 0 and len(ids) > 1:
        count = min(max(count, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[:count]}


def _crops(array: np.ndarray, boxes: list[list[int]], padding: int, side: int) -> list[np.ndarray]:
    """``array[y1 - p : y2 + p, x1 - p : x2 + p]`` of the zero-padded array for each box (the official crop)."""
    padded = np.pad(array, ((padding, padding), (padding, padding)) + ((0, 0),) * (array.ndim - 2))
    return [padded[y1:y1 + side, x1:x1 + side] for x1, y1, _, _ in boxes]  # box corner + p in the padded frame


def _scene_patches(scene: Scene, entries: list[Entry], geometry: dict[str, Any], stats: dict[str, int],
                   ) -> Any:
    """Training patches of one image: each coarse instance paired with its ground truth (official filter), then
    cropped under the boxes of its boundary."""
    coarse = [e.mask() for e in entries]
    pairs = bpr.training_pairs(coarse, [e.category_id for e in entries], scene.gt_masks, scene.gt_labels,
                               geometry['iou_min'])
    stats['instances'] += len(entries)
    stats['pairs'] += len(pairs)
    side = geometry['patch_size'] + 2 * geometry['padding']
    for ci, gi in pairs:
        gt = scene.gt_masks[gi]
        boxes = bpr.patch_boxes(coarse[ci], geometry['patch_size'], geometry['iou_thresh']).tolist()
        iou = round(bpr.mask_iou(coarse[ci], gt), 4)
        crops = [_crops(a, boxes, geometry['padding'], side) for a in (scene.image, coarse[ci], gt)]
        stats['patches'] += len(boxes)
        for box, img, c, g in zip(boxes, *crops):
            yield (img, c, g), dict(image_id=scene.image_id, instance=entries[ci].index,
                                    category_id=entries[ci].category_id, box=box, coarse_iou=iou)


def extract(source: SceneSource, coarse: str | Path, output: str | Path, patch_size: int = bpr.PATCH_SIZE,
            iou_thresh: float = bpr.TRAIN_IOU_THRESH, padding: int = 0, iou_min: float = 0.5,
            val_fraction: float = VAL_FRACTION, seed: int = 0, overwrite: bool = False,
            skip_empty: bool = False) -> dict[str, Any]:
    """Build a ``bpr-patches:DIR`` training set from coarse masks and the ground truth (``visionmix bpr extract``).

    Coarse instances whose best IoU with a same-class ground-truth mask is <= ``iou_min`` are dropped (official
    ``filter.py``); the others give one patch per box of :func:`visionmix.bpr.patch_boxes` (NMS at ``iou_thresh``,
    0.25 as the official training set), the target cropped from that ground-truth mask. The patches of a fixed
    ``val_fraction`` of the images (``seed``) form the val split, so no image is in both.

    Returns:
        Counts: images, coarse instances, kept pairs, dropped instances, patches per split, and ``output``.
    """
    if not source.has_gt:
        raise DataError(f'{source.description} has no ground truth; extract needs a --dataset with instance masks '
                        f'(an image folder with COCO annotations is coco:IMAGES_DIR:ANNOTATIONS.json)')
    bpr.patch_boxes(np.zeros((2, 2), bool), patch_size, iou_thresh)  # bad geometry fails before anything is read
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f'padding must be an integer >= 0, got {padding!r}')
    entries = read_results(coarse, source, skip_empty)
    val = _val_ids(source.ids, val_fraction, seed)
    geometry = dict(patch_size=patch_size, padding=padding, iou_thresh=iou_thresh, iou_min=iou_min)
    stats = dict(images=len(source.ids), instances=0, pairs=0, patches=0)

    def items(split: str) -> Any:
        for image_id in source.ids:
            if entries[image_id] and (image_id in val) == (split == 'val'):
                yield from _scene_patches(source.load(image_id), entries[image_id], geometry, stats)

    meta = dict(geometry, val_fraction=val_fraction, seed=seed, source=source.description, coarse=str(coarse),
                stats=stats)
    counts = write_patch_dataset(output, {'train': items('train'), 'val': items('val')}, meta, overwrite)
    return dict(output=str(output), **stats, dropped=stats['instances'] - stats['pairs'], split_patches=counts)


# ------------------------------------------------------------------------------------------------ refinement

def _geometry(trained: dict[str, Any], patch_size: int | None, padding: int | None) -> dict[str, Any]:
    """Patch size and padding: given, else those of the patch set the refiner was trained on, else the official."""
    index = None
    dataset = str(trained.get('dataset', ''))
    if (patch_size is None or padding is None) and dataset.startswith('bpr-patches:'):
        with contextlib.suppress(DataError):  # moved or deleted since training: the official defaults
            index = read_patch_index(dataset.partition(':')[2])
    size = patch_size if patch_size is not None else index['patch_size'] if index else bpr.PATCH_SIZE
    pad = padding if padding is not None else index['padding'] if index else 0
    height, width = (trained['img_size'], trained['img_size']) if isinstance(trained['img_size'], int) else \
        tuple(trained['img_size'])
    if height != width:
        raise DataError(f'{trained["checkpoint"]} was trained on {height}x{width} inputs; a refiner sees squares')
    return dict(patch_size=size, padding=pad, out_size=height, from_index=index is not None)


def _load_refiner(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    from ..engine.evaluate import load_trained

    model, trained = load_trained(checkpoint)
    if trained['task'] != 'refinement':
        raise VisionmixError(f'{checkpoint} is a {trained["task"]} checkpoint ({trained["model"]}); bpr refine '
                             f'needs a refiner trained with --model bpr:BACKBONE --dataset bpr-patches:DIR')
    return model.eval(), trained


def _edges(mask: np.ndarray) -> np.ndarray:
    return (bpr.boundary_map(mask) > 0).numpy() & mask


def _overlay(image: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Image.Image:
    """The image with each instance's coarse contour (red), refined contour (green) and both (yellow), enlarged
    (nearest) to at least :data:`OVERLAY_MIN_SIDE` so 1-px contours stay visible."""
    out = image.copy()
    for coarse, refined in pairs:
        c, r = _edges(coarse), _edges(refined)
        out[c & ~r], out[r & ~c], out[c & r] = COARSE_COLOUR, REFINED_COLOUR, BOTH_COLOUR
    scale = max(1, OVERLAY_MIN_SIDE // max(image.shape[:2]))
    img = Image.fromarray(out)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _refine_scene(scene: Scene, entries: list[Entry], model: nn.Module, geometry: dict[str, Any],
                  options: dict[str, Any]) -> tuple[list[Entry], list[tuple[np.ndarray, np.ndarray]]]:
    """The refined entries of one image and the (coarse, refined) masks to draw."""
    device = next(model.parameters(), torch.empty(0)).device

    def refiner(image_patches: torch.Tensor, mask_patches: torch.Tensor) -> torch.Tensor:
        return model(torch.cat([image_patches, mask_patches], dim=1))

    refined, drawn = [], []
    for entry in entries:
        coarse = entry.mask()
        if entry.score < options['min_score']:
            mask = coarse  # below --min-score: passed through unrefined
        else:
            mask = bpr.refine_mask(scene.image, coarse, refiner, geometry['patch_size'], options['iou_thresh'],
                                   geometry['out_size'], geometry['padding'], options['batch_size'],
                                   device=device).numpy()
        rle = _encode(mask)
        refined.append(Entry(entry.index, entry.image_id, entry.category_id, entry.score,
                             dict(size=rle['size'], counts=rle['counts'].encode('ascii')),
                             dict(entry.raw, segmentation=rle)))
        if entry.score >= OVERLAY_SCORE:
            drawn.append((coarse, mask))
    return refined, drawn


def refine(source: SceneSource, coarse: str | Path, checkpoint: str | Path, output: str | Path,
           iou_thresh: float = bpr.INFER_IOU_THRESH, patch_size: int | None = None, padding: int | None = None,
           batch_size: int = 64, min_score: float = 0.0, overlays: bool = True, overwrite: bool = False,
           skip_empty: bool = False, dilation_ratio: float = 0.02) -> dict[str, Any]:
    """Refine every coarse instance with a trained ``bpr:`` refiner (``visionmix bpr refine``).

    Writes the directory ``output`` atomically: :data:`RESULTS_FILE` (the coarse entries, in their order, with the
    refined ``segmentation``; ``bbox`` and ``score`` kept, as the official ``merge_patches``), ``overlays/`` (one PNG
    per image with instances scoring >= 0.5) and, when ``source`` has ground truth, :data:`REPORT_FILE` (see
    :func:`report`). Patch size and padding default to the refiner's training patches (else the official 64 / 0);
    NMS runs at ``iou_thresh`` (official Cityscapes inference 0.55). Instances scoring below ``min_score`` are
    passed through unrefined (official: every instance is refined).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f'batch_size must be a positive integer, got {batch_size!r}')
    entries = read_results(coarse, source, skip_empty)  # every entry checked before the model is even loaded
    model, trained = _load_refiner(checkpoint)
    geometry = _geometry(trained, patch_size, padding)
    bpr.patch_boxes(np.zeros((2, 2), bool), geometry['patch_size'], iou_thresh)  # bad options fail here
    options = dict(iou_thresh=iou_thresh, batch_size=batch_size, min_score=min_score)
    refined: dict[Any, list[Entry]] = {}
    names: set[str] = set()
    with atomic_directory(output, overwrite) as tmp:
        if overlays:
            (tmp / OVERLAY_DIR).mkdir()
        for image_id in source.ids:
            if not entries[image_id]:
                refined[image_id] = []
                continue
            scene = source.load(image_id)
            refined[image_id], drawn = _refine_scene(scene, entries[image_id], model, geometry, options)
            if overlays:
                name = scene.name if scene.name not in names else f'{scene.name}_{image_id}'
                names.add(name)
                _overlay(scene.image, drawn).save(tmp / OVERLAY_DIR / f'{name}_bpr.png')
        ordered = sorted((e for es in refined.values() for e in es), key=lambda e: e.index)
        _write_json(tmp / RESULTS_FILE, [e.raw for e in ordered])
        result = None
        if source.has_gt:
            result = report_entries(source, {'coarse': entries, 'refined': refined}, dilation_ratio)
            result.update(coarse=str(coarse), checkpoint=str(trained['checkpoint']))
            _write_json(tmp / REPORT_FILE, result, indent=2)
    return dict(output=str(output), instances=len(ordered), images=len(source.ids), geometry=geometry,
                iou_thresh=iou_thresh, min_score=min_score, report=result)


# ----------------------------------------------------------------------------------------------------- report

def _quiet(fn: Callable[[], Any]) -> Any:
    """pycocotools prints its progress and summaries: keep them off the command's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _boundary_rle(rle: dict[str, Any], dilation_ratio: float) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    band = bpr.mask_to_boundary(mask_utils.decode(rle), dilation_ratio).numpy()
    return mask_utils.encode(np.asfortranarray(band.astype(np.uint8)))


def _coco_eval_class() -> type:
    from pycocotools.cocoeval import COCOeval

    class _BoundaryCOCOeval(COCOeval):
        """COCOeval whose match IoU is min(mask IoU, Boundary IoU): Boundary AP (Cheng et al., CVPR 2021), as the
        boundary-iou-api's ``iouType='boundary'``. Boundary bands come from :func:`visionmix.bpr.mask_to_boundary`
        and are computed once per annotation."""

        def __init__(self, gt: Any, dt: Any, dilation_ratio: float) -> None:
            super().__init__(gt, dt, 'segm')
            for coco in (gt, dt):
                for ann in coco.anns.values():
                    ann['boundary'] = _boundary_rle(ann['segmentation'], dilation_ratio)

        def computeIoU(self, imgId: Any, catId: Any) -> Any:  # noqa: N802, N803 - pycocotools' names
            from pycocotools import mask as mask_utils

            p = self.params
            gt = self._gts[imgId, catId] if p.useCats else [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = self._dts[imgId, catId] if p.useCats else [d for c in p.catIds for d in self._dts[imgId, c]]
            if not gt or not dt:
                return []
            order = np.argsort([-d['score'] for d in dt], kind='mergesort')
            dt = [dt[i] for i in order][:p.maxDets[-1]]
            crowd = [int(g['iscrowd']) for g in gt]
            masks = mask_utils.iou([d['segmentation'] for d in dt], [g['segmentation'] for g in gt], crowd)
            bands = mask_utils.iou([d['boundary'] for d in dt], [g['boundary'] for g in gt], crowd)
            return np.minimum(masks, bands)

    return _BoundaryCOCOeval



def _ap(gt: Any, results: list[dict[str, Any]], dilation_ratio: float) -> dict[str, float | None]:
    """Mask AP and Boundary AP (AP, AP50, AP75, in %) of ``results`` against the COCO object ``gt``."""
    from pycocotools.cocoeval import COCOeval

    keys = [f'{kind}_{k}' for kind in ('mask', 'boundary') for k in ('ap', 'ap50', 'ap75')]
    if not results:
        return {k: 0.0 for k in keys}
    dt = _quiet(lambda: gt.loadRes([dict(r) for r in results]))
    out = {}
    for kind, evaluator in (('mask', lambda: COCOeval(gt, dt, 'segm')),
                            ('boundary', lambda: _coco_eval_class()(gt, dt, dilation_ratio))):
        e = evaluator()
        _quiet(lambda: (e.evaluate(), e.accumulate(), e.summarize()))
        for k, value in zip(('ap', 'ap50', 'ap75'), e.stats[:3]):
            out[f'{kind}_{k}'] = None if value < 0 else round(100 * float(value), 3)
    return out


def _gt_coco(source: SceneSource, scenes: dict[Any, Scene]) -> Any:
    from pycocotools.coco import COCO

    images, anns = [], []
    for image_id, scene in scenes.items():
        height, width = source.sizes[image_id]
        images.append(dict(id=image_id, height=height, width=width))
        for mask, label in zip(scene.gt_masks, scene.gt_labels):
            anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=int(label), iscrowd=0,
                             segmentation=_encode(mask), area=float(mask.sum()), bbox=_mask_bbox(mask)))
    gt = COCO()
    gt.dataset = dict(images=images, annotations=anns, categories=[dict(id=i + 1, name=c)
                                                                  for i, c in enumerate(source.classes)])
    _quiet(gt.createIndex)
    return gt


def _pair_ious(scene: Scene, pairs: list[tuple[int, int]], entries: list[Entry],
               dilation_ratio: float) -> list[tuple[float, float]]:
    """(Boundary IoU, mask IoU) of each (instance, ground truth) pair."""
    out = []
    for ci, gi in pairs:
        mask, gt = entries[ci].mask(), scene.gt_masks[gi]
        out.append((bpr.boundary_iou(gt, mask, dilation_ratio), bpr.mask_iou(gt, mask)))
    return out


def report_entries(source: SceneSource, named: dict[str, dict[Any, list[Entry]]], dilation_ratio: float = 0.02,
                   iou_min: float = 0.5) -> dict[str, Any]:
    """The report of :func:`report` for results already read (``label -> entries per image id``)."""
    if not source.has_gt:
        raise DataError(f'{source.description} has no ground truth to report against; give a --dataset')
    labels = list(named)
    scenes = {image_id: source.load(image_id) for image_id in source.ids}
    ious: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    paired = {label: True for label in labels}
    for image_id, scene in scenes.items():
        first = named[labels[0]][image_id]
        masks = [e.mask() for e in first]
        pairs = bpr.training_pairs(masks, [e.category_id for e in first], scene.gt_masks, scene.gt_labels, iou_min)
        for label in labels:
            entries = named[label][image_id]
            own = pairs
            if len(entries) != len(first):  # not the same instances: this file is matched on its own
                paired[label] = False
                own = bpr.training_pairs([e.mask() for e in entries], [e.category_id for e in entries],
                                         scene.gt_masks, scene.gt_labels, iou_min)
            ious[label] += _pair_ious(scene, own, entries, dilation_ratio)
    gt = _gt_coco(source, scenes)
    results = {}
    for label in labels:
        flat = [dict(image_id=e.image_id, category_id=e.category_id, score=e.score, segmentation=e.rle)
                for es in named[label].values() for e in es]
        biou = [b for b, _ in ious[label]]
        results[label] = dict(instances=len(flat), **_ap(gt, flat, dilation_ratio), pairs=len(biou),
                              paired_with=labels[0] if paired[label] else 'itself',
                              boundary_iou=round(100 * float(np.mean(biou)), 3) if biou else None,
                              mask_iou=round(100 * float(np.mean([m for _, m in ious[label]])), 3) if biou else None)
    return dict(source=source.description, dilation_ratio=dilation_ratio, iou_min=iou_min, results=results,
                gain=_gains(results, labels), units='%', metrics=REPORT_METRICS)


REPORT_METRICS = ('mask AP / Boundary AP: COCO AP@[.5:.95] (and AP50, AP75) with pycocotools; Boundary AP matches on '
                  'min(mask IoU, Boundary IoU) (Cheng et al. 2021). boundary_iou / mask_iou: mean over the instances '
                  'of the first results file whose best same-class ground-truth IoU is > iou_min, each against that '
                  'ground truth; the other files are scored on the same instances (paired_with). Boundary IoU bands: '
                  'mask pixels within d = dilation_ratio x image diagonal of the contour.')


def _gains(results: dict[str, dict[str, Any]], labels: list[str]) -> dict[str, float | None]:
    """Last file minus first, per metric (None where either is missing)."""
    if len(labels) < 2:
        return {}
    first, last = results[labels[0]], results[labels[-1]]
    keys = ('mask_ap', 'boundary_ap', 'boundary_iou', 'mask_iou')
    return {k: None if first[k] is None or last[k] is None else round(last[k] - first[k], 3) for k in keys}


def report(source: SceneSource, results: dict[str, str | Path], output: str | Path | None = None,
           dilation_ratio: float = 0.02, iou_min: float = 0.5, skip_empty: bool = False) -> dict[str, Any]:
    """Mask AP, Boundary AP and mean Boundary IoU of each results file against the source's ground truth.

    Args:
        source: Images with ground truth.
        results: ``label -> COCO results JSON``, in report order (the first, e.g. the coarse masks, defines the
            instances the mean IoUs are taken over; ``gain`` is last minus first).
        output: Write the report there as JSON too (atomically).
        dilation_ratio: Boundary IoU band width as a fraction of the image diagonal (0.02 in the paper).
        iou_min: Instances whose best same-class ground-truth IoU is <= this are left out of the mean IoUs.
        skip_empty: Drop empty instances instead of refusing the file.
    """
    if not results:
        raise ConfigError('report needs at least one results file')
    named = {label: read_results(path, source, skip_empty) for label, path in results.items()}
    out = report_entries(source, named, dilation_ratio, iou_min)
    out['files'] = {label: str(path) for label, path in results.items()}
    if output is not None:
        _write_json(output, out, indent=2)
    return out
