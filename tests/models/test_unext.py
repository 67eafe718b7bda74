"""UNeXt: exact sizes and MACs, official layout, any input size, and the segmentation model contract.

UNeXt is excluded from the classification contract (tests/test_contract.py): it has no pooled features, no
``forward_head(features)`` from the bottleneck alone (the decoder needs the skips) and ``num_classes`` is the number
of output channels of dense logits. The checks that do apply are here: forward / backward, forward_features,
features_only / forward_intermediates, in_chans / num_classes, export, compile, checkpoint round trip, timm.
"""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import visionmix
from official_keys import read_official_keys
from visionmix.checkpoint import load_checkpoint, save_checkpoint, unwrap_state_dict
from visionmix.layers.shift import axial_shift
from visionmix.models.unext import UNeXt, checkpoint_filter_fn
from visionmix.profile import count_macs, count_params

# name: (params at num_classes=1, GMACs at 256, official key file, widths)
VARIANTS = {
    'unext': (1_471_921, 0.562, 'UNext_num_classes1_at224', (16, 32, 128, 160, 256)),
    'unext_s': (253_561, 0.099, 'UNext_S_num_classes1_at224', (8, 16, 32, 64, 128)),
}


def _build(name: str = 'unext_s', seed: int = 0, **kwargs) -> UNeXt:
    torch.manual_seed(seed)
    return visionmix.create_model(name, **kwargs).eval()


def _randomise_norms(model: torch.nn.Module) -> None:
    # fresh BN / LN are identities; random statistics make the checks see every parameter
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


@pytest.fixture(scope='module')
def small() -> UNeXt:
    model = _build()
    _randomise_norms(model)
    return model


def test_registered_with_cards():
    assert set(visionmix.list_models(family='segmentation')) >= set(VARIANTS)
    for name, (params, gmacs, _, _) in VARIANTS.items():
        card = visionmix.model_card(name)
        assert card.family == 'segmentation' and card.arxiv == '2203.04967' and len(card.code_commit) == 40
        assert card.params == params and card.input_size == (3, 256, 256)
        assert card.gmacs == pytest.approx(gmacs, rel=0.02)
        assert 'BCE' in card.notes and '0.5' in card.notes


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_params_exact(name):
    with torch.device('meta'):
        model = visionmix.create_model(name)
    params, _, fixture, _ = VARIANTS[name]
    assert count_params(model) == params == read_official_keys(fixture)[0]


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_macs_within_2_percent(name):
    macs = count_macs(visionmix.create_model(name).eval(), (3, 256, 256)) / 1e9
    assert macs == pytest.approx(VARIANTS[name][1], rel=0.02)
    assert macs == pytest.approx(visionmix.model_card(name).gmacs, rel=1e-3)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_official_layout_loads_strict(name, tmp_path):
    _, shapes = read_official_keys(VARIANTS[name][2])
    official = {k: (torch.tensor(7) if k.endswith('tracked') else torch.randn(s)) for k, s in shapes.items()}
    with torch.device('meta'):
        meta = visionmix.create_model(name)
    mapped = checkpoint_filter_fn(unwrap_state_dict({f'module.{k}': v for k, v in official.items()}), meta)
    assert len(mapped) == len(official) == 101
    path = tmp_path / 'model.pth'
    torch.save(official, path)  # the official training saves a bare state_dict
    model = visionmix.create_model(name, checkpoint_path=str(path))
    assert torch.equal(model.enc4.block.mlp.dwconv.weight, official['block1.0.mlp.dwconv.dwconv.weight'])
    assert torch.equal(model.dec2.norm.weight, official['dnorm4.weight'])
    assert torch.equal(model.head.weight, official['final.weight'])
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()


def test_token_shift_by_hand():
    # 5 channels, one per shift -2..2 along H of a (1, 4, 1, 5) map: out[h] = x[h - s], zero-filled
    x = torch.arange(1., 5.).view(1, 4, 1, 1).expand(1, 4, 1, 5).contiguous()
    out = axial_shift(x, 5, dim=1)[0, :, 0].T  # (channel, h)
    assert out.tolist() == [[3, 4, 0, 0], [2, 3, 4, 0], [1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 1, 2]]


