"""Swin-MLP: exact sizes and MACs, official checkpoint layout, any input size, timm integration."""
from pathlib import Path

import pytest
import timm
import torch

import visionmix
from visionmix.checkpoint import unwrap_state_dict
from official_keys import read_official_keys
from visionmix.models.swin_mlp import SwinMlp, checkpoint_filter_fn
from visionmix.profile import count_macs, count_params

TINY = 'swin_mlp_tiny_c24_patch4_window8_256'

# name: (params, GMACs at the card's input size, input side)
VARIANTS = {
    'swin_mlp_tiny_c24_patch4_window8_256': (20_386_632, 4.03, 256),
    'swin_mlp_tiny_c12_patch4_window8_256': (21_152_072, 4.03, 256),
    'swin_mlp_tiny_c6_patch4_window8_256': (22_682_952, 4.03, 256),
    'swin_mlp_base_patch4_window7_224': (60_659_416, 10.41, 224),
}


@pytest.fixture(scope='module')
def tiny() -> SwinMlp:
    torch.manual_seed(0)
    return visionmix.create_model(TINY).eval()


def random_official_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    _, shapes = read_official_keys('swin_mlp_tiny_c24_patch4_window8_256')
    sd = {k: torch.randn(shape) for k, shape in shapes.items()}
    torch.save({'model': sd}, path)
    return sd


def test_registered_in_timm_and_visionmix():
    assert set(visionmix.list_models('swin_mlp*')) == set(VARIANTS)
    model = timm.create_model(TINY)
    assert isinstance(model, SwinMlp)
    card = visionmix.model_card(TINY)
    assert card.family == 'mlp' and card.arxiv == '2103.14030' and card.params == VARIANTS[TINY][0]


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_params_exact(name):
    with torch.device('meta'):
        model = visionmix.create_model(name)
    assert count_params(model) == VARIANTS[name][0] == visionmix.model_card(name).params


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow) if 'base' in n else n for n in sorted(VARIANTS)])
def test_macs_within_2_percent(name):
    _, gmacs, size = VARIANTS[name]
    macs = count_macs(visionmix.create_model(name), (3, size, size)) / 1e9
    assert macs == pytest.approx(gmacs, rel=0.02)
    assert macs == pytest.approx(visionmix.model_card(name).gmacs, rel=1e-3)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    size = VARIANTS[name][2]
    assert cfg['url'] == f'https://github.com/SwinTransformer/storage/releases/download/v1.0.5/{name}.pth'
    assert cfg['input_size'] == (3, size, size) and cfg['pool_size'] == (size // 32, size // 32)
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic' and not cfg['fixed_input_size']
    assert cfg['first_conv'] == 'patch_embed.proj' and cfg['classifier'] == 'head.fc' and cfg['license'] == 'mit'


def test_stage_windows_follow_official_rule(tiny):
    # 256 -> stage maps 64, 32, 16, 8 with window 8: the last stage fits one window, so no shift there
    windows = [(s.blocks[1].spatial_mlp.window_size, s.blocks[1].spatial_mlp.shift_size) for s in tiny.stages]
    assert windows == [((8, 8), (4, 4))] * 3 + [((8, 8), (0, 0))]
    base = visionmix.create_model('swin_mlp_base_patch4_window7_224', depths=(2, 2, 2, 2))
    assert base.stages[3].blocks[1].spatial_mlp.shift_size == (0, 0)  # 7x7 map, window 7
    small = visionmix.create_model(TINY, img_size=128)  # stage 3 map 4x4: window clamps to 4
    assert small.stages[3].blocks[0].spatial_mlp.weight.shape == (32, 16, 16)
    assert small.stages[2].blocks[1].spatial_mlp.shift_size == (0, 0)  # 8x8 map, window 8


def test_fixture_matches_model():
    params, shapes = read_official_keys('swin_mlp_tiny_c24_patch4_window8_256')
    model = visionmix.create_model(TINY)
    assert params == count_params(model)
    assert len(shapes) == len(model.state_dict())


def test_official_layout_loads_strict_via_checkpoint_path(tmp_path):
    path = tmp_path / 'official.pth'
    sd = random_official_checkpoint(path)
    model = visionmix.create_model(TINY, checkpoint_path=str(path))
    ours = model.state_dict()
    # downsample moves from the end of stage i to the start of stage i + 1; head -> head.fc
    assert torch.equal(ours['stages.1.downsample.reduction.weight'], sd['layers.0.downsample.reduction.weight'])
    assert torch.equal(ours['stages.3.downsample.norm.bias'], sd['layers.2.downsample.norm.bias'])
    assert torch.equal(ours['head.fc.weight'], sd['head.weight'])
    assert torch.equal(ours['norm.weight'], sd['norm.weight'])
    # grouped Conv1d [heads * T, T, 1] -> [heads, T, T], row h * T + i is head h's output token i
    w = sd['layers.2.blocks.1.spatial_mlp.weight']
    assert torch.equal(ours['stages.2.blocks.1.spatial_mlp.weight'][3, 5], w[3 * 64 + 5, :, 0])
    assert torch.equal(ours['stages.2.blocks.1.spatial_mlp.bias'].flatten(), sd['layers.2.blocks.1.spatial_mlp.bias'])
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in sd.values())  # lossless


