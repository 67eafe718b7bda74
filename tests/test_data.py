"""Datasets: the embedded digits and synthetic sets, ImageFolder trees, and one-line errors for bad data."""
import math
import os
import pickle
import struct
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


# ------------------------------------------------------------------------------------------------------- CIFAR
# Fake python batches in the real files' format: dicts with bytes keys, 'data' an N x 3072 uint8 array whose rows are
# the 1024 R, then 1024 G, then 1024 B values of a 32x32 image.

CIFAR10_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def _dump(path: Path, obj: object) -> None:
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)


def _batch(n: int, labels_key: bytes, num_classes: int, rng: np.random.Generator) -> dict:
    labels = rng.integers(0, num_classes, n).tolist()
    batch = {b'batch_label': b'fake batch', b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             labels_key: labels, b'filenames': [f'img_{i}.png'.encode() for i in range(n)]}
    if labels_key == b'fine_labels':
        batch[b'coarse_labels'] = [label // 5 for label in labels]
    return batch


def _fake_cifar(root: Path, kind: str = 'cifar10', per_batch: int = 3) -> tuple[Path, list[dict], list[dict]]:
    """Writes a fake CIFAR-10 / -100 folder under root; returns (batch folder, train batches, val batches)."""
    rng = np.random.default_rng(0)
    if kind == 'cifar10':
        folder, key, classes = root / 'cifar-10-batches-py', b'labels', 10
        train_files, val_files = [f'data_batch_{i}' for i in range(1, 6)], ['test_batch']
        meta = ('batches.meta', {b'label_names': [n.encode() for n in CIFAR10_NAMES], b'num_vis': 3072})
    else:
        folder, key, classes = root / 'cifar-100-python', b'fine_labels', 100
        train_files, val_files = ['train'], ['test']
        meta = ('meta', {b'fine_label_names': [f'fine{i}'.encode() for i in range(100)],
                         b'coarse_label_names': [f'coarse{i}'.encode() for i in range(20)]})
    folder.mkdir(parents=True)
    splits = []
    for files in (train_files, val_files):
        batches = [_batch(per_batch, key, classes, rng) for _ in files]
        for name, batch in zip(files, batches):
            _dump(folder / name, batch)
        splits.append(batches)
    _dump(folder / meta[0], meta[1])
    return folder, splits[0], splits[1]


def _planes_to_hwc(rows: np.ndarray) -> np.ndarray:
    """Independent of the loader's reshape: pixel (y, x) of channel c is rows[:, c * 1024 + y * 32 + x]."""
    out = np.empty((len(rows), 32, 32, 3), dtype=np.uint8)
    for c in range(3):
        for y in range(32):
            out[:, y, :, c] = rows[:, c * 1024 + y * 32: c * 1024 + y * 32 + 32]
    return out


@pytest.mark.parametrize('kind', ['cifar10', 'cifar100'])
@pytest.mark.parametrize('point_at', ['parent', 'folder'])
def test_cifar_batches_round_trip(tmp_path, kind, point_at):
    folder, train_batches, val_batches = _fake_cifar(tmp_path, kind)
    key = b'labels' if kind == 'cifar10' else b'fine_labels'
    train, val, info = build_datasets(f'{kind}:{tmp_path if point_at == "parent" else folder}')
    assert info.classes == (CIFAR10_NAMES if kind == 'cifar10' else [f'fine{i}' for i in range(100)])
    assert train.classes == val.classes == info.classes
    for ds, batches in ((train, train_batches), (val, val_batches)):
        rows = np.concatenate([b[b'data'] for b in batches])
        assert np.array_equal(ds.images, _planes_to_hwc(rows))
        assert ds.targets == [t for b in batches for t in b[key]]
        assert np.array_equal(np.asarray(ds.load(1)), _planes_to_hwc(rows[1:2])[0])  # PIL image, RGB order
    assert (info.num_train, info.num_val) == (len(train), len(val)) == (3 * len(train_batches), 3)


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the real files were (Python 2, protocol 2: str keys as SHORT_BINSTRING, the array
    rebuilt by numpy.core.multiarray._reconstruct)."""
    def s(b: bytes) -> bytes:
        return b'U' + bytes([len(b)]) + b if len(b) < 256 else b'T' + struct.pack('<I', len(b)) + b

    def i(n: int) -> bytes:
        return b'J' + struct.pack('<i', n)

    dtype = b'cnumpy\ndtype\n' + s(b'u1') + i(0) + i(1) + b'\x87R(' + i(3) + s(b'|') + b'NNN' + i(-1) + i(-1) \
        + i(0) + b'tb'
    array = (b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n' + i(0) + b'\x85' + s(b'b') + b'\x87R(' + i(1)
             + i(data.shape[0]) + i(data.shape[1]) + b'\x86' + dtype + b'\x89' + s(data.tobytes()) + b'tb')
    return b'\x80\x02}(' + s(b'data') + array + s(b'labels') + b'](' + b''.join(map(i, labels)) + b'eu.'


def test_cifar_reads_python2_pickles_and_numpy_scalars(tmp_path):
    folder, _, _ = _fake_cifar(tmp_path)
    rows = np.random.default_rng(1).integers(0, 256, (2, 3072), dtype=np.uint8)
    (folder / 'test_batch').write_bytes(_py2_batch(rows, [7, 2]))
    assert pickle.loads((folder / 'test_batch').read_bytes(), encoding='latin1')['labels'] == [7, 2]  # format check
    _dump(folder / 'data_batch_2', {b'data': rows, b'labels': [np.int64(1), np.int64(9)]})  # numpy scalar labels
    train, val, _ = build_datasets(f'cifar10:{tmp_path}')
    assert np.array_equal(val.images, _planes_to_hwc(rows)) and val.targets == [7, 2]
    assert train.targets[3:5] == [1, 9]


class _RunsCode:
    """Unpickling this calls ``func(*args)``: what a crafted dataset file does to run code."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize('make', [lambda marker: _RunsCode(os.system, f'touch {marker}'),
                                  lambda marker: _RunsCode(open, str(marker), 'w')], ids=['os.system', 'open'])