@torch.no_grad()
@pytest.mark.parametrize('hw', [(32, 32), (33, 47), (97, 61)])
def test_any_input_size_pads_and_crops(small, hw):
    x = torch.randn(1, 3, *hw)
    out = small(x)
    assert out.shape == (1, 1, *hw)
    h, w = hw
    padded = F.pad(x, (0, (-w) % 32, 0, (-h) % 32))
    assert torch.equal(out, small(padded)[..., :h, :w])


@torch.no_grad()
def test_multiple_of_32_is_unpadded(small):
    x = torch.randn(1, 3, 64, 96)
    # eval runs channels-last (bit-identical only to the same layout's kernels), but nothing is padded
    maps = small._encode(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(small(x), small.forward_head(maps[-1], maps[:-1]))


def test_forward_backward_in_chans_num_classes():
    model = _build('unext_s', in_chans=1, num_classes=3).train()
    assert model.enc1.conv.in_channels == 1
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.shape == (2, 3, 64, 64)
    F.binary_cross_entropy_with_logits(out, torch.rand_like(out)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing and all(torch.isfinite(p.grad).all() for p in model.parameters())


@torch.no_grad()
def test_forward_features_and_intermediates(small):
    x = torch.randn(1, 3, 64, 64)
    bottleneck = small.forward_features(x)
    assert bottleneck.shape == (1, small.num_features, 2, 2)
    final, maps = small.forward_intermediates(x)
    assert torch.equal(final, bottleneck)
    assert [m.shape[1:] for m in maps] == [(8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    last_two = small.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and torch.equal(last_two[-1], maps[-1])
    odd = small.forward_intermediates(torch.randn(1, 3, 33, 47), intermediates_only=True)
    assert [m.shape[-2:] for m in odd] == [(17, 24), (9, 12), (5, 6), (3, 3), (2, 2)]


@torch.no_grad()
def test_features_only():
    extractor = visionmix.create_model('unext', features_only=True, out_indices=(1, 3)).eval()
    assert extractor.feature_info.channels() == [32, 160] and extractor.feature_info.reduction() == [4, 16]
    maps = extractor(torch.randn(1, 3, 64, 64))
    assert [m.shape[1:] for m in maps] == [(32, 16, 16), (160, 4, 4)]


def test_reset_classifier(small):
    model = _build()
    model.reset_classifier(4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    with pytest.raises(ValueError):
        model.reset_classifier(0)


def test_drop_path_schedule_follows_official():
    model = visionmix.create_model('unext_s', drop_path_rate=0.2)
    rates = [getattr(s.block.drop_path, 'drop_prob', 0.) for s in (model.enc4, model.enc5, model.dec1, model.dec2)]
    assert rates == pytest.approx([0., 0.1, 0., 0.1])


@torch.no_grad()
@pytest.mark.parametrize('hw', [(64, 64), pytest.param((40, 50), marks=pytest.mark.slow)])
def test_export_fx_and_compile(hw):
    small = _build()
    _randomise_norms(small)
    x = torch.randn(1, 3, *hw)
    expected = small(x)
    assert torch.allclose(torch.export.export(small, (x,)).module()(x), expected, atol=1e-5)
    _, eval_nodes = get_graph_node_names(small)
    fx_model = create_feature_extractor(small, return_nodes=[eval_nodes[-1]])
    assert torch.allclose(fx_model(x)[eval_nodes[-1]], expected, atol=1e-5)
    assert torch.allclose(torch.compile(small, backend='eager')(x), expected, atol=1e-5)


@torch.no_grad()
def test_checkpoint_round_trip(small, tmp_path):
    path = save_checkpoint(small, tmp_path / 'unext_s.safetensors')
    x = torch.randn(1, 3, 32, 32)
    fresh = _build(seed=1)
    load_checkpoint(fresh, path)
    assert torch.equal(fresh(x), small(x))


def test_timm_and_pretrained_cfg():
    assert isinstance(timm.create_model('unext', num_classes=2), UNeXt)
    cfg = timm.models.get_pretrained_cfg('unext').to_dict()
    assert cfg['num_classes'] == 1 and cfg['input_size'] == (3, 256, 256)
    assert cfg['first_conv'] == 'enc1.conv' and cfg['classifier'] == 'head'
