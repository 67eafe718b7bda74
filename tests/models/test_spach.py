"""SPACH: exact sizes and MACs, official checkpoint layouts, MLP-Mixer equivalence, any input size, custom specs."""
import importlib.util
from pathlib import Path

import pytest
import timm
import torch

import visionmix
from visionmix.checkpoint import unwrap_state_dict
from official_keys import read_official_keys
from visionmix.layers.mixing import create_spatial_func
from visionmix.models.hire_mlp import HireMlpNet
from visionmix.models.spach import Spach, checkpoint_filter_fn, parse_net_arch
from visionmix.models.swin_mlp import SwinMlp
from visionmix.profile import count_macs, count_params


# the table: name -> (params at 1000 classes, GMACs at 224 or None where the table has none)
TABLE = {
    'spach_ms_xxs_patch4_224_conv': (5_085_224, 0.71),
    'spach_ms_xxs_patch4_224_attn': (2_372_744, 0.53),
    'spach_ms_xxs_patch4_224_mlp': (6_562_446, 0.93),
    'spach_ms_xs_patch4_224_conv': (17_302_120, 2.76),
    'spach_ms_xs_patch4_224_attn': (14_479_080, 3.08),
    'spach_ms_xs_patch4_224_mlp': (20_260_283, 3.41),
    'spach_ms_xs_patch4_224_hybrid': (27_956_584, 4.44),
    'spach_ms_s_patch4_224_conv': (43_576_168, 7.14),
    'spach_ms_s_patch4_224_attn': (39_537_544, 7.53),
    'spach_ms_s_patch4_224_mlp': (46_542_011, 8.01),
    'spach_ms_s_patch4_224_hybrid': (63_028_584, 11.05),
    'spach_ms_s_plus_patch4_224_hybrid': (63_138_728, 12.18),
    'spach_xxs_patch16_224_conv': (7_828_840, None),
    'spach_xxs_patch16_224_attn': (3_931_048, None),
    'spach_xxs_patch16_224_mlp': (8_307_184, None),
    'spach_xs_patch16_224_conv': (14_975_848, None),
    'spach_xs_patch16_224_attn': (14_938_984, None),
    'spach_xs_patch16_224_mlp': (15_932_536, None),
    'spach_s_patch16_224_conv': (38_854_120, None),
    'spach_s_patch16_224_attn': (32_507_368, None),
    'spach_s_patch16_224_mlp': (39_820_024, None),
}
FAST_MACS = {'spach_ms_xxs_patch4_224_conv', 'spach_ms_xxs_patch4_224_attn', 'spach_ms_xxs_patch4_224_mlp'}


def test_all_variants_registered():
    names = set(visionmix.list_models('spach*'))
    assert names == set(TABLE) | {'spach', 'spach_ms'}
    assert visionmix.model_card('spach_ms_s_patch4_224_hybrid').family == 'hybrid'
    assert visionmix.model_card('spach_ms_xxs_patch4_224_attn').family == 'transformer'
    assert visionmix.model_card('spach_xs_patch16_224_conv').family == 'conv'
    assert visionmix.model_card('spach_s_patch16_224_mlp').family == 'mlp'
    assert 'no constructor' in visionmix.model_card('spach_ms_s_plus_patch4_224_hybrid').notes
    assert isinstance(timm.create_model('spach_ms_xxs_patch4_224_conv', pretrained=False), Spach)


@pytest.mark.parametrize('name', sorted(TABLE))
def test_params_exact(name):
    with torch.device('meta'):
        model = visionmix.create_model(name)
    assert count_params(model) == TABLE[name][0] == visionmix.model_card(name).params


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=[] if n in FAST_MACS else pytest.mark.slow) for n in sorted(TABLE) if TABLE[n][1]])
def test_macs_within_2_percent(name):
    macs = count_macs(visionmix.create_model(name), (3, 224, 224)) / 1e9
    assert macs == pytest.approx(TABLE[name][1], rel=0.02)
    assert macs == pytest.approx(visionmix.model_card(name).gmacs, rel=0.01)


def test_pretrained_cfgs():
    cfg = timm.models.get_pretrained_cfg('spach_ms_s_plus_patch4_224_hybrid').to_dict()
    assert cfg['url'] == 'https://github.com/microsoft/SPACH/releases/download/v1.0/spach_ms_hybrid_s+.pth'
    assert cfg['pool_size'] == (7, 7) and cfg['first_conv'] == 'stem.proj.0' and cfg['classifier'] == 'head.fc'
    single = timm.models.get_pretrained_cfg('spach_xxs_patch16_224_mlp').to_dict()
    assert single['url'] == '' and single['pool_size'] == (14, 14) and single['fixed_input_size']


