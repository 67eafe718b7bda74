"""Instance segmentation data: ``shapes-inst`` (generated shapes) and ``coins`` (one real photo, pseudo ground truth).

A sample is a dict in the torchvision Mask R-CNN layout:

* ``image``: uint8 ``(H, W, 3)`` RGB.
* ``masks``: bool ``(K, H, W)``, one per instance, the pixels where the instance is *visible*. No pixel is in two
  masks, and no mask is empty.
* ``boxes``: float32 ``(K, 4)``, ``[x_min, y_min, x_max + 1, y_max + 1]`` of the mask's pixels (COCO-style
  exclusive end, in pixels, x = column): a one-pixel mask at column 3, row 5 has box ``[3, 5, 4, 6]``.
* ``labels``: int64 ``(K,)`` in ``1..len(classes)``; 0 is reserved for the background.
* ``classes``: the dataset's class names, ``classes[label - 1]`` (no background entry).

``shapes-inst`` (:func:`make_shapes_instances`): 0 to 6 shapes per image (5% of the images are drawn empty) among
:data:`SHAPE_CLASSES`: discs, ellipses (aspect ratio 1.7 to 2.9, so never mistaken for a disc), rotated rectangles
and polygons (triangles and pentagons), drawn with :mod:`skimage.draw`. About a third of the shapes are placed next
to the previous one, so shapes often touch and overlap; a later shape covers an earlier one, and an instance whose
visible area is below :data:`MIN_AREA` (30 px) is dropped (and not painted, so the image shows no unlabelled
fragment). Every instance and the background is filled with a random texture of
:func:`visionmix.data.textures.texture_bank` (chosen per instance, whatever its class, so the class is the shape
only) and a random mean colour kept at least 0.25 (RGB distance, on a 0-1 scale) from the colours already used in
the image, so instance boundaries are visible.

``coins`` (:func:`coins_instances`): ``skimage.data.coins()`` (Greek coins from Pompeii, Brooklyn Museum, no known
copyright restrictions) with masks from the Sobel + watershed pipeline of scikit-image's gallery example "Comparing
edge-based and region-based segmentation": 24 coins, one class.
"""
from __future__ import annotations

import functools

import numpy as np
import skimage.data
import skimage.draw
import skimage.filters
import skimage.segmentation
from scipy import ndimage as ndi

from ..errors import DataError
from .textures import TEXTURE_CLASSES, check_count, make_rng, random_texture_crop

__all__ = ['MIN_AREA', 'SHAPE_CLASSES', 'check_instances', 'coins_instances', 'make_shapes_instances', 'mask_boxes',
           'shapes_inst_splits', 'visible_masks']

