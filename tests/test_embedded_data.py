"""Embedded generated datasets: textures-seg, shapes-inst, coins and cluttered digits (deterministic, offline)."""
import numpy as np
import pytest
from scipy import ndimage as ndi
from sklearn.metrics import balanced_accuracy_score
from sklearn.naive_bayes import GaussianNB

from visionmix.data.clutter import cluttered_digits_splits, digit_source_split, make_cluttered_digits
from visionmix.data.instances import (MIN_AREA, SHAPE_CLASSES, check_instances, coins_instances, make_shapes_instances,
                                      mask_boxes, visible_masks)
from visionmix.data.textures import (TEXTURE_CLASSES, make_textures_seg, random_texture_crop, texture_bank,
                                     textures_seg_splits)
from visionmix.errors import DataError


@pytest.fixture(scope='module')
def seg():
    return make_textures_seg(120, seed=7)


@pytest.fixture(scope='module')
def inst():
    return make_shapes_instances(60, size=96, seed=3)


# ---- textures-seg ----

def test_textures_seg_is_deterministic_with_shapes_and_dtypes():
    images, masks = make_textures_seg(4, size=48, seed=1)
    again, other = make_textures_seg(4, size=48, seed=1), make_textures_seg(4, size=48, seed=2)
    assert images.shape == (4, 48, 48, 3) and images.dtype == np.uint8
    assert masks.shape == (4, 48, 48) and masks.dtype == np.uint8
    assert np.array_equal(images, again[0]) and np.array_equal(masks, again[1])
    assert not np.array_equal(images, other[0]) and not np.array_equal(masks, other[1])


def test_textures_seg_masks_cover_all_classes_with_sizable_regions(seg):
    _, masks = seg
    assert TEXTURE_CLASSES[0] == 'background' and len(TEXTURE_CLASSES) >= 4
    counts = np.bincount(masks.ravel(), minlength=len(TEXTURE_CLASSES))
    assert len(counts) == len(TEXTURE_CLASSES) and (counts / counts.sum() > 0.1).all()
    per_image = [len(np.unique(m)) for m in masks[:8]]
    assert min(per_image) >= 2 and len(np.unique(masks[:8])) == len(TEXTURE_CLASSES)
    # Foreground regions are several hundred pixels on average, not specks.
    areas = [np.bincount(ndi.label(m == c)[0].ravel())[1:] for m in masks for c in range(1, len(TEXTURE_CLASSES))]
    assert np.mean(np.concatenate(areas)) > 200


def test_textures_seg_masks_are_exact_regions_of_their_texture(monkeypatch):
    # Replace each texture by a constant (its class index): the image then shows the mask, pixel for pixel.
    import visionmix.data.textures as tx

    monkeypatch.setattr(tx, 'random_texture_crop', lambda name, size, rng: np.full(
        (size, size), TEXTURE_CLASSES.index(name), np.float32))
    monkeypatch.setattr(tx, '_jitter', lambda values, rng, contrast, offset: values)
    monkeypatch.setattr(tx, '_photometric', lambda gray, rng: np.repeat(gray[..., None], 3, -1))
    for size in (40, 64):
        for seed in range(3):
            images, masks = make_textures_seg(3, size=size, seed=seed)
            assert np.array_equal(images[..., 0], masks)


def test_textures_seg_classes_share_colour_statistics_but_not_texture(seg):
    # Class mean and spread of the grey level, after removing each image's mean (the image-wide jitter is the same
    # for all classes by design, but with few images it leaves class means apart by chance).
    many, many_masks = make_textures_seg(400, size=48, seed=11)
    grey = many.astype(np.float32).mean(-1)
    centred = grey - grey.mean((1, 2), keepdims=True)
    means = np.array([centred[many_masks == c].mean() for c in range(len(TEXTURE_CLASSES))])
    stds = np.array([grey[many_masks == c].std() for c in range(len(TEXTURE_CLASSES))])
    assert np.ptp(means) < 0.02 * grey.mean() and np.ptp(stds) < 0.03 * stds.mean()
    images, masks = seg
    train, test = slice(0, 60), slice(60, 120)
    y, y_test = masks[train].ravel(), masks[test].ravel()
    colour = GaussianNB().fit(images[train].reshape(-1, 3).astype(float), y)
    colour_acc = balanced_accuracy_score(y_test, colour.predict(images[test].reshape(-1, 3).astype(float)))

    def texture_features(batch):
        # Local gradient energy and local roughness of the image-normalised grey level.
        out = []
        for img in batch:
            g = img.astype(np.float32).mean(-1)
            g = (g - g.mean()) / (g.std() + 1e-6)
            grad = np.hypot(ndi.sobel(g, 0), ndi.sobel(g, 1))
            rough = np.abs(g - ndi.uniform_filter(g, 3))
            out.append(np.stack([ndi.uniform_filter(grad, 7), ndi.uniform_filter(rough, 7)], -1).reshape(-1, 2))
        return np.concatenate(out)

    texture = GaussianNB().fit(texture_features(images[train]), y)
    texture_acc = balanced_accuracy_score(y_test, texture.predict(texture_features(images[test])))
    chance = 1 / len(TEXTURE_CLASSES)
    assert colour_acc < chance + 0.05 and texture_acc > chance + 0.15


