"""A bank of real grey-level textures, and ``textures-seg``: segmentation where only texture tells classes apart.

Texture bank (all bundled with scikit-image, read offline, no download):

* ``brick``: ``skimage.data.brick()``, a brick wall from CC0Textures (Bricks25), Creative Commons CC0.
* ``grass``: ``skimage.data.grass()``, grass from DeviantArt (linolafett, "Grass-01"), Creative Commons CC0.
* ``gravel``: ``skimage.data.gravel()``, gravel from CC0Textures (Gravel04), Creative Commons CC0.
* ``background``: a smooth "cloud" texture generated here (Gaussian-filtered white noise, fixed seed), no licence.

The photos are downscaled (30% of the 512 px originals, plus 25% and 37.5% for scale jitter) so that a 64 px crop
shows several bricks, blades or stones. Every bank image is then *histogram-matched* by rank to the same target, a
normal law of mean 0.5 and standard deviation 0.18 (clipped to [0, 1]): all textures share one grey-level histogram.
Crops are taken at uniform offsets on a mirrored tiling of the bank image, so every pixel is equally likely to be
drawn and the expected crop histogram is that shared one too.

``textures-seg`` (:func:`make_textures_seg`): each image is the background texture with 3 to 5 regions drawn over it
(discs, rotated ellipses, polygons and rectangles from :mod:`skimage.draw`, the ``skimage.data.horse()`` silhouette,
also CC0 from openclipart, and ``skimage.data.binary_blobs``); later regions cover earlier ones. Each region gets a
random foreground class. The label map painted this way is the mask, so it is exact; then each connected part of
each class (background included) is filled with its own random crop (offset, scale, rotation by a multiple of 90
degrees, flip) of the class texture. About 53% of the pixels are background and 15-16% each foreground class.

Why a per-pixel colour statistic cannot tell classes apart: every texture has the same grey-level histogram, and
the photometric jitter (a brightness/contrast change per region, then a brightness/contrast/RGB tint and pixel
noise per image) is drawn from the same distribution whatever the class, background included. So the distribution
of a pixel's colour is the same for every class; only its neighbourhood (the texture) differs. The tests check it:
class mean grey levels agree within 2% (once each image's mean is removed), and a per-pixel colour classifier
(Gaussian naive Bayes on RGB) is at chance, 25% balanced accuracy, while the same classifier on two local texture
features (gradient energy and roughness over 7x7 px) gets 45-50%. A small FPN-style CNN trained from scratch on the
default splits reached 75% val mIoU after one CPU minute and 85% after three (one run, one thread).
"""
from __future__ import annotations

import functools
import types
from collections.abc import Mapping

import numpy as np
import skimage.data
import skimage.draw
import skimage.transform
from scipy import ndimage as ndi
from scipy.special import ndtri

from ..errors import DataError

__all__ = ['TEXTURE_CLASSES', 'TEXTURE_SCALES', 'check_count', 'make_rng', 'make_textures_seg', 'random_texture_crop',
           'texture_bank', 'textures_seg_splits']