SHAPE_CLASSES = ('disc', 'ellipse', 'rectangle', 'polygon')
MIN_AREA = 30
MAX_INSTANCES = 6
EMPTY_FRACTION = 0.05
DEFAULT_TRAIN, DEFAULT_VAL = 400, 100
MIN_SIZE = 32
_MIN_COLOUR_DISTANCE = 0.25


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """COCO-style boxes ``[x_min, y_min, x_max + 1, y_max + 1]`` (float32, ``(K, 4)``) of bool masks ``(K, H, W)``."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size:
            boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


def visible_masks(full: list[np.ndarray], min_area: int = MIN_AREA) -> tuple[np.ndarray, list[int]]:
    """Paint shape footprints in order (a later one covers earlier ones) and keep the visible parts.

    Args:
        full: Bool ``(H, W)`` footprints, in painting order.
        min_area: Instances whose visible area is below this are dropped and not painted.

    Returns:
        ``(label_map, kept)``: int32 ``(H, W)`` with ``j + 1`` on the visible pixels of ``full[kept[j]]`` and 0
        elsewhere, and the indices of the kept footprints in painting order.
    """
    kept = list(range(len(full)))
    while True:
        label_map = np.zeros(full[0].shape if full else (0, 0), np.int32)
        for j, i in enumerate(kept):
            label_map[full[i]] = j + 1
        areas = np.bincount(label_map.ravel(), minlength=len(kept) + 1)[1:]
        if (areas >= min_area).all():
            return label_map, kept
        # Dropping an instance only uncovers pixels, so the others' areas can only grow: this ends.
        kept = [i for i, a in zip(kept, areas) if a >= min_area]


def _shape(kind: str, size: int, center: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """The bool footprint of one shape of class ``kind`` (may extend past the border)."""
    mask = np.zeros((size, size), bool)
    angle = rng.uniform(-np.pi, np.pi)
    if kind == 'disc':
        rr, cc = skimage.draw.disk(center, radius, shape=mask.shape)
    elif kind == 'ellipse':
        major = radius * rng.uniform(1.1, 1.5)
        rr, cc = skimage.draw.ellipse(*center, major, major * rng.uniform(0.35, 0.6), shape=mask.shape, rotation=angle)
    else:
        if kind == 'rectangle':
            half = radius * rng.uniform(0.6, 1.1, 2)
            corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * half
        else:  # triangle or pentagon, vertices jittered around a circle
            k = int(rng.choice((3, 5)))
            theta = np.arange(k) * 2 * np.pi / k + rng.uniform(-0.25, 0.25, k) * np.pi / k
            corners = 1.2 * radius * rng.uniform(0.85, 1.1, (k, 1)) * np.stack([np.sin(theta), np.cos(theta)], 1)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = corners @ rot.T + center
        rr, cc = skimage.draw.polygon(pts[:, 0], pts[:, 1], shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _layout(size: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    """Random footprints and their labels (1-based) for one image, in painting order."""
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_INSTANCES + 1))
    footprints, labels, center, radius = [], [], None, 0.0
    for _ in range(count):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        new_radius = size * rng.uniform(0.07, 0.17)
        if center is not None and rng.random() < 0.35:
            # Next to the previous shape, so that shapes touch or overlap often.
            direction = rng.uniform(-np.pi, np.pi)
            center = center + (radius + new_radius) * rng.uniform(0.6, 1.1) * np.array([np.sin(direction),
                                                                                        np.cos(direction)])
        else:
            center = rng.uniform(0.1, 0.9, 2) * size
        radius = new_radius
        footprints.append(_shape(SHAPE_CLASSES[label], size, center, radius, rng))
        labels.append(label + 1)
    return footprints, labels


def _distinct_colours(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random RGB means in [0.15, 0.85], each kept apart from the earlier ones when possible."""
    colours: list[np.ndarray] = []
    for _ in range(count):
        for _attempt in range(20):
            colour = rng.uniform(0.15, 0.85, 3)
            if all(np.linalg.norm(colour - c) >= _MIN_COLOUR_DISTANCE for c in colours):
                break
        colours.append(colour)
    return np.array(colours).reshape(count, 3)