def test_official_layout_loads_via_pretrained_file(tmp_path):
    path = tmp_path / 'official.pth'
    sd = random_official_checkpoint(path)
    model = visionmix.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.state_dict()['stages.2.downsample.reduction.weight'],
                       sd['layers.1.downsample.reduction.weight'])
    assert torch.equal(model.state_dict()['head.fc.bias'], sd['head.bias'])


def test_filter_passes_our_layout_through(tiny):
    sd = tiny.state_dict()
    out = checkpoint_filter_fn(sd, tiny)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)
    assert checkpoint_filter_fn(unwrap_state_dict({'model': sd}), tiny).keys() == sd.keys()


@pytest.mark.parametrize('H, W', [(97, 61), (33, 45), (32, 32), (64, 200)])
def test_any_input_size(tiny, H, W):
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        logits = tiny(x)
        inter = tiny.forward_intermediates(x, intermediates_only=True)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    h, w = -(-H // 4), -(-W // 4)  # image padded to the patch size, maps to even sizes before merging
    for i, feat in enumerate(inter):
        assert feat.shape == (1, 96 * 2 ** i, h, w)
        h, w = -(-h // 2), -(-w // 2)


@pytest.mark.parametrize('H, W', [(64, 64), (61, 38)])
def test_patch_embed_equals_timm_patch_embed_and_returns_a_contiguous_nhwc_map(tiny, H, W):
    from timm.layers import PatchEmbed
    reference = PatchEmbed(img_size=256, patch_size=4, embed_dim=96, norm_layer=torch.nn.LayerNorm,
                           strict_img_size=False, dynamic_img_pad=True, output_fmt='NHWC')
    reference.load_state_dict(tiny.patch_embed.state_dict())
    x = torch.randn(2, 3, H, W, requires_grad=True)
    out = tiny.patch_embed(x)
    assert out.shape == (2, -(-H // 4), -(-W // 4), 96) and out.is_contiguous()
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-5)
    out.square().mean().backward()  # the channels-last conv is differentiable like the plain one
    grad = x.grad.clone()
    x.grad = None
    reference(x).square().mean().backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-7)


def test_padding_does_not_leak_between_images(tiny):
    """Batched and single-image results agree, so padding is per image."""
    x = torch.randn(2, 3, 97, 61)
    with torch.no_grad():
        torch.testing.assert_close(tiny(x)[1:], tiny(x[1:]), rtol=1e-4, atol=1e-5)


def test_features_only_nchw():
    model = visionmix.create_model(TINY, features_only=True).eval()
    feats = model(torch.randn(1, 3, 64, 64))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [f.shape for f in feats] == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]


def test_forward_intermediates_and_heads(tiny):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = tiny.forward_features(x)
        final, inter = tiny.forward_intermediates(x)
        assert tiny.output_fmt == 'NHWC' and feats.shape == (1, 2, 2, tiny.num_features)
        assert torch.equal(final, feats)
        torch.testing.assert_close(inter[-1], tiny.stages(tiny.patch_embed(x)).permute(0, 3, 1, 2))
        pooled = tiny.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pooled, feats.mean((1, 2)))
        torch.testing.assert_close(tiny.head.fc(pooled), tiny(x))


def test_reset_classifier_and_prune():
    model = visionmix.create_model(TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    model.reset_classifier(0)
    assert model(x).shape == (1, 768)
    model.reset_classifier(0, '')
    assert model(x).shape == (1, 2, 2, 768)
    assert visionmix.create_model(TINY, num_classes=0, global_pool='')(x).shape == (1, 2, 2, 768)
    model.reset_classifier(7, 'avg')
    assert model(x).shape == (1, 7)
    kept = model.prune_intermediate_layers(indices=(1,))
    assert kept == [1] and len(model.stages) == 2 and model.num_features == 192
    assert model.forward_intermediates(x, intermediates_only=True)[-1].shape == (1, 192, 8, 8)


def test_grad_checkpointing_same_result():
    model = visionmix.create_model(TINY, drop_path_rate=0.).eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert x.grad is not None and model.stages[0].blocks[1].spatial_mlp.weight.grad is not None


def test_group_matcher_covers_all_params(tiny):
    groups = timm.models.group_parameters(tiny, tiny.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(tiny.parameters()))
    assert tiny.no_weight_decay() == set()


@pytest.mark.filterwarnings('ignore:NOTE. The nodes obtained by tracing')
def test_fx_feature_extractor(tiny):
    from timm.models._features_fx import create_feature_extractor
    x = torch.randn(1, 3, 64, 64)
    extractor = create_feature_extractor(tiny, return_nodes={'stages.1': 'mid', 'head.fc': 'logits'})
    with torch.no_grad():
        out = extractor(x)
        torch.testing.assert_close(out['logits'], tiny(x))
    assert out['mid'].shape == (1, 8, 8, 192)


def test_torch_export(tiny):
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(tiny, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), tiny(x))


def test_drop_path_schedule():
    model = visionmix.create_model(TINY, drop_path_rate=0.2)
    rates = [getattr(b.drop_path1, 'drop_prob', 0.) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 12).tolist())
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for s in visionmix.create_model(TINY).stages
               for b in s.blocks)  # default 0: train() is deterministic