def test_texture_bank_is_shared_histogram_and_cached():
    bank = texture_bank()
    assert tuple(bank) == TEXTURE_CLASSES and texture_bank() is bank
    for images in bank.values():
        for tex in images:
            assert tex.dtype == np.float32 and min(tex.shape) >= 64 and not tex.flags.writeable
            assert abs(tex.mean() - 0.5) < 0.005 and abs(tex.std() - 0.18) < 0.01
    crop = random_texture_crop('brick', 300, np.random.default_rng(0))  # larger than the bank image: tiles
    assert crop.shape == (300, 300) and crop.flags.writeable
    with pytest.raises(DataError, match='unknown texture'):
        random_texture_crop('marble', 8, np.random.default_rng(0))


def test_textures_seg_splits_defaults_and_errors():
    tr_img, tr_mask, va_img, va_mask = textures_seg_splits(8, size=32, seed=0)
    assert tr_img.shape == (8, 32, 32, 3) and va_img.shape == (2, 32, 32, 3) and va_mask.shape == (2, 32, 32)
    assert not np.array_equal(tr_img[:2], va_img)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match='n must be an integer'):
            make_textures_seg(bad)
    with pytest.raises(DataError, match='size must be'):
        make_textures_seg(2, size=8)
    with pytest.raises(DataError, match='num_train'):
        textures_seg_splits(0)
    for bad_seed in (-1, 'a', True):
        with pytest.raises(DataError, match='seed'):
            textures_seg_splits(4, seed=bad_seed)


# ---- shapes-inst ----

def test_shapes_instances_deterministic_layout_and_consistent(inst):
    again = make_shapes_instances(60, size=96, seed=3)
    other = make_shapes_instances(5, size=96, seed=4)
    for a, b in zip(inst, again):
        assert all(np.array_equal(a[k], b[k]) for k in ('image', 'masks', 'boxes', 'labels'))
    assert not np.array_equal(inst[0]['image'], other[0]['image'])
    for s in inst:
        check_instances(s)
        k = len(s['labels'])
        assert s['image'].shape == (96, 96, 3) and s['image'].dtype == np.uint8
        assert s['masks'].shape == (k, 96, 96) and s['masks'].dtype == bool
        assert s['boxes'].shape == (k, 4) and s['boxes'].dtype == np.float32 and s['labels'].dtype == np.int64
        assert s['classes'] == list(SHAPE_CLASSES)
        assert ((s['labels'] >= 1) & (s['labels'] <= len(SHAPE_CLASSES))).all()
        assert (s['masks'].sum(0) <= 1).all()  # a pixel is in at most one instance
        assert (s['masks'].sum((1, 2)) >= MIN_AREA).all()
    labels = np.concatenate([s['labels'] for s in inst])
    assert set(labels.tolist()) == set(range(1, len(SHAPE_CLASSES) + 1))
    assert any(len(s['labels']) >= 4 for s in inst)


def test_shapes_instances_allow_empty_images():
    samples = make_shapes_instances(80, size=32, seed=0)
    empty = [s for s in samples if len(s['labels']) == 0]
    assert empty and all(s['masks'].shape == (0, 32, 32) and s['boxes'].shape == (0, 4) for s in empty)
    for s in empty:
        check_instances(s)


def test_boxes_are_coco_style_mask_extent():
    mask = np.zeros((1, 10, 12), bool)
    mask[0, 5, 3] = True
    assert mask_boxes(mask).tolist() == [[3, 5, 4, 6]]
    mask[0, 7, 8] = True
    assert mask_boxes(mask).tolist() == [[3, 5, 9, 8]]


