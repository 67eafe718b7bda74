"""visionmix.deploy: ONNX / pt2 export checked against eager, ONNX Runtime inference and the backend comparison.

Models are tiny (32-64 px, a few channels) so the default run stays short; one model per family runs through the
export + onnxruntime equality (shrunk widths and depths in the default run, the full-width models under
``-m slow``). Timings are never asserted on (the machine is shared), only that they exist and are positive.
"""
from __future__ import annotations

import os
import stat
import sys

import pytest
import timm
import torch
import torch.nn as nn

import visionmix
import visionmix.checkpoint as checkpoint_module
from visionmix.deploy import (
    BACKENDS, BackendError, ExportCheckError, ExportError, OnnxRuntimeModel, backend_runner, compare_backends,
    onnxruntime_model,
    export_model, max_rel_diff,
)
from visionmix.deploy import export as export_module
from visionmix.deploy.runtime import _cache_key
from visionmix.errors import MissingExtraError, VisionmixError

RTOL = 1e-4


class TinyCnn(nn.Module):
    """conv (stride 2) + ReLU + global pool + linear: exports in a second, runs at any size."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class CallCounter(TinyCnn):
    """Scales its output by a Python-side call count: the exporter bakes in the count of the trace, eager does not.

    A real bug class (Python state read in ``forward``), so its export must be refused.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x) * self.calls


