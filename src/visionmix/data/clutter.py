"""``cluttered-digits``: real handwritten digits at random scales over real texture clutter, 10 classes.

A harder companion to ``digits`` for comparing architectures: each image is one of scikit-learn's bundled 8x8
handwritten digits (1,797 real images, offline), bilinear-upscaled to a random height of 80-100% of the canvas and
width 0.8-1.15 times that, placed at the centre (``jitter``: within a share of the side of it, or anywhere), bright on
a dark background that carries a random crop of the texture bank of :mod:`visionmix.data.textures` (brick, grass,
gravel photos, CC0, and a smooth generated texture), with fragments of other digits as distractors, a random
contrast and pixel noise. Images are grey, stored as RGB.

The ``clutter`` knob in [0, 1] scales everything that makes it hard: the texture's contrast, the number of distractor
fragments (Poisson, mean ``4 * clutter``), the noise, and how faint the digit may be. ``clutter=0`` is a clean digit
on a flat background.

Honest validation: :func:`cluttered_digits_splits` first splits the 1,797 source digits 80/20 (stratified,
``random_state=0``, the split of the ``digits`` dataset) and renders train images only from train digits, val images
only from val digits (distractor fragments included). Classes are balanced (``n // 10`` or ``n // 10 + 1`` images
each), so a constant prediction scores about 10%.

Calibration (for ``visionmix study spach``: SPACH's patch-stem models, no BatchNorm, trained for a few CPU minutes).
An earlier version drew the digit at 25-62% of the canvas, with a random polarity (dark on light or light on dark)
on a mid-grey background and an image-wide random RGB tint. There, at 48 px, the single-stage patch-8 SPACH models
stayed at chance (~10%) after 8 epochs of 2,000 images (a 3-stage SPACH conv too, with the digit anywhere or within
+-10% of the side of the centre, which is why the digit is centred by default), and even a clean (``clutter=0``),
centred, fixed-polarity digit at 95% of the canvas was hardly learnt by the conv single-stage model while the random
tint was on (3 epochs of 1,000 images, plain AdamW at 1e-3: 13% val top-1 with the tint, 35% without it, 83% on
plain ``digits``). Each nuisance (tint, polarity, a grey background, small digits) slowed these models' first few
hundred steps a lot. Plain ``digits`` saturates (98% val top-1 after 6 epochs for several study models), so it
cannot rank them. The present defaults (large, bright, centred digits on dark clutter, no tint, ``clutter=0.25``)
sit in between: with 1,000 images, 5 epochs, one seed, the ten study models reached 46-89% val top-1 (single-stage
46-79%, multi-stage 76-89%).
"""
from __future__ import annotations

import functools

import numpy as np

from ..errors import DataError
from .textures import TEXTURE_CLASSES, check_count, make_rng, random_texture_crop

__all__ = ['DEFAULT_CLUTTER', 'DEFAULT_JITTER', 'DIGIT_CLASSES', 'cluttered_digits_splits', 'digit_source_split',
           'make_cluttered_digits']

DIGIT_CLASSES = tuple('0123456789')
DEFAULT_CLUTTER = 0.25
DEFAULT_JITTER = 0.0  # the digit's centre is the canvas centre: see "Calibration" above
DEFAULT_TRAIN = 2000
MIN_SIZE = 16
SUBSETS = ('all', 'train', 'val')
_SCALE = (0.8, 1.0)  # digit height as a fraction of the canvas (its width is 0.8-1.15 times that, at most the side)
_BACKGROUND = 0.1  # grey level of the canvas the texture varies around; digits and fragments are brighter


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 ``(1797, 8, 8)`` ink in [0, 1] and int64 labels (read-only)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink, labels = (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)
    ink.flags.writeable = labels.flags.writeable = False
    return ink, labels


