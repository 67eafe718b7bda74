"""Hire-MLP: exact sizes and MACs, official checkpoint layout, step schedule, any input size, timm integration."""
from pathlib import Path

import pytest
import timm
import torch

import visionmix
from visionmix.checkpoint import unwrap_state_dict
from official_keys import read_official_keys
from visionmix.layers.hire import hire_step
from visionmix.models.hire_mlp import HireMlpNet, checkpoint_filter_fn
from visionmix.profile import count_macs, count_params

TINY = 'hire_mlp_tiny'
RELEASE = 'https://github.com/ggjy/Hire-Wave-MLP.pytorch/releases/download/log'

# name: (params, GMACs at 224, published top-1)
VARIANTS = {
    'hire_mlp_tiny': (18_041_672, 2.14, 79.7),
    'hire_mlp_small': (33_113_848, 4.23, 82.1),
    'hire_mlp_base': (58_226_856, 8.11, 83.2),
    'hire_mlp_large': (95_723_944, 13.42, 83.8),
}


@pytest.fixture(scope='module')
def tiny() -> HireMlpNet:
    torch.manual_seed(0)
    return visionmix.create_model(TINY).eval()


def random_official_state() -> dict[str, torch.Tensor]:
    """Random tensors in the official layout; BN variances positive, counters integer, as in a real checkpoint."""
    _, shapes = read_official_keys('hire_mlp_tiny')
    sd = {}
    for k, shape in shapes.items():
        if k.endswith('num_batches_tracked'):
            sd[k] = torch.tensor(1000)
        elif k.endswith('running_var'):
            sd[k] = torch.rand(shape) + 0.5
        else:
            sd[k] = torch.randn(shape) * 0.1
    return sd


def save_official(path: Path) -> dict[str, torch.Tensor]:
    sd = random_official_state()
    torch.save({'model': sd, 'model_ema': sd}, path)
    return sd


def test_registered_in_timm_and_visionmix():
    assert set(visionmix.list_models('hire_mlp*')) == set(VARIANTS)
    assert isinstance(timm.create_model(TINY), HireMlpNet)
    for name, (params, gmacs, top1) in VARIANTS.items():
        card = visionmix.model_card(name)
        assert card.family == 'mlp' and card.arxiv == '2108.13341' and card.license == 'mit'
        assert (card.params, card.top1) == (params, top1) and card.gmacs == pytest.approx(gmacs, rel=0.01)
        assert card.code_commit and len(card.code_commit) == 40


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_params_exact(name):
    with torch.device('meta'):
        model = visionmix.create_model(name)
    assert count_params(model) == VARIANTS[name][0]


def test_fixture_matches_official_param_count():
    params, shapes = read_official_keys('hire_mlp_tiny')
    counted = sum(s.numel() for k, s in shapes.items() if not k.endswith(('running_mean', 'running_var', 'tracked')))
    assert params == counted == VARIANTS[TINY][0]


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if n != TINY else n for n in sorted(VARIANTS)])
def test_macs_within_2_percent(name):
    macs = count_macs(visionmix.create_model(name), (3, 224, 224)) / 1e9
    assert macs == pytest.approx(VARIANTS[name][1], rel=0.02)
    assert macs == pytest.approx(visionmix.model_card(name).gmacs, rel=1e-3)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    assert cfg['url'] == ('' if name == 'hire_mlp_large' else f'{RELEASE}/{name}.pth')
    assert cfg['input_size'] == (3, 224, 224) and cfg['pool_size'] == (7, 7) and cfg['crop_pct'] == 0.9
    assert cfg['interpolation'] == 'bicubic' and cfg['first_conv'] == 'stem.conv' and cfg['classifier'] == 'head.fc'
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD


def test_step_schedule():
    # block j shifts by (j % step_stride) * step_dilation; strides (2, 2, 3, 2), dilations (2, 2, 1, 1)
    assert [hire_step(j, 2, 2) for j in range(4)] == [0, 2, 0, 2]
    assert [hire_step(j, 3, 1) for j in range(10)] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    with torch.device('meta'):
        model = visionmix.create_model('hire_mlp_small')
    got = [[(b.token_mixer.height.step, b.token_mixer.width.step, b.token_mixer.height.region_size)
            for b in stage.blocks] for stage in model.stages]
    assert got == [
        [(0, 0, 4), (2, 2, 4), (0, 0, 4)],
        [(0, 0, 3), (2, 2, 3), (0, 0, 3), (2, 2, 3)],
        [(j % 3, j % 3, 3) for j in range(10)],
        [(0, 0, 2), (1, 1, 2), (0, 0, 2)],
    ]


