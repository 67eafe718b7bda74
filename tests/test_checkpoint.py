from pathlib import Path

import pytest
import torch
import torch.nn as nn

import visionmix
from visionmix.checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint, unwrap_state_dict


def _small():
    return visionmix.create_model('resnet50', num_classes=10, layers=[1, 1, 1, 1]).eval()


def _same_outputs(a: nn.Module, b: nn.Module, size: int = 32) -> bool:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_safetensors_round_trip_is_exact(tmp_path):
    model = _small()
    path = save_checkpoint(model, tmp_path / 'w.safetensors', metadata={'arch': 'resnet50'})
    fresh = _small()
    assert not _same_outputs(model, fresh)
    load_checkpoint(fresh, path)
    assert _same_outputs(model, fresh)


@pytest.mark.parametrize('wrapper', ['model', 'state_dict', 'model_ema', 'state_dict_ema', None])
@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_torch_files_nested_and_prefixed(tmp_path, wrapper, prefix):
    model = _small()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    obj = state if wrapper is None else {wrapper: state, 'epoch': 3}
    torch.save(obj, tmp_path / 'w.pth')
    fresh = _small()
    load_checkpoint(fresh, tmp_path / 'w.pth')
    assert _same_outputs(model, fresh)


def test_ema_wins_unless_declined():
    plain, ema = {'w': torch.zeros(1)}, {'w': torch.ones(1)}
    ckpt = {'model': plain, 'model_ema': ema}
    assert unwrap_state_dict(ckpt)['w'].item() == 1
    assert unwrap_state_dict(ckpt, use_ema=False)['w'].item() == 0
    assert unwrap_state_dict({'state_dict': plain, 'state_dict_ema': ema}, use_ema=False)['w'].item() == 0


def test_deit_style_checkpoint_with_argparse_options_loads(tmp_path):
    import argparse

    model = _small()
    torch.save({'model': model.state_dict(), 'epoch': 299, 'args': argparse.Namespace(lr=5e-4, model='x')},
               tmp_path / 'deit.pth')
    fresh = _small()
    load_checkpoint(fresh, tmp_path / 'deit.pth')
    assert _same_outputs(model, fresh)


def test_checkpoint_path_argument(tmp_path):
    model = _small()
    save_checkpoint(model, tmp_path / 'w.safetensors')
    loaded = visionmix.create_model('resnet50', num_classes=10, layers=[1, 1, 1, 1],
                                    checkpoint_path=str(tmp_path / 'w.safetensors'))
    assert _same_outputs(model, loaded)


def test_other_num_classes_adapts_the_head_only_when_asked(tmp_path):
    """create_model(checkpoint_path=..., num_classes=...) is fine-tuning: the head is adapted (with a warning).
    load_checkpoint(strict=True) means strict: the same file is a one-line mismatch error there."""
    save_checkpoint(_small(), tmp_path / 'w.safetensors')
    torch.manual_seed(0)
    fresh = visionmix.create_model('resnet50', num_classes=3, layers=[1, 1, 1, 1])
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match='dropping classifier fc.weight'):
        target = visionmix.create_model('resnet50', num_classes=3, layers=[1, 1, 1, 1],
                                        checkpoint_path=str(tmp_path / 'w.safetensors'))
    assert torch.equal(target.fc.weight, fresh.fc.weight)  # the fresh head is kept
    assert torch.equal(target.conv1.weight, read_state_dict(tmp_path / 'w.safetensors')['conv1.weight'])
    with pytest.raises(CheckpointError, match=r'2 shape mismatches \(fc.bias: checkpoint \(10,\) vs model \(3,\); '
                                              r'fc.weight: checkpoint \(10, 2048\) vs model \(3, 2048\)\)'):
        load_checkpoint(visionmix.create_model('resnet50', num_classes=3, layers=[1, 1, 1, 1]),
                        tmp_path / 'w.safetensors')