@functools.lru_cache(maxsize=1)
def digit_source_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the 1,797 source digits for train and val: 80/20 stratified, ``random_state=0`` (sorted, disjoint).

    It is the split of the ``digits`` dataset, so the same handwriting is held out in both.
    """
    from sklearn.model_selection import train_test_split

    labels = _digits()[1]
    train, val = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    train, val = np.sort(train), np.sort(val)
    train.flags.writeable = val.flags.writeable = False
    return train, val


@functools.lru_cache(maxsize=256)
def _interp(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` bilinear resampling matrix (pixel centres aligned, edges clamped)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.minimum(pos.astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    frac = pos - lo
    out = np.zeros((n_out, n_in), np.float32)
    out[np.arange(n_out), lo] = 1 - frac
    if n_in > 1:
        out[np.arange(n_out), lo + 1] = frac
    out.flags.writeable = False
    return out


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a small 2-D array with two matrix products (fast for 8x8 sources)."""
    return _interp(height, img.shape[0]) @ img @ _interp(width, img.shape[1]).T


def _paste(canvas: np.ndarray, ink: np.ndarray, value: float, rng: np.random.Generator, inside: bool,
           jitter: float | None = None) -> None:
    """Blend ``ink`` (alpha in [0, 1]) of grey ``value`` into ``canvas`` at a random place.

    ``inside`` keeps it whole inside the canvas; otherwise it may be cut by the border. ``jitter`` (with ``inside``)
    puts its centre within ``jitter * size`` of the canvas centre instead of anywhere.
    """
    size, (h, w) = canvas.shape[0], ink.shape
    if inside and jitter is not None:
        r0, c0 = ((size - n) / 2 + rng.uniform(-jitter, jitter) * size for n in (h, w))
        r0, c0 = int(np.clip(round(r0), 0, size - h)), int(np.clip(round(c0), 0, size - w))
    elif inside:
        r0, c0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    else:
        r0, c0 = int(rng.integers(-h // 2, size - h // 2)), int(rng.integers(-w // 2, size - w // 2))
    rs, cs = slice(max(r0, 0), min(r0 + h, size)), slice(max(c0, 0), min(c0 + w, size))
    alpha = ink[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]
    canvas[rs, cs] = canvas[rs, cs] * (1 - alpha) + value * alpha


def _digit_value(clutter: float, rng: np.random.Generator) -> float:
    """Grey level of a digit or fragment: brighter than the background by 0.85 down to 0.8 - 0.3 * clutter."""
    return _BACKGROUND + rng.uniform(0.8 - 0.3 * clutter, 0.85)


def _render(ink: np.ndarray, pool: np.ndarray, size: int, clutter: float, rng: np.random.Generator,
            jitter: float | None) -> np.ndarray:
    """One image of the digit ``ink`` (8x8 in [0, 1]); distractor fragments come from source digits ``pool``."""
    texture = random_texture_crop(TEXTURE_CLASSES[int(rng.integers(len(TEXTURE_CLASSES)))], size, rng)
    canvas = _BACKGROUND + (texture - 0.5) * clutter * rng.uniform(0.6, 1.2)
    all_ink = _digits()[0]
    for _ in range(int(rng.poisson(4 * clutter))):
        # A fragment: a 3-5 x 3-5 window of another digit (too little to read as one), maybe cut by the border.
        h, w = rng.integers(3, 6, 2)
        r0, c0 = rng.integers(0, 9 - h), rng.integers(0, 9 - w)
        frag = all_ink[rng.choice(pool)][r0:r0 + h, c0:c0 + w]
        scale = size * rng.uniform(*_SCALE) / 8
        _paste(canvas, _resize(frag, max(2, round(h * scale)), max(2, round(w * scale))),
               _digit_value(clutter, rng), rng, inside=False)
    height = int(round(size * rng.uniform(*_SCALE)))
    width = min(size, int(round(height * rng.uniform(0.8, 1.15))))
    _paste(canvas, _resize(ink, height, width), _digit_value(clutter, rng), rng, inside=True, jitter=jitter)
    canvas += rng.standard_normal(canvas.shape, np.float32) * np.float32(0.01 + 0.05 * clutter)
    rgb = np.repeat(canvas[..., None], 3, axis=-1)  # grey, as RGB
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def make_cluttered_digits(n: int, size: int = 64, seed: int | list[int] = 0, clutter: float = DEFAULT_CLUTTER,
                          subset: str = 'all', return_source: bool = False,
                          jitter: float | None = DEFAULT_JITTER) -> tuple[np.ndarray, ...]:
    """``n`` deterministic cluttered-digit images with balanced labels (see the module docstring).

    Args:
        n: Number of images, >= 1.
        size: Canvas side in pixels, >= 16.
        seed: Seed of ``numpy.random.default_rng``; the same seed gives identical arrays.
        clutter: Difficulty in [0, 1]; 0 is a clean digit on a flat background.
        subset: Source digits to draw from: ``'all'`` 1,797, or ``'train'`` / ``'val'`` of
            :func:`digit_source_split`.
        return_source: Also return the index (into scikit-learn's digits) of each image's digit.
        jitter: Largest offset of the digit's centre from the canvas centre, as a share of the side (0: centred);
            None places it anywhere inside the canvas.

    Returns:
        ``(images, labels)``: uint8 ``(n, size, size, 3)`` and int64 ``(n,)`` in 0..9; plus ``source`` int64
        ``(n,)`` when ``return_source``.
    """
    n, size = check_count('n', n), check_count('size', size, MIN_SIZE)
    if isinstance(clutter, bool) or not isinstance(clutter, (int, float, np.number)) or not 0.0 <= clutter <= 1.0:
        raise DataError(f'clutter must be in [0, 1], got {clutter!r}')
    if jitter is not None and (isinstance(jitter, bool) or not isinstance(jitter, (int, float, np.number))
                               or not 0.0 <= jitter <= 0.5):
        raise DataError(f'jitter must be in [0, 0.5] or None, got {jitter!r}')
    if subset not in SUBSETS:
        raise DataError(f'unknown digit subset {subset!r}; use one of {", ".join(SUBSETS)}')
    ink, source_labels = _digits()
    pool = np.arange(len(source_labels)) if subset == 'all' else digit_source_split()[SUBSETS.index(subset) - 1]
    rng = make_rng(seed)
    labels = rng.permutation(np.arange(n) % len(DIGIT_CLASSES)).astype(np.int64)
    by_class = [pool[source_labels[pool] == c] for c in range(len(DIGIT_CLASSES))]
    source = np.array([rng.choice(by_class[c]) for c in labels], np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, src in enumerate(source):
        images[i] = _render(ink[src], pool, size, float(clutter), rng, jitter)
    return (images, labels, source) if return_source else (images, labels)


def cluttered_digits_splits(num_train: int | None = None, size: int = 64, seed: int = 0,
                            clutter: float = DEFAULT_CLUTTER, jitter: float | None = DEFAULT_JITTER,
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and val cluttered digits rendered from disjoint source digits (:func:`digit_source_split`).

    Args:
        num_train: Train images (default 2,000); val has ``max(2, num_train // 4)`` (500 by default).
        size: Canvas side in pixels.
        seed: Base seed; train uses ``default_rng([seed, 0])`` and val ``default_rng([seed, 1])``.
        clutter: Difficulty in [0, 1].
        jitter: Placement of the digit (see :func:`make_cluttered_digits`).

    Returns:
        ``(train_images, train_labels, val_images, val_labels)``.
    """
    num_train = DEFAULT_TRAIN if num_train is None else check_count('num_train', num_train)
    check_count('seed', seed, 0)
    train = make_cluttered_digits(num_train, size, [seed, 0], clutter, 'train', jitter=jitter)
    val = make_cluttered_digits(max(2, num_train // 4), size, [seed, 1], clutter, 'val', jitter=jitter)
    return train[0], train[1], val[0], val[1]