# ---- official checkpoints -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['spach_ms_xxs_patch4_224_mlp', 'spach_xxs_patch16_224_mlp'])
def test_official_layout_loads_strict(name, tmp_path):
    params, shapes = read_official_keys(name)
    sd = {k: torch.randn(s) for k, s in shapes.items()}
    path = tmp_path / 'official.pth'
    torch.save({'model': sd, 'epoch': 299}, path)
    model = visionmix.create_model(name, checkpoint_path=str(path))
    ours = model.state_dict()
    assert count_params(model) == params
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in sd.values())  # lossless
    assert torch.equal(ours['stem.norm.weight'], sd['norm1.weight'])
    assert torch.equal(ours['norm.bias'], sd['norm2.bias'])
    assert torch.equal(ours['head.fc.weight'], sd['head.weight'])
    if name.startswith('spach_ms'):
        # layer{s}.0 of s > 1 is the downsampling; the blocks follow it
        assert torch.equal(ours['stages.1.downsample.conv.weight'], sd['layer2.0.net.1.0.weight'])
        assert torch.equal(ours['stages.3.downsample.norm.bias'], sd['layer4.0.net.1.1.bias'])
        assert torch.equal(ours['stages.0.blocks.1.cpe.weight'], sd['layer1.1.cpe_net.net.1.weight'])
        assert torch.equal(ours['stages.2.blocks.0.token_mixer.fc1.weight'], sd['layer3.1.spatial_func.fc1.weight'])
        assert torch.equal(ours['stages.2.blocks.5.ls1.gamma'], sd['layer3.6.gamma_1'].flatten())
    else:
        assert torch.equal(ours['stages.0.blocks.11.mlp.fc2.weight'], sd['blocks.11.channel_func.fc2.weight'])
        assert torch.equal(ours['stages.0.blocks.3.token_mixer.fc2.bias'], sd['blocks.3.spatial_func.fc2.bias'])


def test_filter_passes_our_layout_through():
    model = visionmix.create_model('spach_ms_xxs_patch4_224_attn')
    sd = model.state_dict()
    out = checkpoint_filter_fn(unwrap_state_dict({'model': sd}), model)
    assert out.keys() == sd.keys() and all(out[k] is sd[k] for k in sd)


# ---- MLP-Mixer is this skeleton -------------------------------------------------------------------------------------