TEXTURE_CLASSES = ('background', 'brick', 'grass', 'gravel')
TEXTURE_SCALES = (0.25, 0.3, 0.375)  # downscale of the 512 px photos; 0.3 shows the pattern well in 64 px
DEFAULT_TRAIN = 600
MIN_SIZE = 16
_PHOTOS = {'brick': skimage.data.brick, 'grass': skimage.data.grass, 'gravel': skimage.data.gravel}
_TARGET_STD = 0.18  # grey-level spread of every bank image (a normal histogram, clipped to [0, 1])
_CLOUD_SIGMA = 2.5  # px at scale 0.3: smooth blotches, no fine structure, unlike the three photos


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum``, else a one-line :class:`DataError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def make_rng(seed: int | list[int]) -> np.random.Generator:
    """``numpy.random.default_rng(seed)``, with a one-line :class:`DataError` for a seed it refuses."""
    if isinstance(seed, bool):
        raise DataError(f'seed must be a non-negative integer or a list of them, got {seed!r}')
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise DataError(f'seed must be a non-negative integer or a list of them, got {seed!r}') from None


def _equalise(img: np.ndarray) -> np.ndarray:
    """Map grey levels to :data:`_TARGET_STD` normal quantiles about 0.5 (ties broken by position, deterministic)."""
    ranks = np.argsort(np.argsort(img, axis=None, kind='stable'), kind='stable')
    out = np.clip(0.5 + _TARGET_STD * ndtri((ranks + 0.5) / ranks.size), 0.0, 1.0).astype(np.float32)
    out = out.reshape(img.shape)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=1)
def texture_bank() -> Mapping[str, tuple[np.ndarray, ...]]:
    """The texture bank: name -> one read-only float32 image in [0, 1] per scale of :data:`TEXTURE_SCALES`.

    Keys are :data:`TEXTURE_CLASSES` in order. All images have the same grey-level histogram (mean 0.5).
    """
    bank: dict[str, tuple[np.ndarray, ...]] = {}
    noise = np.random.default_rng(12345).normal(size=(256, 256))
    bank['background'] = tuple(_equalise(ndi.gaussian_filter(noise, _CLOUD_SIGMA * s / 0.3, mode='wrap'))
                               for s in TEXTURE_SCALES)
    for name, load in _PHOTOS.items():
        photo = load().astype(np.float32) / 255.0
        bank[name] = tuple(_equalise(skimage.transform.rescale(photo, s, anti_aliasing=True)) for s in TEXTURE_SCALES)
    return types.MappingProxyType(bank)


@functools.lru_cache(maxsize=16)
def _mirror_tile(name: str, scale: int) -> np.ndarray:
    """Bank image and its three mirror images as a 2x2 tile: periodic, with continuous seams.

    Crops at uniform offsets on this torus cover every pixel of the bank image equally often, so the expected mean
    of a crop is the bank mean (0.5) for every texture, whatever its large-scale structure.
    """
    tex = texture_bank()[name][scale]
    out = np.block([[tex, tex[:, ::-1]], [tex[::-1], tex[::-1, ::-1]]])
    out.flags.writeable = False
    return out


def random_texture_crop(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``(size, size)`` float32 crop of texture ``name``: random scale, offset, rot90 and flip.

    Args:
        name: A key of :func:`texture_bank`.
        size: Side of the crop in pixels (any size: the bank image tiles by mirroring).
        rng: The generator every random choice is drawn from.

    Returns:
        A new float32 array in [0, 1].
    """
    if name not in TEXTURE_CLASSES:
        raise DataError(f'unknown texture {name!r}; known: {", ".join(TEXTURE_CLASSES)}')
    tex = _mirror_tile(name, int(rng.integers(len(TEXTURE_SCALES))))
    rows = (rng.integers(tex.shape[0]) + np.arange(size)) % tex.shape[0]
    cols = (rng.integers(tex.shape[1]) + np.arange(size)) % tex.shape[1]
    crop = np.rot90(tex[np.ix_(rows, cols)], k=int(rng.integers(4)))
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


@functools.lru_cache(maxsize=1)
def _horse() -> np.ndarray:
    """The horse silhouette (True on the horse), cropped to its extent."""
    horse = ~skimage.data.horse()  # the bundled image is True on the background
    rows, cols = np.flatnonzero(horse.any(1)), np.flatnonzero(horse.any(0))
    out = horse[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    out.flags.writeable = False
    return out


def _place_horse(size: int, rng: np.random.Generator) -> np.ndarray:
    """The horse scaled to 45-80% of the image width (nearest neighbour), maybe mirrored, at a random place."""
    horse = _horse()
    w = max(4, int(size * rng.uniform(0.45, 0.8)))
    h = max(4, int(round(w * horse.shape[0] / horse.shape[1])))
    small = horse[np.arange(h) * horse.shape[0] // h][:, np.arange(w) * horse.shape[1] // w]
    if rng.random() < 0.5:
        small = small[:, ::-1]
    out = np.zeros((size, size), bool)
    r0, c0 = int(rng.integers(-h // 4, size - 3 * h // 4)), int(rng.integers(-w // 4, size - 3 * w // 4))
    rs, cs = slice(max(r0, 0), min(r0 + h, size)), slice(max(c0, 0), min(c0 + w, size))
    out[rs, cs] = small[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]
    return out


def _polygon(size: int, rng: np.random.Generator, center: np.ndarray, radius: float) -> tuple:
    """Pixel coordinates of a random convex-ish polygon with 3 to 6 jittered vertices."""
    k = int(rng.integers(3, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi / k, k) * 0.5 + np.arange(k) * 2 * np.pi / k + rng.uniform(0, np.pi))
    radii = radius * rng.uniform(0.75, 1.15, k)
    return skimage.draw.polygon(center[0] + radii * np.sin(angles), center[1] + radii * np.cos(angles), (size, size))


def _random_region(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random bool region of a ``size`` x ``size`` image, typically 5-35% of it (several hundred px at 64 px).

    Shapes: disc, rotated ellipse, polygon, rectangle, the horse silhouette or a few binary blobs.
    """
    kind = rng.choice(('disc', 'ellipse', 'polygon', 'rectangle', 'horse', 'blobs'))
    if kind == 'horse':
        return _place_horse(size, rng)
    if kind == 'blobs':
        return skimage.data.binary_blobs(size, blob_size_fraction=rng.uniform(0.3, 0.45),
                                         volume_fraction=rng.uniform(0.2, 0.35), rng=rng)
    mask = np.zeros((size, size), bool)
    center, radius = rng.uniform(0.15, 0.85, 2) * size, size * rng.uniform(0.14, 0.3)
    if kind == 'disc':
        rr, cc = skimage.draw.disk(center, radius, shape=mask.shape)
    elif kind == 'ellipse':
        axes = radius * rng.uniform(1.0, 1.4), radius * rng.uniform(0.45, 0.8)
        rr, cc = skimage.draw.ellipse(*center, *axes, shape=mask.shape, rotation=rng.uniform(-np.pi, np.pi))
    elif kind == 'polygon':
        rr, cc = _polygon(size, rng, center, radius * 1.2)
    else:
        half = radius * rng.uniform(0.6, 1.3, 2)
        rr, cc = skimage.draw.rectangle(np.maximum(center - half, 0), end=np.minimum(center + half, size - 1),
                                        shape=mask.shape)
        rr, cc = rr.astype(int), cc.astype(int)
    mask[rr, cc] = True
    return mask


def _jitter(values: np.ndarray, rng: np.random.Generator, contrast: tuple[float, float],
            offset: float) -> np.ndarray:
    """``values`` with a random contrast (about 0.5) and brightness offset, the same law for every class."""
    return 0.5 + (values - 0.5) * rng.uniform(*contrast) + rng.uniform(-offset, offset)


def _photometric(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image-wide brightness, contrast, RGB tint and pixel noise: grey float (H, W) -> uint8 RGB (H, W, 3)."""
    gray = _jitter(gray, rng, (0.55, 1.0), 0.12)
    noise = rng.standard_normal(gray.shape + (3,), np.float32) * np.float32(0.02)
    rgb = gray[..., None] * rng.uniform(0.8, 1.2, 3).astype(np.float32) + noise
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def _textures_seg_one(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image and its label map (see the module docstring)."""
    labels = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(3, 6))):
        labels[_random_region(size, rng)] = rng.integers(1, len(TEXTURE_CLASSES))
    gray = np.empty((size, size), np.float32)
    # Every painted region, background included, gets its own crop and the same jitter law.
    for cls in np.unique(labels):
        region = labels == cls
        for part in _components(region):
            gray[part] = _jitter(random_texture_crop(TEXTURE_CLASSES[cls], size, rng)[part], rng, (0.85, 1.15), 0.06)
    return _photometric(gray, rng), labels


def _components(region: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a bool region (each region of one class is filled independently)."""
    lab, n = ndi.label(region, structure=np.ones((3, 3), bool))
    return [lab == i for i in range(1, n + 1)]


def make_textures_seg(n: int, size: int = 64, seed: int | list[int] = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` deterministic ``textures-seg`` images with exact semantic masks (see the module docstring).

    Args:
        n: Number of images, >= 1.
        size: Image side in pixels, >= 16. The texture scale is fixed in pixels, so larger images show more of it.
        seed: Seed of ``numpy.random.default_rng``; the same seed gives identical arrays.

    Returns:
        ``images`` uint8 ``(n, size, size, 3)`` and ``masks`` uint8 ``(n, size, size)`` holding indices into
        :data:`TEXTURE_CLASSES` (0 = background).
    """
    n, size = check_count('n', n), check_count('size', size, MIN_SIZE)
    rng = make_rng(seed)
    images, masks = np.empty((n, size, size, 3), np.uint8), np.empty((n, size, size), np.uint8)
    for i in range(n):
        images[i], masks[i] = _textures_seg_one(size, rng)
    return images, masks


def textures_seg_splits(num_train: int | None = None, size: int = 64,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and val splits of ``textures-seg``, drawn from different random streams of one seed.

    Args:
        num_train: Train images (default 600); val has ``max(2, num_train // 4)``.
        size: Image side in pixels.
        seed: Base seed; train uses ``default_rng([seed, 0])`` and val ``default_rng([seed, 1])``.

    Returns:
        ``(train_images, train_masks, val_images, val_masks)``. Both splits crop the same texture photos (at random
        places), so val measures generalisation to new layouts and crops, not to unseen photos.
    """
    num_train = DEFAULT_TRAIN if num_train is None else check_count('num_train', num_train)
    check_count('seed', seed, 0)
    train = make_textures_seg(num_train, size, [seed, 0])
    val = make_textures_seg(max(2, num_train // 4), size, [seed, 1])
    return train[0], train[1], val[0], val[1]