def test_other_in_chans_adapts_the_first_conv_only_when_asked(tmp_path):
    source = _small()
    save_checkpoint(source, tmp_path / 'w.safetensors')
    with pytest.warns(UserWarning, match='conv1.weight'):
        target = visionmix.create_model('resnet50', num_classes=10, layers=[1, 1, 1, 1], in_chans=1,
                                        checkpoint_path=str(tmp_path / 'w.safetensors'))
    # timm's rule for one channel: sum the RGB filters.
    assert torch.allclose(target.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    with pytest.raises(CheckpointError, match='conv1.weight'):
        load_checkpoint(visionmix.create_model('resnet50', num_classes=10, layers=[1, 1, 1, 1], in_chans=1),
                        tmp_path / 'w.safetensors')


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    state = _small().state_dict()
    state.pop('layer1.0.conv1.weight')
    state['extra.weight'] = torch.zeros(1)
    state['layer2.0.conv1.weight'] = torch.zeros(3, 3, 1, 1)
    save_checkpoint(state, tmp_path / 'bad.safetensors')
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_small(), tmp_path / 'bad.safetensors')
    msg = str(info.value)
    assert '1 missing keys (layer1.0.conv1.weight)' in msg
    assert '1 unexpected keys (extra.weight)' in msg
    assert '1 shape mismatches (layer2.0.conv1.weight: checkpoint (3, 3, 1, 1) vs model' in msg
    assert len(msg.splitlines()) == 1  # one line for the CLI; every key is on the error's attributes
    assert info.value.missing == ['layer1.0.conv1.weight'] and info.value.unexpected == ['extra.weight']
    assert isinstance(info.value, visionmix.VisionmixError) and isinstance(info.value, ValueError)


def test_non_strict_still_rejects_shape_mismatch(tmp_path):
    state = _small().state_dict()
    state.pop('layer1.0.conv1.weight')
    save_checkpoint(state, tmp_path / 'partial.safetensors')
    load_checkpoint(_small(), tmp_path / 'partial.safetensors', strict=False)
    state['layer2.0.conv1.weight'] = torch.zeros(3, 3, 1, 1)
    save_checkpoint(state, tmp_path / 'partial.safetensors')
    with pytest.raises(CheckpointError, match='shape mismatches'):
        load_checkpoint(_small(), tmp_path / 'partial.safetensors', strict=False)


def test_corrupt_empty_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        read_state_dict(tmp_path / 'nope.pth')
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        read_state_dict(tmp_path / 'empty.pth')
    (tmp_path / 'junk.safetensors').write_bytes(b'\x00' * 64)
    with pytest.raises(CheckpointError, match='safetensors'):
        read_state_dict(tmp_path / 'junk.safetensors')
    torch.save(_small().state_dict(), tmp_path / 'trunc.pth')
    data = (tmp_path / 'trunc.pth').read_bytes()
    (tmp_path / 'trunc.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='corrupt'):
        read_state_dict(tmp_path / 'trunc.pth')
    (tmp_path / 'w.onnx').write_bytes(b'x')
    with pytest.raises(CheckpointError, match='unknown checkpoint format'):
        read_state_dict(tmp_path / 'w.onnx')
    torch.save([torch.zeros(1)], tmp_path / 'list.pth')
    with pytest.raises(CheckpointError, match='not a state dict'):
        read_state_dict(tmp_path / 'list.pth')


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path('/tmp/visionmix_pwned'),))


def test_pickled_code_is_never_executed(tmp_path):
    Path('/tmp/visionmix_pwned').unlink(missing_ok=True)
    torch.save({'model': {'w': torch.zeros(1)}, 'payload': _Evil()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='weights_only'):
        read_state_dict(tmp_path / 'evil.pth')
    assert not Path('/tmp/visionmix_pwned').exists()


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint({'w': torch.zeros(2)}, tmp_path / 'w.safetensors')
    import visionmix.checkpoint as ckpt

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, 'save_safetensors', crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'w': torch.ones(2)}, path)
    assert torch.equal(read_state_dict(path)['w'], torch.zeros(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ['w.safetensors']  # no temp file left behind


def test_save_refuses_other_formats(tmp_path):
    with pytest.raises(ValueError, match='safetensors'):
        save_checkpoint({'w': torch.zeros(1)}, tmp_path / 'w.pth')


def test_shared_tensors_are_saved(tmp_path):
    w = torch.randn(3)
    path = save_checkpoint({'a': w, 'b': w}, tmp_path / 'tied.safetensors')
    out = read_state_dict(path)
    assert torch.equal(out['a'], out['b'])


def test_no_tensors_is_a_clear_error(tmp_path):
    torch.save({'epoch': 1, 'args': {'lr': 0.1}}, tmp_path / 'meta.pth')
    with pytest.raises(CheckpointError, match='no tensors'):
        load_checkpoint(_small(), tmp_path / 'meta.pth')