class WidthBranch(TinyCnn):
    """Takes a shape-dependent Python branch: the exporter keeps the traced branch (guard ``W <= 40``), which the
    ONNX graph does not enforce, so a dynamic-size export is wrong at W = 48."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (2.0 if x.shape[-1] > 40 else 1.0)


def _tiny_spach() -> nn.Module:
    return visionmix.create_model('spach_ms', net_arch=[['pass', 1], ['attn', 1]], embed_dim=16, num_heads=2,
                                  img_size=32, num_classes=5)


def _rel(model: nn.Module, runner, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return max_rel_diff(model.eval()(x), runner(x))


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert message and '\n' not in message, repr(message)
    return message


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope='module')
def spach_onnx(tmp_path_factory):
    """The tiny multi-stage SPACH (conv + attention stages) exported once to ONNX: dynamic batch and H / W."""
    torch.manual_seed(0)
    model = _tiny_spach().eval()
    folder = tmp_path_factory.mktemp('spach')
    old = os.umask(0o022)
    try:
        result = export_model(model, folder / 'spach.onnx', img_size=32)
    finally:
        os.umask(old)
    return model, result


# ---------------------------------------------------------------------------------------------------- ONNX export


def test_onnx_export_native_model(spach_onnx):
    model, result = spach_onnx
    assert result.path.is_file() and result.format == 'onnx'
    assert result.exporter == 'torch.onnx dynamo' and result.opset
    assert result.dynamic_batch and result.dynamic_size, result.notes
    assert result.input_shapes == [['batch', 3, 'height', 'width']]
    assert len(result.max_rel_diff) == 2 and max(result.max_rel_diff) <= RTOL
    # the second check input differs in batch and (non-square) size
    assert result.check_shapes[0] != result.check_shapes[1]
    assert result.check_shapes[1][2] != result.check_shapes[1][3]
    assert sorted(os.listdir(result.path.parent)) == ['spach.onnx']  # no temp file left


def test_onnx_dynamic_batch_and_size(spach_onnx):
    model, result = spach_onnx
    runner = OnnxRuntimeModel(result.path, threads=1)
    for shape in [(3, 3, 32, 32), (1, 3, 32, 32), (2, 3, 48, 40)]:
        x = torch.randn(shape)
        out = runner(x)
        assert out.shape == (shape[0], 5) and out.dtype == torch.float32
        assert _rel(model, runner, x) <= RTOL


def test_file_mode_honours_umask(spach_onnx):
    _, result = spach_onnx  # exported under umask 022
    assert stat.S_IMODE(os.stat(result.path).st_mode) == 0o644


def test_file_mode_other_umask(tmp_path):
    old = os.umask(0o077)
    try:
        result = export_model(TinyCnn(), tmp_path / 'm.pt2', 'pt2', img_size=16)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(result.path).st_mode) == 0o600


def test_onnx_export_timm_classic(tmp_path):
    # 64 px: at 32 the last resnet map is 1x1 and the exporter specialises the size (see export.py)
    model = timm.create_model('resnet18', num_classes=3).eval()
    result = export_model(model, tmp_path / 'resnet18.onnx', img_size=64)
    assert result.dynamic_size and result.dynamic_batch and max(result.max_rel_diff) <= RTOL
    runner = OnnxRuntimeModel(result.path, threads=1)
    assert _rel(model, runner, torch.randn(3, 3, 96, 72)) <= RTOL


def test_static_batch_and_size(tmp_path):
    model = TinyCnn().eval()
    result = export_model(model, tmp_path / 'm.onnx', img_size=(16, 24), batch=2, dynamic_size=False)
    assert not result.dynamic_batch and not result.dynamic_size
    assert result.input_shapes == [[2, 3, 16, 24]] and result.dynamic_axes == {'input': {}}
    assert all(shape == (2, 3, 16, 24) for shape in result.check_shapes)
    runner = OnnxRuntimeModel(result.path, threads=1)
    assert _rel(model, runner, torch.randn(2, 3, 16, 24)) <= RTOL
    with pytest.raises(Exception):
        runner(torch.randn(3, 3, 16, 24))


def test_torchscript_fallback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('dynamo exporter broken for this test')

    monkeypatch.setattr(export_module, '_export_onnx_dynamo', broken)
    model = TinyCnn().eval()
    result = export_model(model, tmp_path / 'm.onnx', img_size=16)
    assert result.exporter == 'torch.onnx torchscript'
    assert any('dynamo exporter failed' in note for note in result.notes)
    assert result.dynamic_size and max(result.max_rel_diff) <= RTOL
    assert _rel(model, OnnxRuntimeModel(result.path, threads=1), torch.randn(3, 3, 24, 20)) <= RTOL


# ------------------------------------------------------------------------------------------------------ pt2 export


def test_pt2_round_trip(tmp_path):
    model = _tiny_spach().eval()
    result = export_model(model, tmp_path / 'spach.pt2', 'pt2', img_size=32)
    assert result.exporter == 'torch.export' and result.opset is None
    assert result.dynamic_batch and result.dynamic_size and max(result.max_rel_diff) <= RTOL
    loaded = torch.export.load(result.path).module()
    for shape in [(3, 3, 32, 32), (1, 3, 40, 48)]:
        assert _rel(model, loaded, torch.randn(shape)) <= RTOL


# ------------------------------------------------------------------------------------------------- the self-check


@pytest.mark.parametrize('fmt', ['onnx', 'pt2'])
def test_failing_check_writes_nothing(tmp_path, fmt):
    output = tmp_path / f'model.{fmt}'
    output.write_bytes(b'previous export')
    with pytest.raises(ExportCheckError) as e:
        export_model(CallCounter(), output, fmt, img_size=16, dynamic_size=False)
    message = _one_line(e)
    assert 'relative max difference' in message and 'no file written' in message
    assert output.read_bytes() == b'previous export'  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == [output.name]  # and no temp file is left


def test_dynamic_size_falls_back_to_static(tmp_path):
    model = WidthBranch().eval()
    result = export_model(model, tmp_path / 'm.onnx', img_size=32)
    assert not result.dynamic_size and result.dynamic_batch
    assert any(note.startswith('dynamic H / W dropped') for note in result.notes), result.notes
    assert max(result.max_rel_diff) <= RTOL
    with pytest.raises(ExportCheckError) as e:
        export_model(model, tmp_path / 'forced.onnx', img_size=32, dynamic_size=True)
    _one_line(e)
    assert not (tmp_path / 'forced.onnx').exists()


class FixedBatch(TinyCnn):
    """Reshapes with a hard-coded batch of 2: only a fixed-batch export can work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).reshape(2, -1)


@pytest.mark.parametrize('fmt', ['onnx', 'pt2'])
def test_fixed_batch_model(tmp_path, fmt):
    with pytest.raises(ExportError) as e:
        export_model(FixedBatch(), tmp_path / f'm.{fmt}', fmt, img_size=16, dynamic_size=False)
    assert 'fixed batch' in _one_line(e)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ExportError) as e:
        export_model(FixedBatch(), tmp_path / f'm.{fmt}', fmt, img_size=16, dynamic_size=False, check_inputs=1)
    assert 'fixed batch' in _one_line(e)  # the check passes the other batches: the exporter itself refuses
    result = export_model(FixedBatch(), tmp_path / f'm.{fmt}', fmt, img_size=16, batch=2, dynamic_size=False)
    assert not result.dynamic_batch and max(result.max_rel_diff) <= RTOL