def test_cifar_refuses_pickles_that_run_code(tmp_path, make, capsys):
    folder, _, _ = _fake_cifar(tmp_path / 'data')
    marker = tmp_path / 'pwned'
    _dump(folder / 'data_batch_3', {b'data': make(marker), b'labels': [0]})
    with pytest.raises(DataError, match=r'data_batch_3: refused to unpickle (posix|os|builtins|io)\.(system|open)'):
        build_datasets(f'cifar10:{tmp_path / "data"}')
    assert not marker.exists()
    code = main(['train', '--dataset', f'cifar10:{tmp_path / "data"}', '--output', str(tmp_path / 'run')])
    out = capsys.readouterr().out.strip()
    assert code == 2 and 'refused to unpickle' in out and '\n' not in out
    assert not marker.exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:500])


@pytest.mark.parametrize('damage, message', [
    (_truncate, r'data_batch_2 is not a readable CIFAR python batch'),
    (lambda p: p.write_bytes(b'\x00garbage\xff' * 10), r'data_batch_2 is not a readable CIFAR python batch'),
    (lambda p: p.write_bytes(b''), r'data_batch_2 is not a readable CIFAR python batch \(EOFError'),
    (lambda p: _dump(p, [1, 2, 3]), r'data_batch_2 is not a CIFAR python batch'),
    (lambda p: p.unlink(), r'missing data_batch_2 in .*cifar-10-batches-py'),
    (lambda p: _dump(p, {b'data': np.zeros((2, 3071), np.uint8), b'labels': [0, 1]}),
     r"data_batch_2: 'data' must be an N x 3072 uint8 array, got uint8 array of shape \(2, 3071\)"),
    (lambda p: _dump(p, {b'data': np.zeros((2, 3072), np.float32), b'labels': [0, 1]}),
     r"data_batch_2: 'data' must be an N x 3072 uint8 array, got float32"),
    (lambda p: _dump(p, {b'labels': [0, 1]}), r"data_batch_2: 'data' must be .* got NoneType"),
    (lambda p: _dump(p, {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0]}),
     r"data_batch_2: 'labels' must be 2 integer labels"),
    (lambda p: _dump(p, {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 10]}),
     r"data_batch_2: label 10 in 'labels' is outside 0..9"),
    (lambda p: _dump(p, {b'data': np.zeros((2, 3072), np.uint8), b'labels': [-1, 0]}),
     r"data_batch_2: label -1 in 'labels' is outside 0..9"),
])
def test_cifar_bad_files_name_the_file(tmp_path, damage, message, capsys):
    folder, _, _ = _fake_cifar(tmp_path)
    damage(folder / 'data_batch_2')
    with pytest.raises(DataError, match=message):
        build_datasets(f'cifar10:{tmp_path}')
    code = main(['train', '--dataset', f'cifar10:{tmp_path}', '--output', str(tmp_path / 'run')])
    out = capsys.readouterr().out.strip()
    assert code == 2 and 'data_batch_2' in out and '\n' not in out, out


def test_cifar_meta_without_names(tmp_path):
    folder, _, _ = _fake_cifar(tmp_path, 'cifar100')
    _dump(folder / 'meta', {b'coarse_label_names': [b'a']})
    with pytest.raises(DataError, match=r"meta: 'fine_label_names' must be a non-empty list"):
        build_datasets(f'cifar100:{folder}')


def test_train_one_epoch_on_fake_cifar10(tmp_path):
    from visionmix.engine import load_config
    from visionmix.engine.evaluate import run_eval
    from visionmix.engine.train import train

    _fake_cifar(tmp_path / 'data', per_batch=4)
    cfg = load_config(overrides=dict(
        model='spach_ms', model_kwargs={'net_arch': [['pass', 1]], 'embed_dim': 8},
        dataset=f'cifar10:{tmp_path / "data"}', img_size=16, epochs=1, batch_size=4, warmup_epochs=0,
        auto_augment=None, reprob=0.0, threads=1, output=str(tmp_path / 'run')))
    result = train(cfg, progress=False)
    assert result.finished and len(result.history) == 1 and math.isfinite(result.history[0]['train_loss'])
    res = run_eval(tmp_path / 'run', output=tmp_path / 'eval')
    assert res['num_images'] == 4 and res['classes'] == CIFAR10_NAMES
    assert res['top1'] == pytest.approx(result.top1, abs=1e-3)