def _render(label_map: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Fill the background (label 0) and each instance with its own texture crop and colour: uint8 RGB."""
    size = label_map.shape[0]
    colours = _distinct_colours(count + 1, rng)
    image = np.empty((size, size, 3), np.float32)
    for j in range(count + 1):
        region = label_map == j
        texture = random_texture_crop(TEXTURE_CLASSES[int(rng.integers(len(TEXTURE_CLASSES)))], size, rng)
        image[region] = colours[j] + ((texture[region] - 0.5) * rng.uniform(0.5, 1.0))[:, None]
    image += rng.standard_normal(image.shape, np.float32) * np.float32(0.02)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def make_shapes_instances(n: int, size: int = 128, seed: int | list[int] = 0) -> list[dict]:
    """``n`` deterministic ``shapes-inst`` samples (layout in the module docstring).

    Args:
        n: Number of images, >= 1.
        size: Image side in pixels, >= 32.
        seed: Seed of ``numpy.random.default_rng``; the same seed gives identical samples.

    Returns:
        A list of ``n`` sample dicts with keys ``image``, ``masks``, ``boxes``, ``labels``, ``classes``.
    """
    n, size = check_count('n', n), check_count('size', size, MIN_SIZE)
    rng = make_rng(seed)
    samples = []
    for _ in range(n):
        footprints, labels = _layout(size, rng)
        label_map, kept = visible_masks(footprints) if footprints else (np.zeros((size, size), np.int32), [])
        masks = label_map[None] == np.arange(1, len(kept) + 1)[:, None, None]
        samples.append({'image': _render(label_map, len(kept), rng), 'masks': masks, 'boxes': mask_boxes(masks),
                        'labels': np.array([labels[i] for i in kept], np.int64), 'classes': list(SHAPE_CLASSES)})
    return samples


def shapes_inst_splits(num_train: int | None = None, size: int = 128, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and val ``shapes-inst`` samples from different random streams of one seed.

    Args:
        num_train: Train images (default 400); val has ``max(2, num_train // 4)`` (100 by default).
        size: Image side in pixels.
        seed: Base seed; train uses ``default_rng([seed, 0])`` and val ``default_rng([seed, 1])``.

    Returns:
        ``(train_samples, val_samples)``.
    """
    num_train = DEFAULT_TRAIN if num_train is None else check_count('num_train', num_train)
    check_count('seed', seed, 0)
    return make_shapes_instances(num_train, size, [seed, 0]), make_shapes_instances(max(2, num_train // 4), size,
                                                                                    [seed, 1])


@functools.lru_cache(maxsize=1)
def _coins_label_map() -> np.ndarray:
    """Coin labels of ``skimage.data.coins()``: Sobel elevation, watershed from sure markers, holes filled."""
    coins = skimage.data.coins()
    markers = np.zeros(coins.shape, np.uint8)
    markers[coins < 30] = 1  # surely background
    markers[coins > 150] = 2  # surely coin
    regions = skimage.segmentation.watershed(skimage.filters.sobel(coins), markers)
    label_map, _ = ndi.label(ndi.binary_fill_holes(regions == 2))
    # The watershed leaves one 2 px speck; keep components of at least MIN_AREA, as for shapes-inst.
    areas = np.bincount(label_map.ravel())
    keep = np.flatnonzero(areas >= MIN_AREA)
    keep = keep[keep > 0]
    out = np.zeros_like(label_map)
    for j, lab in enumerate(keep):
        out[label_map == lab] = j + 1
    out.flags.writeable = False
    return out


def coins_instances() -> dict:
    """``skimage.data.coins()`` as one instance sample (RGB uint8, 24 coin masks, label 1 = ``'coin'``).

    The masks are pseudo ground truth from classical segmentation, not hand annotation: good enough to check that an
    instance segmentation pipeline runs and roughly works on a real photo, not to benchmark it.
    """
    label_map = _coins_label_map()
    count = int(label_map.max())
    masks = label_map[None] == np.arange(1, count + 1)[:, None, None]
    image = np.repeat(skimage.data.coins()[..., None], 3, axis=-1)
    return {'image': image, 'masks': masks, 'boxes': mask_boxes(masks), 'labels': np.ones(count, np.int64),
            'classes': ['coin']}


def check_instances(sample: dict) -> None:
    """Raise :class:`DataError` (one line) unless ``sample`` is a consistent instance sample (module docstring).

    Checks the keys, dtypes and shapes, that masks, boxes and labels have one entry per instance, that no mask is
    empty, that every box is its mask's extent, and that labels are in ``1..len(classes)``.
    """
    missing = {'image', 'masks', 'boxes', 'labels', 'classes'} - set(sample)
    if missing:
        raise DataError(f'instance sample misses {", ".join(sorted(missing))}')
    image, masks, boxes, labels = sample['image'], sample['masks'], sample['boxes'], sample['labels']
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f'instance image must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
    if masks.dtype != bool or masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise DataError(f'instance masks must be bool (K, {image.shape[0]}, {image.shape[1]}), got {masks.dtype} '
                        f'{masks.shape}')
    if boxes.shape != (len(masks), 4) or labels.shape != (len(masks),):
        raise DataError(f'{len(masks)} masks but boxes {boxes.shape} and labels {labels.shape}')
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if empty.size:
        raise DataError(f'instance mask {int(empty[0])} is empty')
    wrong = np.flatnonzero((mask_boxes(masks) != boxes).any(1))
    if wrong.size:
        raise DataError(f'box {int(wrong[0])} {boxes[wrong[0]].tolist()} is not its mask extent '
                        f'{mask_boxes(masks[wrong[0]][None])[0].tolist()}')
    if labels.dtype != np.int64 or ((labels < 1) | (labels > len(sample['classes']))).any():
        raise DataError(f'labels must be int64 in 1..{len(sample["classes"])}, got {labels.dtype} {labels.tolist()}')