def test_fixed_size_model_exports_static(tmp_path):
    # SPACH token-MLP models are tied to their build size: the export notices and stays static, without trying
    model = visionmix.create_model('spach_ms', net_arch=[['mlp', 1]], embed_dim=8, num_heads=1, img_size=16,
                                   num_classes=2)
    result = export_model(model, tmp_path / 'mlp.pt2', 'pt2', img_size=16)
    assert not result.dynamic_size and 'runs at no other size' in ' '.join(result.notes)


# --------------------------------------------------------------------------------------------------- user mistakes


@pytest.mark.parametrize('kwargs, words', [
    (dict(output='m.pt2'), 'must end in .onnx'),
    (dict(output='m.onnx', format='pt2'), 'must end in .pt2'),
    (dict(output='m.onnx', format='tflite'), 'unknown export format'),
    (dict(output='m.onnx', batch=0), 'batch must be'),
    (dict(output='m.onnx', batch='dyn'), 'batch must be'),
    (dict(output='m.onnx', img_size=0), 'image size must be'),
    (dict(output='m.onnx', img_size=(16, -1)), 'image size must be'),
    (dict(output='missing/m.onnx'), 'does not exist'),
    (dict(output='m.onnx', img_size=(1, 1)), 'cannot take input'),
])
def test_bad_arguments_one_line(tmp_path, kwargs, words):
    kwargs = {'img_size': 16, **kwargs, 'output': tmp_path / kwargs['output']}
    with pytest.raises(ExportError) as e:
        export_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)), **kwargs)
    assert words in _one_line(e) and isinstance(e.value, VisionmixError)
    assert os.listdir(tmp_path) == []


