"""output_stride 8 / 16 / 32 and dilation='constant' / 'hdc' for every hierarchical family, HDC for timm ResNets, and
segmentation-models-pytorch's DeepLabV3+ on top of the ``tu-`` encoders.

Tiny widths and depths (passed through ``create_model`` and through smp's ``**kwargs``, which reach
``timm.create_model``), inputs of 64 x 96 px: the code paths are the full models', the cost is not.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import visionmix
from visionmix.checkpoint import save_checkpoint
from visionmix.dilation import hdc_check
from visionmix.errors import VisionmixError
from visionmix.layers.stride import hdc_stage_rates, plan_stages
from visionmix.models.dilated_resnet import dilate_timm_model, hdc_dilate_resnet
from visionmix.models.spach import SpachDownsample
from visionmix.models.swin_mlp import PatchMerging

MF_BLOCKS = (('D3', 2, 8, 2, 0), ('D3', 2, 16, 2, 2), ('D', 2, 16, 1, 2), ('D3', 2, 16, 2, 2), ('D', 2, 16, 1, 2),
             ('D3', 2, 24, 2, 2), ('D', 2, 24, 1, 2), ('D', 2, 24, 1, 2))
# stage 2: shift, window_mlp, hire; stage 3: shift, attn, attn (3 blocks each: an HDC group 1, 2, 5)
SPACH_ARCH = [[('pass', 1)], [('attn', 1)], [('shift', 1), ('window_mlp', 1), ('hire', 1)], [('shift', 1), ('attn', 2)]]
TINY = {
    'hire_mlp_tiny': dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 64)),
    'swin_mlp_tiny_c24_patch4_window8_256': dict(depths=(1, 1, 2, 2), embed_dim=16, img_size=64),
    'spach_ms': dict(net_arch=SPACH_ARCH, embed_dim=16, num_heads=2, img_size=64),
    'mobile_former_26m': dict(block_args=MF_BLOCKS, token_dim=32, head_hidden=64),
}
FAMILIES = list(TINY)
NOMINAL = {name: (2, 4, 8, 16, 32) if name.startswith('mobile_former') else (4, 8, 16, 32) for name in FAMILIES}
SCHEDULES = [(16, 'constant'), (16, 'hdc'), (8, 'constant'), (8, 'hdc')]

# Every k x k conv (or patch merging) whose dilation is not 1, per schedule; see each model's output_stride doc.
DILATED = {
    'hire_mlp_tiny': {
        (16, 'constant'): {}, (16, 'hdc'): {},
        (8, 'constant'): {'stages.3.downsample.conv': 2}, (8, 'hdc'): {},
    },
    'swin_mlp_tiny_c24_patch4_window8_256': {
        (16, 'constant'): {}, (16, 'hdc'): {},
        (8, 'constant'): {'stages.3.downsample': 2}, (8, 'hdc'): {},
    },
    'spach_ms': {
        (16, 'constant'): {'stages.3.blocks.0.cpe': 2, 'stages.3.blocks.0.token_mixer.dwconv': 2,
                           'stages.3.blocks.1.cpe': 2, 'stages.3.blocks.2.cpe': 2},
        (16, 'hdc'): {'stages.3.blocks.1.cpe': 2, 'stages.3.blocks.2.cpe': 5},
        (8, 'constant'): {'stages.2.blocks.0.cpe': 2, 'stages.2.blocks.0.token_mixer.dwconv': 2,
                          'stages.2.blocks.1.cpe': 2, 'stages.2.blocks.2.cpe': 2, 'stages.3.downsample.conv': 2,
                          'stages.3.blocks.0.cpe': 4, 'stages.3.blocks.0.token_mixer.dwconv': 4,
                          'stages.3.blocks.1.cpe': 4, 'stages.3.blocks.2.cpe': 4},
        (8, 'hdc'): {'stages.2.blocks.1.cpe': 2, 'stages.2.blocks.2.cpe': 5, 'stages.3.blocks.1.cpe': 2,
                     'stages.3.blocks.2.cpe': 5},
    },
    'mobile_former_26m': {
        (16, 'constant'): {'blocks.5.conv3.conv': 2, 'blocks.6.conv2.conv': 2, 'blocks.7.conv2.conv': 2},
        (16, 'hdc'): {'blocks.6.conv2.conv': 2, 'blocks.7.conv2.conv': 5},
        (8, 'constant'): {'blocks.3.conv3.conv': 2, 'blocks.4.conv2.conv': 2, 'blocks.5.conv1.conv': 2,
                          'blocks.5.conv3.conv': 4, 'blocks.6.conv2.conv': 4, 'blocks.7.conv2.conv': 4},
        (8, 'hdc'): {'blocks.4.conv2.conv': 2, 'blocks.6.conv2.conv': 2, 'blocks.7.conv2.conv': 5},
    },
}
# the blocks of each stage past stride 16 / 8 whose 3x3 convs stack (module prefixes)
DILATED_STAGES = {
    'spach_ms': {16: ['stages.3.'], 8: ['stages.2.', 'stages.3.']},
    'mobile_former_26m': {16: [('blocks.5.', 'blocks.6.', 'blocks.7.')],
                          8: [('blocks.3.', 'blocks.4.'), ('blocks.5.', 'blocks.6.', 'blocks.7.')]},
}


def _build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return visionmix.create_model(name, **{**TINY[name], **kwargs}).eval()


def _input(batch: int = 1, size: tuple[int, int] = (64, 96)) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


def _rates(model: nn.Module) -> dict[str, int]:
    """Dilation of every k x k conv / patch merging that is not 1."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1 and m.dilation[0] != 1:
            out[name] = m.dilation[0]
        elif isinstance(m, PatchMerging) and m.dilation != 1:
            out[name] = m.dilation
    return out


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert '\n' not in message and message
    return message


