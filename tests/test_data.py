"""Datasets: the embedded digits and synthetic sets, ImageFolder trees, and one-line errors for bad data."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionmix.cli import main
from visionmix.data import DataError, build_datasets, parse_spec


def test_digits_split_is_fixed_stratified_and_rgb():
    train, val, info = build_datasets('digits', img_size=16)
    assert (info.num_train, info.num_val) == (1437, 360) and info.classes == [str(i) for i in range(10)]
    img = train.load(0)
    assert img.mode == 'RGB' and img.size == (16, 16)
    assert np.bincount(val.targets).min() >= 35  # stratified: every class in val
    again, _, _ = build_datasets('digits', img_size=16)
    assert np.array_equal(train.images, again.images) and train.targets == again.targets


def test_limit_keeps_a_fixed_subset():
    a, _, info = build_datasets('digits', img_size=16, limit=100)
    b, _, _ = build_datasets('digits', img_size=16, limit=100)
    assert len(a) == info.num_train == 100 and a.targets == b.targets


def test_synthetic_is_deterministic_and_balanced():
    a, va, info = build_datasets('synthetic:60', img_size=32)
    b, _, _ = build_datasets('synthetic:60', img_size=32)
    assert info.num_classes == 6 and len(a) == 60 and len(va) == 15
    assert np.array_equal(a.images, b.images)
    assert np.bincount(a.targets).tolist() == [10] * 6


def _tree(root: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for split, classes in (('train', train), ('val', val)):
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f'{i}.png')
    return root


def test_folder_dataset(tmp_path):
    _tree(tmp_path, {'cat': 3, 'dog': 2}, {'cat': 1, 'dog': 1})
    train, val, info = build_datasets(f'folder:{tmp_path}')
    assert info.classes == ['cat', 'dog'] and len(train) == 5 and len(val) == 2
    assert train.load(0).size == (12, 12) and train.targets == [0, 0, 0, 1, 1]


def test_corrupt_image_named_or_skipped(tmp_path):
    _tree(tmp_path, {'a': 2, 'b': 2}, {'a': 1, 'b': 1})
    bad = tmp_path / 'train' / 'b' / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    with pytest.raises(DataError, match='broken.png'):
        build_datasets(f'folder:{tmp_path}')
    train, _, info = build_datasets(f'folder:{tmp_path}', skip_corrupt=True)
    assert len(train) == 4 and len(info.skipped) == 1 and info.skipped[0].endswith('broken.png')


@pytest.mark.parametrize('layout, message', [
    (dict(train={'a': 1, 'b': 0}, val={'a': 1, 'b': 1}), 'has no images'),
    (dict(train={'a': 1, 'b': 1}, val={'a': 1, 'c': 1}), 'class mismatch'),
])
def test_bad_folder_layouts(tmp_path, layout, message):
    _tree(tmp_path, **layout)
    with pytest.raises(DataError, match=message):
        build_datasets(f'folder:{tmp_path}')


def test_missing_folder_and_unknown_specs(tmp_path):
    with pytest.raises(DataError, match='does not exist'):
        build_datasets(f'folder:{tmp_path / "nope"}')
    with pytest.raises(DataError, match='missing folder'):
        build_datasets(f'folder:{tmp_path}')
    with pytest.raises(DataError, match='unknown dataset'):
        parse_spec('imagenet')
    with pytest.raises(DataError, match='needs a path'):
        parse_spec('folder:')
    with pytest.raises(DataError, match='never downloads'):
        build_datasets(f'cifar10:{tmp_path}')


def test_cli_bad_dataset_is_one_line(tmp_path, capsys):
    code = main(['train', '--dataset', 'mnist', '--output', str(tmp_path / 'run')])
    out = capsys.readouterr().out.strip()
    assert code == 2 and out.startswith('error: unknown dataset') and '\n' not in out
    _tree(tmp_path / 'data', {'a': 1, 'b': 1}, {'a': 1, 'c': 1})
    code = main(['train', '--dataset', f'folder:{tmp_path / "data"}', '--output', str(tmp_path / 'run')])
    out = capsys.readouterr().out.strip()
    assert code == 2 and 'class mismatch' in out and '\n' not in out