def mixer_to_spach(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm MlpMixer keys -> SPACH single-stage keys (a rename; no tensor changes)."""
    out = {}
    for k, v in sd.items():
        k = k.replace('mlp_tokens.', 'token_mixer.').replace('mlp_channels.', 'mlp.')
        k = 'stages.0.' + k if k.startswith('blocks.') else k
        out['head.fc.' + k[len('head.'):] if k.startswith('head.') else k] = v
    return out


def mixer_as_spach(embed_dim: int, depth: int, patch_size: int, img_size: int, num_classes: int = 1000) -> Spach:
    return visionmix.create_model(
        'spach', net_arch=[('mlp', depth)], embed_dim=embed_dim, patch_size=patch_size, img_size=img_size,
        token_hidden=embed_dim // 2, channel_ratio=4., cpe=False, layer_scale=False, stem_norm=False,
        num_classes=num_classes)


@torch.no_grad()
def test_mixer_equivalence_small():
    mixer = timm.models.mlp_mixer.MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=3, embed_dim=48).eval()
    ours = mixer_as_spach(48, 3, 8, 32, num_classes=10).eval()
    ours.load_state_dict(mixer_to_spach(mixer.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(ours(x), mixer(x))


@torch.no_grad()
def test_mixer_s16_224_equivalence():
    mixer = timm.create_model('mixer_s16_224').eval()
    params, shapes = read_official_keys('mixer_s16_224')
    assert {k: v.shape for k, v in mixer.state_dict().items()} == shapes
    ours = mixer_as_spach(512, 8, 16, 224).eval()
    ours.load_state_dict(mixer_to_spach(mixer.state_dict()), strict=True)
    assert count_params(ours) == params == 18_528_264
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(ours(x), mixer(x))


# ---- input sizes, features ------------------------------------------------------------------------------------------

@torch.no_grad()
def test_any_input_size_without_token_mlp():
    model = visionmix.create_model('spach_ms', depths=(1, 1, 1, 1), embed_dim=16,
                                   net_arch=[['pass', 1], ['attn', 1], ['shift', 1], ['hire', 1]]).eval()
    x = torch.randn(1, 3, 72, 40)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape for f in feats] == [(1, 16, 18, 10), (1, 32, 9, 5), (1, 64, 4, 2), (1, 128, 2, 1)]
    assert model(x).shape == (1, 1000)


def test_token_mlp_names_its_build_size():
    model = visionmix.create_model('spach_xxs_patch16_224_mlp', depths=(1,), img_size=64)
    model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r'built for 16 tokens, got a 5x5 map'):
        model(torch.randn(1, 3, 80, 80))


@torch.no_grad()
def test_features_only_stages_and_last_blocks():
    ms = visionmix.create_model('spach_ms_xxs_patch4_224_conv', features_only=True).eval()
    maps = ms(torch.randn(1, 3, 64, 64))
    assert [m.shape for m in maps] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    single = visionmix.create_model('spach_xxs_patch16_224_attn', depths=(6,))
    assert [f['module'] for f in single.feature_info] == [f'stages.0.blocks.{i}' for i in (2, 3, 4, 5)]
    extractor = visionmix.create_model('spach_xxs_patch16_224_attn', depths=(6,), features_only=True).eval()
    single.eval()
    x = torch.randn(1, 3, 64, 64)
    assert not extractor.model.load_state_dict(single.state_dict(), strict=False).missing_keys
    maps = extractor(x)
    assert len(maps) == 4 and all(m.shape == (1, 192, 4, 4) for m in maps)
    expected = single.stages[0].blocks[:6](single.stem(x)).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps[-1], expected)


def test_parse_net_arch_and_depths():
    assert parse_net_arch([['pass', 3], ['attn', 2, {'num_heads': 1}]]) == [
        [('pass', 3, {})], [('attn', 2, {'num_heads': 1})]]
    hybrid = [[('pass', 3)], [('pass', 2), ('attn', 2)], [('pass', 2), ('attn', 10)], [('pass', 1), ('attn', 2)]]
    shrunk = parse_net_arch(hybrid, depths=(2, 2, 2, 2))
    assert shrunk == [[('pass', 2, {})], [('pass', 1, {}), ('attn', 1, {})], [('pass', 1, {}), ('attn', 1, {})],
                      [('pass', 1, {}), ('attn', 1, {})]]
    with pytest.raises(ValueError, match='one entry per stage'):
        parse_net_arch(hybrid, depths=(2,))
    with pytest.raises(ValueError, match='a net_arch run is'):
        parse_net_arch([['pass', '3']])
    with pytest.raises(ValueError, match="unknown spatial function 'conv'; choose from"):
        visionmix.create_model('spach_ms', net_arch=[['conv', 1]] * 4)


def test_drop_path_schedules_follow_official():
    single = visionmix.create_model('spach_xxs_patch16_224_conv', depths=(3,), drop_path_rate=0.1)
    assert [b.drop_path.drop_prob for b in single.stages[0].blocks] == [0.1] * 3
    multi = visionmix.create_model('spach_ms_xxs_patch4_224_conv', depths=(1, 1, 1, 2), drop_path_rate=0.4)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0. for s in multi.stages for b in s.blocks]
    assert rates == pytest.approx([0., 0.1, 0.2, 0.3, 0.4])


def test_shared_spatial_function():
    model = visionmix.create_model('spach', net_arch=[('mlp', 3)], img_size=32, embed_dim=16, shared_spatial=True)
    blocks = model.stages[0].blocks
    assert blocks[0].token_mixer is blocks[2].token_mixer
    unshared = visionmix.create_model('spach', net_arch=[('mlp', 3)], img_size=32, embed_dim=16)
    assert count_params(unshared) - count_params(model) == 2 * count_params(blocks[0].token_mixer)
    with pytest.raises(ValueError, match='shared_spatial'):
        visionmix.create_model('spach_ms', shared_spatial=True, net_arch=[['pass', 1], ['pass', 1, ], ['attn', 1],
                                                                           [('pass', 1), ('attn', 1)]])


def test_zero_init_head_is_official_init():
    model = visionmix.create_model('spach_ms_xxs_patch4_224_attn', zero_init_head=True, depths=(1, 1, 1, 1))
    assert not model.head.fc.weight.any() and not model.head.fc.bias.any()
    gamma = model.stages[1].blocks[0].ls1.gamma
    assert torch.equal(gamma, torch.full_like(gamma, 1e-4))


# ---- hire / window_mlp compute what Hire-MLP and Swin-MLP compute ---------------------------------------------------

@torch.no_grad()
def test_hire_spatial_function_equals_hire_mlp_block():
    net = HireMlpNet(depths=(3, 1, 1, 1), dims=(16, 32, 32, 32)).eval()
    x = torch.randn(2, 16, 12, 10)
    for j in range(3):  # step schedule (j % 2) * 2 of stage 0
        reference = net.stages[0].blocks[j].token_mixer
        ours = create_spatial_func('hire', 16, block_idx=j, region_size=4, step_stride=2, step_dilation=2).eval()
        assert ours.fn.height.step == reference.height.step == (j % 2) * 2
        ours.fn.load_state_dict(reference.state_dict())
        assert torch.equal(ours(x.permute(0, 2, 3, 1)), reference(x).permute(0, 2, 3, 1))


@torch.no_grad()
def test_window_mlp_spatial_function_equals_swin_mlp_block():
    net = SwinMlp(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 2, 2), window_size=4).eval()
    x = torch.randn(2, 16, 16, 16)
    for j in range(2):  # plain window, then shifted by half a window
        reference = net.stages[0].blocks[j].spatial_mlp
        ours = create_spatial_func('window_mlp', 16, grid_size=(16, 16), block_idx=j, num_heads=2, window_size=4)
        assert ours.shift_size == reference.shift_size == ((0, 0), (2, 2))[j]
        ours.load_state_dict(reference.state_dict())
        assert torch.equal(ours(x), reference(x))
    clamped = create_spatial_func('window_mlp', 16, grid_size=(2, 2), block_idx=1, num_heads=2, window_size=4)
    assert clamped.window_size == (2, 2) and clamped.shift_size == (0, 0)  # as Swin-MLP's last stage


# ---- custom specs through the whole contract suite ------------------------------------------------------------------

def _load_contract():
    spec = importlib.util.spec_from_file_location('spach_contract', Path(__file__).parents[1] / 'test_contract.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_contract = _load_contract()
# one tiny model per spatial function beyond the official ones, at the suite's 64x64 input
CUSTOM_SPECS = {
    'hire': ('spach_ms', dict(embed_dim=16, num_heads=2, net_arch=[
        ['pass', 1], ['hire', 2, {'region_size': 2}], ['hire', 1], ['attn', 1]])),
    'window_mlp': ('spach_ms', dict(embed_dim=16, num_heads=2, img_size=64, spatial_kwargs={'window_size': 4},
                                    net_arch=[['pass', 1], ['window_mlp', 2], ['window_mlp', 2], ['window_mlp', 1]])),
    'shift': ('spach_ms', dict(embed_dim=16, num_heads=2, net_arch=[
        ['shift', 1], ['shift', 2], ['pass', 1], ['shift', 1]])),
    'shared_mlp_single_stage': ('spach', dict(embed_dim=32, num_heads=2, img_size=64, shared_spatial=True, net_arch=[
        ('mlp', 3)])),
}


@pytest.fixture(scope='module', params=list(CUSTOM_SPECS.values()), ids=list(CUSTOM_SPECS))
def built(request):
    case = request.param
    return case, _contract._build(case).eval()


test_custom_forward_backward = _contract.test_forward_backward
test_custom_features_and_head = _contract.test_features_and_head
test_custom_reset_classifier = _contract.test_reset_classifier_and_num_classes_zero
test_custom_pretrained_cfg = _contract.test_pretrained_cfg
test_custom_features_only = _contract.test_features_only
test_custom_forward_intermediates = _contract.test_forward_intermediates
test_custom_grad_checkpointing = _contract.test_grad_checkpointing_does_not_change_outputs
test_custom_export_and_fx = _contract.test_torch_export_and_fx
test_custom_compile = _contract.test_torch_compile_eager_backend
test_custom_checkpoint_round_trip = _contract.test_checkpoint_round_trip
test_custom_timm_create_model = _contract.test_timm_create_model_builds_it