def test_unwritable_folder(tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root writes anywhere: simulate the refusal where the file is created
        def refuse(*args, **kwargs):
            raise PermissionError(13, 'Permission denied')

        monkeypatch.setattr(checkpoint_module.tempfile, 'mkstemp', refuse)
    else:
        tmp_path.chmod(0o500)
    try:
        with pytest.raises(ExportError) as e:
            export_model(TinyCnn(), tmp_path / 'm.pt2', 'pt2', img_size=16)
    finally:
        tmp_path.chmod(0o700)
    assert 'writ' in _one_line(e)


def test_missing_extra_one_line(tmp_path, monkeypatch, spach_onnx):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(MissingExtraError) as e:
        export_model(TinyCnn(), tmp_path / 'm.onnx', img_size=16)
    message = _one_line(e)
    assert message.startswith('onnxruntime is not installed') and 'pip install' in message and '[deploy]' in message
    with pytest.raises(MissingExtraError):
        OnnxRuntimeModel(spach_onnx[1].path)
    with pytest.raises(MissingExtraError):
        backend_runner(TinyCnn(), 'onnxruntime', 16)
    assert os.listdir(tmp_path) == []
    # pt2 needs torch only
    assert export_model(TinyCnn(), tmp_path / 'm.pt2', 'pt2', img_size=16).path.is_file()


# ---------------------------------------------------------------------------------------------- runtime / backends


def test_backend_runner_eager_and_unknown():
    model = TinyCnn()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(backend_runner(model, 'eager')(x), model.eval()(x))
    with pytest.raises(BackendError) as e:
        backend_runner(model, 'openvino')
    assert all(name in _one_line(e) for name in BACKENDS)


def test_from_module_cache(tmp_path, monkeypatch):
    model = TinyCnn().eval()
    first = onnxruntime_model(model, 16, cache_dir=tmp_path, threads=1)
    assert first.export_info['exporter'] == 'torch.onnx dynamo'
    calls = []
    monkeypatch.setattr('visionmix.deploy.runtime.export_model', lambda *a, **k: calls.append(a))
    again = onnxruntime_model(model, 16, cache_dir=tmp_path, threads=1)
    assert not calls and again.path == first.path and again.export_info == first.export_info
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(first(x), again(x)) and _rel(model, again, x) <= RTOL
    key = _cache_key(model, {'img_size': 16})
    with torch.no_grad():
        model.head.bias.add_(1.0)
    assert _cache_key(model, {'img_size': 16}) != key  # other weights: another file


def test_compare_backends_rows(tmp_path):
    rows = compare_backends(TinyCnn(), ['onnxruntime'], 16, batch_size=2, warmup=0, iters=2, threads=1)
    assert [row['backend'] for row in rows] == ['eager', 'onnxruntime']  # eager always runs, first
    for row in rows:
        assert row['img_s'] > 0 and row['ms'] > 0 and row['speedup'] > 0 and row['max_rel_diff'] <= RTOL
        assert row['input_size'] == (3, 16, 16) and row['batch_size'] == 2 and row['iters'] == 2
        assert row['gflops'] > 0 and row['gemm_peak_gflops'] > 0 and row['peak_pct'] > 0
    assert rows[0]['speedup'] == 1.0 and rows[0]['export'] == ''
    assert rows[1]['export'].startswith('torch.onnx dynamo')
    with pytest.raises(BackendError) as e:
        compare_backends(TinyCnn(), ['eager', 'tensorrt'], 16)
    _one_line(e)


@pytest.mark.slow
def test_compare_backends_compile():
    rows = compare_backends(_tiny_spach(), BACKENDS, 32, batch_size=2, warmup=1, iters=2, threads=1, flops=False)
    assert [row['backend'] for row in rows] == list(BACKENDS)
    assert all(row['img_s'] > 0 and row['max_rel_diff'] <= RTOL and row['gflops'] is None for row in rows)


# ------------------------------------------------------------------------------------- the other families (slow)


@pytest.mark.slow
@pytest.mark.parametrize('name, kwargs, size, dynamic', [
    ('hire_mlp_tiny', {}, 32, False),  # static by default (STATIC_SIZE_MODELS)
    ('swin_mlp_tiny_c24_patch4_window8_256', {'img_size': 64}, 64, False),  # static by default
    ('mobile_former_26m', {}, 64, True),
    ('unext', {}, 64, False),  # segmentation; static by default
])
def test_family_onnx_export(tmp_path, name, kwargs, size, dynamic):
    model = visionmix.create_model(name, num_classes=3, **kwargs).eval()
    result = export_model(model, tmp_path / f'{name}.onnx', img_size=size)
    assert result.dynamic_size == dynamic and result.dynamic_batch, result.notes
    assert max(result.max_rel_diff) <= RTOL
    runner = OnnxRuntimeModel(result.path, threads=1)
    x = torch.randn(3, 3, size, size)
    out = runner(x)
    segmentation = visionmix.model_card(name).family == 'segmentation'
    assert out.shape == ((3, 3, size, size) if segmentation else (3, 3))
    assert _rel(model, runner, x) <= RTOL


@pytest.mark.parametrize('name, kwargs, size', [
    ('hire_mlp_tiny', {'depths': (1, 1, 1, 1), 'dims': (16, 32, 48, 64)}, 32),
    # two blocks in stage 1 (16 x 16 tokens, window 8): the second one shifted, so padded windows are exported
    ('swin_mlp_tiny_c24_patch4_window8_256', {'img_size': 64, 'embed_dim': 24, 'depths': (2, 1, 1, 1)}, 64),
    ('mobile_former_26m', {}, 64),
    ('unext', {'dims': (8, 16, 32, 48, 64)}, 64),
])
def test_family_onnx_export_tiny(tmp_path, name, kwargs, size):
    """Export + ONNX Runtime equality for every other family in the default run, at tiny widths and depths (the
    full-width models above run under ``-m slow``)."""
    torch.manual_seed(0)
    model = visionmix.create_model(name, num_classes=3, **kwargs).eval()
    result = export_model(model, tmp_path / f'{name}.onnx', img_size=size, dynamic_size=False)
    assert max(result.max_rel_diff) <= RTOL and result.dynamic_batch, result.notes
    runner = OnnxRuntimeModel(result.path, threads=1)
    x = torch.randn(3, 3, size, size)
    assert _rel(model, runner, x) <= RTOL


def test_zero_output_is_noted(tmp_path):
    model = TinyCnn()
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)  # like timm's zero-initialised heads (e.g. MLP-Mixer)
    result = export_model(model, tmp_path / 'm.pt2', 'pt2', img_size=16)
    assert result.max_rel_diff == [0.0, 0.0] and any('zero' in note for note in result.notes)
