"""Coverage reports / plots and empirical effective receptive fields (visionmix.analysis.rf)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import visionmix
from visionmix.analysis import (
    coverage_report, effective_receptive_field, erf_report, erf_stats, feature_center, last_feature_map,
    plot_coverage, plot_erfs, to_json,
)
from visionmix.dilation import coverage
from visionmix.errors import ConfigError, VisionmixError

PNG = b'\x89PNG'


class TinyConv(nn.Module):
    """Two linear 3x3 convs: theoretical receptive field 5 x 5, every weight generic, so no gradient cancels."""

    def __init__(self, nhwc: bool = False) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.output_fmt = 'NHWC' if nhwc else 'NCHW'

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return x.permute(0, 2, 3, 1) if self.output_fmt == 'NHWC' else x


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def spach(spatial: str, img_size: int, multi_stage: bool, **kwargs) -> nn.Module:
    if multi_stage:  # patch 4, 3 stages joined by conv 2x2 + GroupNorm(1 group): stride 16
        return visionmix.create_model('spach_ms', net_arch=[[spatial, 1]] * 3, embed_dim=24, num_heads=2,
                                      img_size=img_size, **kwargs)
    # patch 8, 2 blocks, no downsampling: the conv model's field is 8 + 2 * 2 * 8 = 40 px
    return visionmix.create_model('spach', net_arch=[[spatial, 2]], embed_dim=24, num_heads=2, patch_size=8,
                                  img_size=img_size, **kwargs)


def test_coverage_report_is_json_data():
    rep = coverage_report([1, 2, 9])
    assert json.loads(json.dumps(rep)) == rep
    assert rep['ok'] is False and rep['m'] == [3, 5, 9] and rep['common_factor'] == 1
    assert rep['receptive_field'] == 25 and rep['holes'] == 184
    np.testing.assert_array_equal(np.array(rep['coverage']), coverage([1, 2, 9]))
    assert json.loads(to_json(rep))['reason'] == rep['reason']


@pytest.mark.parametrize('rates', [[1, 2, 5], [1, 2, 9, 1, 2, 9]])  # 17 px: numbers in cells; 49 px: heat map
def test_plot_coverage_writes_png(tmp_path, rates):
    path = plot_coverage(coverage(rates), tmp_path / 'sub' / 'cov.png', title=f'rates {rates}')
    assert path == tmp_path / 'sub' / 'cov.png'
    assert path.read_bytes()[:4] == PNG


def test_plot_coverage_bad_input(tmp_path):
    with pytest.raises(ConfigError, match='.png'):
        plot_coverage(coverage([1, 2]), tmp_path / 'cov.txt')
    with pytest.raises(ConfigError, match='2-D'):
        plot_coverage(np.ones(5), tmp_path / 'cov.png')


def test_erf_stats_on_hand_made_maps():
    delta = np.zeros((41, 41))
    delta[20, 20] = 3.0
    assert erf_stats(delta) == dict(r50=0.0, r90=0.0, nonzero_share=1 / 41 ** 2)
    ys, xs = np.indices((81, 81))
    radius = 20
    disc = (np.hypot(ys - 40, xs - 40) <= radius).astype(float)
    stats = erf_stats(disc)
    assert stats['r50'] == pytest.approx(radius / math.sqrt(2), abs=0.5)
    assert stats['r90'] == pytest.approx(radius * math.sqrt(0.9), abs=0.5)
    assert stats['nonzero_share'] == pytest.approx(disc.mean())
    shifted = erf_stats(np.roll(delta, 5, axis=1), center=(20, 25))  # radii are measured from the given centre
    assert shifted['r50'] == shifted['r90'] == 0.0
    assert math.isnan(erf_stats(np.zeros((5, 5)))['r50'])


def test_feature_center():
    assert feature_center(64, (4, 4)) == (39.5, 39.5)  # even map: half a stride below-right of the image centre
    assert feature_center((80, 48), (5, 3)) == (39.5, 23.5)


@pytest.mark.parametrize('nhwc', [False, True])
def test_erf_of_a_small_conv_is_its_theoretical_field(nhwc):
    model = TinyConv(nhwc).train()
    erf = effective_receptive_field(model, img_size=16, samples=3)
    assert erf.shape == (16, 16)
    ys, xs = np.nonzero(erf)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 10, 6, 10)  # 5 x 5 around unit (8, 8)
    assert erf_stats(erf)['nonzero_share'] == 25 / 256
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # only the input gradient was taken


def test_last_feature_map_is_nchw():
    x = torch.randn(1, 3, 64, 64)
    feat = last_feature_map(spach('pass', 64, multi_stage=True).eval(), x)  # NHWC inside, NCHW out
    assert feat.shape == (1, 96, 4, 4)
    assert last_feature_map(TinyConv(nhwc=True), x).shape == (1, 4, 64, 64)


def test_model_without_spatial_map_is_one_line_error():
    for model in (Pooled(), nn.Linear(3, 3)):
        with pytest.raises(VisionmixError, match='no spatial feature map') as e:
            effective_receptive_field(model, img_size=8, samples=1)
        assert '\n' not in str(e.value)


def test_model_built_for_another_size_is_one_line_error():
    model = spach('mlp', 64, multi_stage=True)  # token MLPs are tied to 64 px
    with pytest.raises(VisionmixError, match='cannot run at 48x48') as e:
        effective_receptive_field(model, img_size=48, samples=1)
    assert '\n' not in str(e.value)


def test_single_stage_spach_conv_is_local_attention_and_mlp_global():
    # no GroupNorm and no layer scale: the fields are what the spatial functions make of them at random init
    models = [spach(s, 64, multi_stage=False, layer_scale=False) for s in ('pass', 'attn', 'mlp')]
    conv, attn, mlp = erf_report(models, img_size=64, samples=2)
    assert conv['feature_shape'] == [24, 8, 8] and conv['center'] == [35.5, 35.5]
    assert conv['nonzero_share'] == pytest.approx((40 / 64) ** 2)  # exactly the conv model's 40 px field
    assert attn['nonzero_share'] == mlp['nonzero_share'] == 1.0  # one token mixing layer reaches every pixel
    assert conv['r90'] < 0.6 * attn['r90'] and conv['r90'] < 0.6 * mlp['r90']  # observed 14.9 vs 32 / 36
    assert mlp['r50'] > 2 * conv['r50']  # observed 8.5 vs 22.6: the token MLP spreads the mass evenly


def test_multi_stage_spach_groupnorm_makes_even_the_conv_model_global():
    conv, attn, mlp = erf_report([spach(s, 80, multi_stage=True) for s in ('pass', 'attn', 'mlp')], 80, samples=2)
    # GroupNorm(1 group) after each downsampling normalises over the whole map: every pixel reaches every unit
    assert conv['nonzero_share'] == attn['nonzero_share'] == mlp['nonzero_share'] == 1.0
    model = spach('pass', 80, multi_stage=True)
    for stage in model.stages[1:]:
        stage.downsample.norm = nn.Identity()
    local = erf_report(model, 80, samples=2)[0]
    assert local['nonzero_share'] == pytest.approx((72 / 80) ** 2)  # 4 + 8 + 4 + 16 + 8 + 32 px of convs
    # with layer scale (init 1e-4) the token mixers barely count at init; without it the MLP's field is far wider
    wide = erf_report([spach(s, 80, multi_stage=True, layer_scale=False) for s in ('pass', 'mlp')], 80, samples=2)
    assert wide[1]['r50'] > 2 * wide[0]['r50']  # observed 12 vs 30


def test_erf_report_by_name_and_json(tmp_path):
    reports = erf_report(['spach_ms_xxs_patch4_224_mlp', 'mobilenetv2_100'], img_size=32, samples=1)
    assert [r['name'] for r in reports] == ['spach_ms_xxs_patch4_224_mlp', 'mobilenetv2_100']
    assert reports[0]['feature_shape'] == [512, 1, 1]  # built with img_size=32 (token MLPs)
    assert reports[1]['feature_shape'][1:] == [1, 1]  # its builder takes no img_size: built without
    assert all(r['erf'].shape == (32, 32) for r in reports)
    data = json.loads(to_json(reports))
    assert all('erf' not in d and d['img_size'] == [32, 32] for d in data)
    path = plot_erfs(reports, tmp_path / 'erf.png', title='ERF at 32 px')
    assert path.read_bytes()[:4] == PNG


def test_erf_report_loads_checkpoint(tmp_path):
    trained = TinyConv()
    path = visionmix.save_checkpoint(trained, tmp_path / 'tiny.safetensors')
    fresh = TinyConv()
    rep = erf_report(fresh, img_size=12, samples=2, checkpoint=path)[0]
    assert rep['name'] == 'TinyConv'
    np.testing.assert_allclose(rep['erf'], effective_receptive_field(trained, img_size=12, samples=2))


def test_erf_report_bad_input(tmp_path):
    with pytest.raises(ConfigError, match='one per model'):
        erf_report([TinyConv(), TinyConv()], img_size=8, checkpoint=['a.pt'])
    with pytest.raises(ConfigError, match='img_size'):
        erf_report(TinyConv(), img_size=(8, 0))
    with pytest.raises(ConfigError, match='samples'):
        erf_report(TinyConv(), img_size=8, samples=0)
    with pytest.raises(ConfigError, match='erf'):
        plot_erfs([{'name': 'x'}], tmp_path / 'erf.png')