def test_later_shape_occludes_and_tiny_remnants_are_dropped():
    yy, xx = np.mgrid[:40, :40]
    first = (yy - 20) ** 2 + (xx - 14) ** 2 < 100
    second = (yy - 20) ** 2 + (xx - 24) ** 2 < 100
    label_map, kept = visible_masks([first, second])
    assert kept == [0, 1] and (label_map[second] == 2).all()
    assert np.array_equal(label_map == 1, first & ~second)
    # A shape covered but for a sliver is dropped and its pixels go to what lies under it.
    sliver = first | ((yy == 0) & (xx < 5))
    label_map, kept = visible_masks([second, sliver, first], min_area=10)
    assert kept == [0, 2] and not (label_map[0, :5]).any() and (label_map[first] == 2).all()


def test_check_instances_catches_corrupted_samples(inst):
    sample = next(s for s in inst if len(s['labels']) >= 2)

    def corrupt(**changes):
        bad = dict(sample, **changes)
        with pytest.raises(DataError):
            check_instances(bad)

    corrupt(boxes=sample['boxes'][:-1])
    corrupt(labels=sample['labels'][:-1])
    corrupt(masks=sample['masks'][:-1])
    corrupt(boxes=sample['boxes'] + np.float32(1))
    corrupt(labels=np.zeros_like(sample['labels']))
    corrupt(labels=sample['labels'] + len(SHAPE_CLASSES))
    emptied = sample['masks'].copy()
    emptied[0] = False
    corrupt(masks=emptied)
    corrupt(image=sample['image'][..., 0])
    with pytest.raises(DataError, match='misses'):
        check_instances({k: v for k, v in sample.items() if k != 'boxes'})


def test_coins_pseudo_ground_truth_has_24_coins():
    sample = coins_instances()
    check_instances(sample)
    assert len(sample['labels']) == 24 and sample['classes'] == ['coin'] and (sample['labels'] == 1).all()
    assert sample['image'].shape == (303, 384, 3) and sample['image'].dtype == np.uint8
    areas = sample['masks'].sum((1, 2))
    assert areas.min() > 500  # coins, not specks


# ---- cluttered digits ----

def test_cluttered_digits_deterministic_balanced_and_typed():
    images, labels = make_cluttered_digits(50, size=40, seed=1)
    again, other = make_cluttered_digits(50, size=40, seed=1), make_cluttered_digits(50, size=40, seed=2)
    assert images.shape == (50, 40, 40, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
    assert not np.array_equal(images, other[0])
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    constant = np.bincount(labels).max() / len(labels)
    assert constant == pytest.approx(0.1)


def test_cluttered_digits_train_and_val_use_disjoint_source_digits():
    train_idx, val_idx = digit_source_split()
    assert (len(train_idx), len(val_idx)) == (1437, 360) and not set(train_idx) & set(val_idx)
    _, tr_labels, tr_src = make_cluttered_digits(300, size=32, seed=0, subset='train', return_source=True)
    _, va_labels, va_src = make_cluttered_digits(300, size=32, seed=0, subset='val', return_source=True)
    assert set(tr_src) <= set(train_idx) and set(va_src) <= set(val_idx)
    from sklearn.datasets import load_digits
    target = load_digits().target
    assert np.array_equal(target[tr_src], tr_labels) and np.array_equal(target[va_src], va_labels)
    tr_img, tr_lab, va_img, va_lab = cluttered_digits_splits(20, size=32)
    assert tr_img.shape == (20, 32, 32, 3) and va_img.shape == (5, 32, 32, 3) and len(va_lab) == 5


def test_cluttered_digits_clutter_knob_and_errors():
    clean, _ = make_cluttered_digits(20, size=32, seed=0, clutter=0.0)
    busy, _ = make_cluttered_digits(20, size=32, seed=0, clutter=1.0)
    # Clean: a digit on a flat background; cluttered: texture, fragments and noise everywhere.
    assert np.median(clean.std((1, 2)).mean(-1)) < np.median(busy.std((1, 2)).mean(-1))
    for kwargs, match in (({'clutter': 1.5}, 'clutter'), ({'subset': 'test'}, 'subset'), ({'n': 0}, 'n must')):
        with pytest.raises(DataError, match=match):
            make_cluttered_digits(**{'n': 2, **kwargs})