def test_drop_path_rises_linearly_to_the_last_block():
    with torch.device('meta'):
        model = visionmix.create_model(TINY, drop_path_rate=0.3)
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for stage in model.stages for b in stage.blocks]
    assert rates == pytest.approx([0.3 * i / 9 for i in range(10)])


def test_filter_maps_every_official_key():
    official = random_official_state()
    with torch.device('meta'):
        model = visionmix.create_model(TINY)
    ours = checkpoint_filter_fn(unwrap_state_dict({'model': official}), model)
    assert len(ours) == len(official) == 415
    assert sorted(ours) == sorted(model.state_dict())
    assert ours['stages.2.blocks.3.token_mixer.height.fc1.weight'] is official['network.4.3.attn.mlp_h1.weight']
    assert ours['stages.3.downsample.norm.running_var'] is official['network.5.norm.running_var']
    assert ours['head.fc.bias'] is official['head.bias'] and ours['head.norm.weight'] is official['norm.weight']
    assert checkpoint_filter_fn(ours, model) == ours  # our own layout passes through


@torch.no_grad()
def test_official_checkpoint_loads_strict_and_round_trips(tmp_path):
    path = tmp_path / 'hire_mlp_tiny.pth'
    official = save_official(path)
    x = torch.randn(1, 3, 64, 64)
    via_checkpoint = visionmix.create_model(TINY, checkpoint_path=str(path)).eval()
    via_pretrained = visionmix.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    direct = visionmix.create_model(TINY).eval()
    direct.load_state_dict(checkpoint_filter_fn(official, direct), strict=True)
    expected = direct(x)
    assert torch.equal(via_checkpoint(x), expected)
    assert torch.equal(via_pretrained(x), expected)
    # every official tensor, BN statistics included, ends up in the model
    state = via_checkpoint.state_dict()
    assert torch.equal(state['stages.1.blocks.1.token_mixer.width.norm.running_mean'],
                       official['network.2.1.attn.mlp_w1_norm.running_mean'])
    assert int(state['stem.norm.num_batches_tracked']) == 1000


@torch.no_grad()
def test_official_checkpoint_with_other_num_classes(tmp_path):
    path = tmp_path / 'hire_mlp_tiny.pth'
    save_official(path)
    with pytest.warns(UserWarning, match='dropping classifier'):
        model = visionmix.create_model(TINY, num_classes=5, checkpoint_path=str(path))
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@torch.no_grad()
@pytest.mark.parametrize('size', [(97, 61), (33, 47), (16, 16), (7, 9)])
def test_any_input_size(tiny, size):
    # 16x16 leaves 1x1 maps in stage 3 (region size 3): the official code's circular F.pad fails there
    x = torch.randn(2, 3, *size)
    out = tiny(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    features = tiny.forward_features(x)
    assert features.shape[1] == 512


@torch.no_grad()
def test_batch_independent_in_eval(tiny):
    x = torch.randn(2, 3, 61, 97)
    assert torch.allclose(tiny(x)[1:], tiny(x[1:]), atol=1e-5)


def test_feature_info_and_features_only():
    model = visionmix.create_model(TINY, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [64, 128, 320, 512]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 97, 61))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 24, 15), (128, 12, 8), (320, 6, 4), (512, 3, 2)]


def test_prune_intermediate_layers(tiny):
    model = visionmix.create_model(TINY).eval()
    model.load_state_dict(tiny.state_dict())
    kept = model.prune_intermediate_layers(indices=[1])
    assert kept == [1] and len(model.stages) == 2 and model.num_features == 128
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        final, (inter,) = model.forward_intermediates(x, indices=[1])
        assert torch.equal(inter, expected) and torch.equal(final, expected)
        assert model(x).shape == (1, 128, 8, 8)


def test_group_matcher_covers_every_parameter(tiny):
    from timm.models import group_parameters

    groups = group_parameters(tiny, tiny.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(tiny.parameters()))
