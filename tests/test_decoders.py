"""ARCH:BACKBONE segmentation models: smp decoders over any backbone with a feature pyramid, trained by the one loop."""
from __future__ import annotations

import json

import pytest
import torch

import visionmix
from visionmix.cli import main
from visionmix.data import build_datasets
from visionmix.engine.config import load_config
from visionmix.engine.train import train

SMALL_SPACH = dict(net_arch=[['pass', 1], ['pass', 1], ['attn', 1], ['attn', 1]], embed_dim=16, num_heads=2)


@pytest.mark.parametrize('spec, kwargs', [
    ('fpn:resnet18', {}),
    ('unet:spach_ms', dict(backbone_kwargs=SMALL_SPACH)),
    ('deeplabv3plus:spach_ms', dict(backbone_kwargs=SMALL_SPACH)),
    ('upernet:mobile_former_26m', {}),
    ('deeplabv3plus:resnet18', dict(output_stride=8, dilation='hdc')),
])
def test_every_decoder_builds_and_takes_any_size(spec, kwargs):
    card = visionmix.model_card(spec)
    assert card.family == 'segmentation' and card.task == 'segmentation' and card.params > 0
    model = visionmix.create_model(spec, num_classes=4, **kwargs).train()
    x = torch.randn(2, 3, 50, 70)  # not a multiple of 32: padded, and the logits cropped back
    out = model(x)
    assert out.shape == (2, 4, 50, 70)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_deeplab_runs_the_backbone_at_stride_16_by_default_and_8_on_request():
    for stride in (16, 8):
        model = visionmix.create_model('deeplabv3plus:spach_ms', num_classes=2, backbone_kwargs=SMALL_SPACH,
                                       **({} if stride == 16 else dict(output_stride=8)))
        assert model.net.encoder.model.feature_info.reduction()[-1] == stride


def test_a_size_tied_backbone_is_built_for_the_size_asked():
    tied = visionmix.create_model('unet:spach_ms_xxs_patch4_224_mlp', num_classes=2, img_size=64).eval()
    assert tied(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(visionmix.VisionmixError, match='token-mixing MLP was built for'):
        tied(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize('spec, message', [
    ('fpn:tv:resnet18', 'no timm feature pyramid'),
    ('fpn:googlenet', 'no timm feature pyramid'),
    ('fpn:SPACH-Conv', r'reductions \[4, 8, 16\]; the decoders need one map at each stride 4, 8, 16 and 32'),
    ('fpn:resnt18', "unknown model 'resnt18'"),
    ('fpnn:resnet18', "unknown model 'fpnn:resnet18'"),
    ('fpn:', 'needs a backbone'),
])
def test_a_backbone_that_cannot_serve_is_one_line(spec, message):
    with pytest.raises(visionmix.VisionmixError, match=message) as info:
        visionmix.create_model(spec)
    assert '\n' not in str(info.value)


def test_decoder_output_stride_is_checked():
    with pytest.raises(visionmix.VisionmixError, match='fpn decodes features at output stride 32'):
        visionmix.create_model('fpn:resnet18', output_stride=8)


def test_textures_seg_is_texture_not_colour():
    train_ds, val_ds, info = build_datasets('textures-seg:16', img_size=32)
    assert info.task == 'segmentation' and info.classes == ['background', 'brick', 'grass', 'gravel']
    _, mask = train_ds.load(0)
    assert mask.shape == (32, 32) and mask.max() < 4 and len(val_ds) == 4


@pytest.mark.slow  # ~1-2 min: a real training run
def test_fpn_on_textures_seg_beats_the_constant_prediction_by_far(tmp_path):
    """FPN over a small timm CNN learns the texture classes: mIoU far above predicting the majority class."""
    cfg = load_config(overrides=dict(
        model='fpn:resnet18', dataset='textures-seg:160', img_size=48, epochs=4, batch_size=16, threads=2,
        output=str(tmp_path / 'run')))
    result = train(cfg, progress=False)
    # always 'background' (~53% of the pixels): IoU 53% for that class, 0 for the three others -> mIoU ~13%
    assert result.metric == 'miou' and result.score > 30, result.history


def test_segmentation_model_trains_evaluates_and_predicts_through_the_cli(tmp_path, capsys):
    run = tmp_path / 'run'
    assert main(['train', '--model', 'fpn:resnet18', '--dataset', 'textures-seg:16', '--img-size', '32', '--epochs',
                 '1', '--batch-size', '8', '--threads', '1', '--output', str(run)]) == 0
    assert 'mIoU' in capsys.readouterr().out
    assert main(['eval', str(run), '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    assert {'miou', 'pixel_acc', 'iou_per_class', 'dice'} <= set(result)
    assert list(result['iou_per_class']) == ['background', 'brick', 'grass', 'gravel']


def test_compare_task_segmentation_ranks_by_miou_and_draws_the_fields(tmp_path, capsys):
    out = tmp_path / 'cmp'
    assert main(['compare', '--task', 'segmentation', '--models', "fpn:spach_ms:{backbone_kwargs: {net_arch: "
                 "[[pass, 1], [pass, 1], [pass, 1], [pass, 1]], embed_dim: 8}}", 'unext_s', '--dataset',
                 'textures-seg:16', '--img-size', '32', '--epochs', '1', '--no-profile', '--set', 'batch_size=8',
                 '--set', 'threads=1', '--output', str(out)]) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['task'] == 'segmentation' and all(r['metric'] == 'miou' for r in results['models'])
    report = (out / 'report.md').read_text()
    assert 'mIoU %' in report and '## Effective receptive fields' in report and 'erf.png' in report
    assert (out / 'erf.png').stat().st_size > 0 and (out / 'miou_vs_macs.png').is_file()
    capsys.readouterr()
    assert main(['compare', '--task', 'segmentation', '--models', 'resnet18', '--output', str(tmp_path / 'x')]) == 2
    assert 'are classification models' in capsys.readouterr().out