# ------------------------------------------------------------------------------------------------ strides, maps

@pytest.mark.parametrize('output_stride', [8, 16, 32])
@pytest.mark.parametrize('name', FAMILIES)
@torch.no_grad()
def test_feature_strides_are_real(name, output_stride):
    x = _input()
    expected = [min(r, output_stride) for r in NOMINAL[name]]
    extractor = _build(name, features_only=True, output_stride=output_stride)
    assert extractor.feature_info.reduction() == expected
    maps = extractor(x)
    assert [tuple(m.shape[2:]) for m in maps] == [(64 // r, 96 // r) for r in expected]
    model = _build(name, output_stride=output_stride)  # the classifier path takes it too
    assert [f['reduction'] for f in model.feature_info] == expected
    final, intermediates = model.forward_intermediates(x)
    assert [tuple(m.shape[2:]) for m in intermediates] == [(64 // r, 96 // r) for r in expected]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(intermediates, maps))
    assert model(x).shape == (1, 1000)


@pytest.mark.parametrize('name', FAMILIES)
@torch.no_grad()
def test_output_stride_32_is_the_unchanged_model(name):
    x = _input()
    default = _build(name, features_only=True)
    for dilation in ('constant', 'hdc'):
        same = _build(name, features_only=True, output_stride=32, dilation=dilation)
        assert all(torch.equal(a, b) for a, b in zip(default(x), same(x)))
    assert torch.equal(_build(name)(x), _build(name, output_stride=32)(x))
    # None is timm's "default" (timm.create_model drops None kwargs; the classes read it the same way)
    assert torch.equal(_build(name)(x), _build(name, output_stride=None, dilation=None)(x))


@pytest.mark.parametrize('name', FAMILIES)
def test_state_dict_is_the_same_at_every_stride(name, tmp_path):
    reference = _build(name, output_stride=32)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    path = save_checkpoint(reference, tmp_path / f'{name}.safetensors')
    x = _input()
    for output_stride, dilation in SCHEDULES:
        model = _build(name, seed=1, output_stride=output_stride, dilation=dilation)
        assert {k: v.shape for k, v in model.state_dict().items()} == shapes
        model.load_state_dict(reference.state_dict(), strict=True)
        loaded = visionmix.create_model(name, checkpoint_path=str(path), output_stride=output_stride,
                                        dilation=dilation, **TINY[name]).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


@pytest.mark.slow  # 5-20 s per family, mostly torch.export
@pytest.mark.parametrize('name', FAMILIES)
@torch.no_grad()
def test_dilated_models_export_trace_and_compile(name):
    model = _build(name, output_stride=8, dilation='hdc')
    x = _input()
    expected = model(x)
    assert torch.allclose(torch.export.export(model, (x,)).module()(x), expected, atol=1e-5)
    _, nodes = get_graph_node_names(model)
    assert torch.allclose(create_feature_extractor(model, return_nodes=[nodes[-1]])(x)[nodes[-1]], expected, atol=1e-5)
    assert torch.allclose(torch.compile(model, backend='eager')(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- rates

@pytest.mark.parametrize('schedule', SCHEDULES, ids=[f'{s}-{d}' for s, d in SCHEDULES])
@pytest.mark.parametrize('name', FAMILIES)
def test_dilation_rates(name, schedule):
    output_stride, dilation = schedule
    model = _build(name, output_stride=output_stride, dilation=dilation)
    assert _rates(model) == DILATED[name][schedule]
    for m in model.modules():  # every dilated 3x3 keeps the map size
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1):
            assert m.padding == m.dilation


@pytest.mark.parametrize('output_stride', [8, 16])
@pytest.mark.parametrize('name', list(DILATED_STAGES))
def test_hdc_stages_are_gridding_free(name, output_stride):
    model = _build(name, output_stride=output_stride, dilation='hdc')
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    for prefixes in DILATED_STAGES[name][output_stride]:
        # the convs that run one after the other (SPACH: the CPE; the shift conv runs beside it)
        rates = [m.dilation[0] for n, m in convs if n.startswith(prefixes) and not n.endswith('token_mixer.dwconv')]
        assert len(rates) > 1 and rates[0] == 1
        assert hdc_check(rates).ok, (prefixes, rates)


def test_hdc_schedule():
    assert hdc_stage_rates(6, 2) == (1, 2, 5, 1, 2, 5)
    assert hdc_stage_rates(3, 4) == (1, 2, 5)
    assert hdc_stage_rates(6, 4) == (1, 2, 5, 9, 1, 2)
    assert hdc_stage_rates(2, 1) == (1, 1) and hdc_stage_rates(0, 2) == ()
    for n in range(1, 25):
        for rate in (2, 4):
            rates = hdc_stage_rates(n, rate)
            assert hdc_check(rates).ok
            if n >= 3 + (rate == 4):  # a whole group sees at least the constant schedule's field
                group = 3 if rate == 2 else 4
                assert sum(rates[:group]) >= rate * group
    plans = plan_stages((1, 2, 2, 2), (3, 4, 6, 3), 8, 'constant', 4)
    assert [(p.stride, p.reduction, p.first_rate, p.rates) for p in plans] == [
        (1, 4, 1, (1,) * 3), (2, 8, 1, (1,) * 4), (1, 8, 1, (2,) * 6), (1, 8, 2, (4,) * 3)]


def test_swin_windows_on_the_larger_map():
    # built for 64 px: stage grids 16, 8, 4, 2 -> windows 8, 8, 4, 2; only stage 0 holds several windows at 32
    def windows(model):
        return [(s.blocks[1].spatial_mlp.window_size[0], s.blocks[1].spatial_mlp.shift_size[0]) for s in model.stages]

    name = 'swin_mlp_tiny_c24_patch4_window8_256'
    kwargs = dict(depths=(2, 2, 2, 2))
    assert windows(_build(name, **kwargs)) == [(8, 4), (8, 0), (4, 0), (2, 0)]
    assert windows(_build(name, output_stride=16, **kwargs)) == [(8, 4), (8, 0), (4, 0), (2, 1)]
    assert windows(_build(name, output_stride=8, **kwargs)) == [(8, 4), (8, 0), (4, 2), (2, 1)]


@torch.no_grad()
def test_stride_one_downsamplers_subsample_to_the_stride_two_ones():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 6)  # channels-last maps
    merge = PatchMerging(6, 12)
    dense = PatchMerging(6, 12, stride=1, dilation=1)
    dense.load_state_dict(merge.state_dict())
    assert dense(x).shape == (2, 8, 12, 12)
    assert torch.allclose(dense(x)[:, ::2, ::2], merge(x), atol=1e-6)
    conv = SpachDownsample(6, 12)
    dense = SpachDownsample(6, 12, stride=1, dilation=1)
    dense.load_state_dict(conv.state_dict())
    assert dense(x).shape == (2, 8, 12, 12)
    # GroupNorm's statistics cover the whole map, so compare before it
    dense.norm = conv.norm = nn.Identity()
    assert torch.allclose(dense(x)[:, ::2, ::2], conv(x), atol=1e-6)
    assert PatchMerging(6, 12, stride=1, dilation=2)(x).shape == (2, 8, 12, 12)
    assert SpachDownsample(6, 12, stride=1, dilation=2)(x).shape == (2, 8, 12, 12)


# ---------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize('output_stride', [4, 12, 64, '16', True, 16.0])
def test_bad_output_stride_is_one_line(output_stride):
    with pytest.raises(VisionmixError, match='output_stride must be 8, 16 or 32') as excinfo:
        _build('hire_mlp_tiny', output_stride=output_stride)
    _one_line(excinfo)


@pytest.mark.parametrize('dilation', ['linear', 'HDC', 2])
def test_bad_dilation_is_one_line(dilation):
    with pytest.raises(VisionmixError, match="dilation must be 'constant'") as excinfo:
        _build('mobile_former_26m', output_stride=16, dilation=dilation)
    _one_line(excinfo)


def test_spach_token_mlp_past_the_stride_is_one_line():
    kwargs = dict(embed_dim=16, num_heads=2, img_size=64)
    arch = [['pass', 1], ['mlp', 1], ['attn', 1], ['mlp', 1]]
    with pytest.raises(VisionmixError, match=r"stage 3 uses the token MLP \('mlp'\), whose weights are tied to its "
                                             r"2x2 token grid: output_stride=16 would run it on 4x4") as excinfo:
        visionmix.create_model('spach_ms', net_arch=arch, output_stride=16, **kwargs)
    _one_line(excinfo)
    with pytest.raises(VisionmixError, match='stage 2 uses the token MLP'):
        visionmix.create_model('spach_ms', net_arch=[['pass', 1], ['pass', 1], ['mlp', 1], ['attn', 1]],
                               output_stride=8, **kwargs)
    # a token MLP before the output stride keeps its grid: fine
    model = visionmix.create_model('spach_ms', net_arch=[['pass', 1], ['mlp', 1], ['attn', 1], ['attn', 1]],
                                   output_stride=8, features_only=True, **kwargs)
    assert [m.shape[-1] for m in model(torch.randn(1, 3, 64, 64))] == [16, 8, 8, 8]


@torch.no_grad()
def test_single_stage_spach_runs_at_its_patch_stride():
    kwargs = dict(net_arch=[['pass', 2]], embed_dim=16, num_heads=2)
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    default = visionmix.create_model('spach', **kwargs).eval()
    torch.manual_seed(0)
    assert torch.equal(visionmix.create_model('spach', output_stride=16, **kwargs).eval()(x), default(x))
    with pytest.raises(VisionmixError, match='the stem already reduces the input by 16') as excinfo:
        visionmix.create_model('spach', output_stride=8, **kwargs)
    _one_line(excinfo)


# ------------------------------------------------------------------------------------------------ timm ResNet

@pytest.mark.parametrize('output_stride', [8, 16])
@pytest.mark.parametrize('name', ['resnet50', 'resnet18'])
@torch.no_grad()
def test_hdc_resnet(name, output_stride):
    x = _input()
    constant = timm.create_model(name, output_stride=output_stride).eval()
    model = hdc_dilate_resnet(timm.create_model(name, output_stride=output_stride), output_stride).eval()
    bottleneck = name == 'resnet50'
    depths = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    for i, depth in enumerate(depths, start=1):
        layer = getattr(model, f'layer{i}')
        dilated = i == 4 or (i == 3 and output_stride == 8)
        expected = hdc_stage_rates(depth, 2 if i == 3 or output_stride == 16 else 4) if dilated else (1,) * depth
        for block, rate in zip(layer, expected):
            convs = [block.conv2] if bottleneck else [block.conv1, block.conv2]
            assert all(c.dilation == (rate, rate) and c.padding == (rate, rate) for c in convs)
        stack = [c.dilation[0] for b in layer for c in ([b.conv2] if bottleneck else [b.conv1, b.conv2])]
        assert hdc_check(stack).ok
    # timm's constant rates, which hdc_dilate_resnet replaces: the last block of layer4 at 2 (16) or 4 (8)
    assert constant.layer4[-1].conv2.dilation == (32 // output_stride,) * 2
    assert model.forward_features(x).shape == constant.forward_features(x).shape
    assert model.forward_features(x).shape[-2:] == (64 // output_stride, 96 // output_stride)
    extractor = hdc_dilate_resnet(timm.create_model(name, output_stride=output_stride, features_only=True),
                                  output_stride).eval()
    assert [m.shape for m in extractor(x)] == [m.shape for m in timm.create_model(
        name, output_stride=output_stride, features_only=True).eval()(x)]
    assert extractor.layer4[-1].conv2.dilation == model.layer4[-1].conv2.dilation


def test_hdc_resnet_errors_are_one_line():
    with pytest.raises(VisionmixError, match='needs a ResNet of timm.models.resnet') as excinfo:
        hdc_dilate_resnet(timm.create_model('mobilenetv2_100'), 8)
    _one_line(excinfo)
    with pytest.raises(VisionmixError, match=r'built with output_stride=32: build it with timm.create_model\(name, '
                                             r'output_stride=8\)') as excinfo:
        hdc_dilate_resnet(timm.create_model('resnet18'), 8)
    _one_line(excinfo)
    with pytest.raises(VisionmixError, match='output_stride must be'):
        hdc_dilate_resnet(timm.create_model('resnet18', output_stride=16), 4)
    model = timm.create_model('resnet18')
    assert hdc_dilate_resnet(model, 32) is model and _rates(model) == {}


def test_dilate_timm_model_is_the_create_model_route():
    model = timm.create_model('resnet18', output_stride=16)
    assert dilate_timm_model(model, 16, 'constant') is model and set(_rates(model).values()) == {2}
    assert dilate_timm_model(model, 16, 'hdc') is model and _rates(model) == {'layer4.1.conv1': 2, 'layer4.1.conv2': 2}
    other = timm.create_model('mobilenetv2_100', output_stride=16)
    assert dilate_timm_model(other, 16, None) is other
    with pytest.raises(VisionmixError, match='needs a ResNet'):
        dilate_timm_model(other, 16, 'hdc')
    with pytest.raises(VisionmixError, match="dilation must be 'constant'"):
        dilate_timm_model(model, 16, 'sawtooth')


# ------------------------------------------------------------------------------------------- smp DeepLabV3+

def _deeplab(name: str, output_stride: int, **kwargs) -> nn.Module:
    smp = pytest.importorskip('segmentation_models_pytorch')
    torch.manual_seed(0)
    return smp.DeepLabV3Plus(encoder_name=f'tu-{name}', encoder_weights=None, encoder_output_stride=output_stride,
                             classes=3, decoder_channels=16, **kwargs)


def _check_deeplab(model: nn.Module, output_stride: int, size: int = 64) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))  # ASPP pooling BN needs batch 2
    features = model.encoder(x)
    assert features[-1].shape[-1] == size // output_stride  # the decoder's ASPP reads the map at the output stride
    out = model(x)
    assert out.shape == (2, 3, size, size)
    out.square().mean().backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize('output_stride', [8, 16])
@pytest.mark.parametrize('name', FAMILIES)
def test_smp_deeplabv3plus(name, output_stride):
    # smp passes its **kwargs to timm.create_model: the tiny settings reach the encoder
    model = _deeplab(name, output_stride, **TINY[name])
    _check_deeplab(model, output_stride)


def test_smp_deeplabv3plus_hdc():
    model = _deeplab('mobile_former_26m', 8, dilation='hdc', **TINY['mobile_former_26m'])
    assert sorted(set(_rates(model.encoder).values())) == [2, 5]
    _check_deeplab(model, 8)


def test_smp_resnet_encoder_takes_hdc_after_the_fact():
    # smp hands its kwargs to timm, whose ResNet takes no `dilation`: re-dilate the built encoder instead
    model = _deeplab('resnet18', 8)
    hdc_dilate_resnet(model.encoder.model, 8)
    assert model.encoder.model.layer3[1].conv2.dilation == (2, 2)
    _check_deeplab(model, 8)


def test_smp_token_mlp_error_reaches_the_user():
    with pytest.raises(VisionmixError, match='token MLP') as excinfo:
        _deeplab('spach_ms_xxs_patch4_224_mlp', 16, img_size=64)
    _one_line(excinfo)


@pytest.mark.parametrize('name', ['hire_mlp_tiny', 'swin_mlp_tiny_c24_patch4_window8_256',
                                  'spach_ms_xxs_patch4_224_conv', 'spach_ms_xxs_patch4_224_attn', 'mobile_former_26m'])
def test_smp_deeplabv3plus_registered_variants(name):
    # the registered sizes, untouched (0.3-1.5 s each at 64 px)
    _check_deeplab(_deeplab(name, 16), 16)
