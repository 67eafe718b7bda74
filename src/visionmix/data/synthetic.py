"""A deterministic synthetic dataset where both local shape and global arrangement decide the class.

Generator (``numpy.random.default_rng(seed)``, default seed 0, 2,000 train + 500 val images, 32x32 RGB):

* Background: a sinusoidal stripe texture with random frequency, orientation, phase and colour, plus pixel noise,
  so that a model cannot classify from flat regions.
* Two filled shapes are drawn: a *key* shape (circle, square or triangle, the local cue) and a plain bar. Their
  arrangement (the global cue) is either horizontal (side by side) or vertical (one above the other), at random
  positions, sizes and colours.
* Class = ``shape x arrangement``: 6 classes, e.g. ``circle-horizontal``. Neither cue alone solves the task.

``synthetic-seg`` uses the same images with a binary mask per image (1 on the key shape and the bar, about 9% of the
pixels). The shapes are brighter than the background (a threshold at mean intensity ~172 separates them almost
exactly), so it is a quick, deterministic check that a segmentation model and pipeline learn, not a benchmark.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .base import DatasetInfo, ImageListDataset

SHAPES = ('circle', 'square', 'triangle')
ARRANGEMENTS = ('horizontal', 'vertical')
CLASSES = [f'{s}-{a}' for s in SHAPES for a in ARRANGEMENTS]
DEFAULT_SEED = 0
DEFAULT_TRAIN = 2000


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8), rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    base, tint = rng.uniform(40, 120, 3), rng.uniform(20, 60, 3)
    img = base[None, None] + wave[..., None] * tint[None, None] + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], color: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == 'circle':
        draw.ellipse(box, fill=color)
    elif kind == 'square':
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def make_image(rng: np.random.Generator, label: int, size: int = 32) -> np.ndarray:
    """One image of class ``label`` (index into :data:`CLASSES`)."""
    return make_image_and_mask(rng, label, size)[0]


def make_image_and_mask(rng: np.random.Generator, label: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One image of class ``label`` and its (size, size) uint8 mask: 1 on the key shape and the bar, 0 elsewhere.

    Drawing the mask takes nothing from ``rng``, so the images are those of :func:`make_image`.
    """
    shape, arrangement = SHAPES[label // 2], ARRANGEMENTS[label % 2]
    img = Image.fromarray(_background(rng, size))
    mask = Image.new('L', (size, size), 0)
    draw, mask_draw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    s = int(rng.integers(size // 4, size // 3 + 1))  # object side
    gap = int(rng.integers(1, max(2, size // 8)))
    # place the pair (key + bar) along the arrangement axis, the key first or second at random
    span = 2 * s + gap
    along = int(rng.integers(0, size - span + 1))
    across = int(rng.integers(0, size - s + 1))
    first, second = (along, along + s + gap)
    key_pos, bar_pos = (first, second) if rng.random() < 0.5 else (second, first)
    key_color = tuple(int(c) for c in rng.integers(170, 256, 3))
    bar_color = tuple(int(c) for c in rng.integers(170, 256, 3))

    def box(pos: int) -> tuple[int, int, int, int]:
        if arrangement == 'horizontal':
            return pos, across, pos + s - 1, across + s - 1
        return across, pos, across + s - 1, pos + s - 1

    _draw_shape(draw, shape, box(key_pos), key_color)
    _draw_shape(mask_draw, shape, box(key_pos), 1)
    bx0, by0, bx1, by1 = box(bar_pos)
    thin = max(1, s // 4)  # the bar: a thin stroke across the middle of its cell, orientation random
    if rng.random() < 0.5:
        cy = (by0 + by1) // 2
        bar = (bx0, cy - thin // 2, bx1, cy + thin // 2)
    else:
        cx = (bx0 + bx1) // 2
        bar = (cx - thin // 2, by0, cx + thin // 2, by1)
    draw.rectangle(bar, fill=bar_color)
    mask_draw.rectangle(bar, fill=1)
    return np.asarray(img), np.asarray(mask)


def make_arrays(n: int, size: int = 32, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images with balanced labels, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    return np.stack([make_image(rng, int(y), size) for y in labels]), labels


def make_seg_arrays(n: int, size: int = 32, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The images of :func:`make_arrays` with their (n, size, size) binary masks (shape and bar = 1)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    pairs = [make_image_and_mask(rng, int(y), size) for y in labels]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def build_synthetic(img_size: int = 32, num_train: int | None = None, seed: int = DEFAULT_SEED,
                    ) -> tuple[ImageListDataset, ImageListDataset, DatasetInfo]:
    """``synthetic[:N]``: N (default 2,000) train and N // 4 (at least one per class) val images."""
    n_train = num_train or DEFAULT_TRAIN
    n_val = max(len(CLASSES), n_train // 4)
    x_train, y_train = make_arrays(n_train, img_size, seed)
    x_val, y_val = make_arrays(n_val, img_size, seed + 1)
    info = DatasetInfo(f'synthetic:{n_train}', list(CLASSES), n_train, n_val,
                       description=f'synthetic shapes x arrangement (6 classes), seed {seed}, {img_size}px')
    return ImageListDataset(x_train, y_train, CLASSES), ImageListDataset(x_val, y_val, CLASSES), info
