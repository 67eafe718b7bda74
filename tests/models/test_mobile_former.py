"""Mobile-Former: exact sizes and MACs, official checkpoint layout, the fixes over the official code, any size."""
import pytest
import timm
import torch
import torch.nn.functional as F

import visionmix
from visionmix.checkpoint import unwrap_state_dict
from official_keys import read_official_keys
from visionmix.layers.bridge import Former, FormerToMobile, MobileToFormer
from visionmix.layers.dyrelu import DynamicReLU
from visionmix.models.mobile_former import (ConvBn, MobileFormer, channel_shuffle, checkpoint_filter_fn,
                                            conv_dynamic_relu)
from visionmix.profile import count_macs, count_params

SMALL = 'mobile_former_26m'

# name: (params, our GMACs at 224, published MAdds, top-1)
VARIANTS = {
    'mobile_former_26m': (3_232_788, 0.02355, 0.026, 64.0),
    'mobile_former_52m': (3_469_092, 0.04929, 0.052, 68.7),
    'mobile_former_96m': (4_585_252, 0.09202, 0.096, 72.8),
    'mobile_former_151m': (7_595_828, 0.14625, 0.151, 75.2),
    'mobile_former_214m': (9_425_920, 0.20837, 0.214, 76.7),
    'mobile_former_294m': (11_422_648, 0.28673, 0.294, 77.9),
    'mobile_former_508m': (13_976_976, 0.49847, 0.508, 79.3),
}


@pytest.fixture(scope='module')
def small() -> MobileFormer:
    torch.manual_seed(0)
    return visionmix.create_model(SMALL).eval()


def random_official_state() -> dict[str, torch.Tensor]:
    _, shapes = read_official_keys(SMALL)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith('num_batches_tracked'):
            sd[k] = torch.tensor(1000)
        elif k.endswith('running_var'):
            sd[k] = torch.rand(shape) + 0.5
        else:
            sd[k] = torch.randn(shape) * 0.1
    return sd


def test_registered_with_cards():
    assert set(visionmix.list_models('mobile_former*')) == set(VARIANTS)
    for name, (params, gmacs, paper, top1) in VARIANTS.items():
        card = visionmix.model_card(name)
        assert card.family == 'hybrid' and card.arxiv == '2108.05895' and len(card.code_commit) == 40
        assert (card.params, card.gmacs, card.paper_gmacs, card.top1) == (params, gmacs, paper, top1)
        assert 'MAdds' in card.notes


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_params_exact(name):
    with torch.device('meta'):
        model = visionmix.create_model(name)
    assert count_params(model) == VARIANTS[name][0]


def test_fixture_matches_official_param_count():
    params, shapes = read_official_keys(SMALL)
    counted = sum(s.numel() for k, s in shapes.items() if not k.endswith(('running_mean', 'running_var', 'tracked')))
    assert params == counted == VARIANTS[SMALL][0]


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n != SMALL else n for n in VARIANTS])
def test_macs(name):
    macs = count_macs(visionmix.create_model(name).eval(), (3, 224, 224)) / 1e9
    assert macs == pytest.approx(VARIANTS[name][1], rel=2e-3)
    # conv + matmul + attention MACs sit below the published MAdds, which count more kinds of work
    assert 0.88 < macs / VARIANTS[name][2] < 1.0


def test_official_layout_loads_strict(small):
    official = random_official_state()
    ours = checkpoint_filter_fn(unwrap_state_dict({'state_dict': {f'module.{k}': v for k, v in official.items()}}),
                                small)
    assert len(ours) == len(official) == 460
    model = visionmix.create_model(SMALL)
    model.load_state_dict(ours, strict=True)
    assert torch.equal(model.tokens, official['tokens.weight'])
    v = model.blocks[1].bridges.former_to_mobile.v
    assert torch.equal(v.weight, official['features.1.global_local.proj.weight'])
    assert torch.equal(model.blocks[1].act2.fc2.weight, official['features.1.hyper2.hyper.2.weight'])
    assert torch.equal(model.head.classifier.weight, official['classifier.classifier.1.weight'])
    # our own layout passes through unchanged
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()


def test_load_official_file_through_create_model(tmp_path):
    official = random_official_state()
    path = tmp_path / 'mobile-former-26m.pth.tar'
    torch.save({'state_dict': official, 'epoch': 450}, path)
    model = visionmix.create_model(SMALL, checkpoint_path=str(path))
    assert torch.equal(model.conv_head.conv.weight, official['classifier.conv.1.weight'])


def test_construction_prints_nothing(capsys):
    visionmix.create_model('mobile_former_96m', drop_path_rate=0.1)
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err == ''


def test_drop_path_rates_are_separate():
    with torch.device('meta'):
        tokens_only = visionmix.create_model('mobile_former_52m', drop_path_rate=0.2)
        cnn_only = visionmix.create_model('mobile_former_52m', cnn_drop_path_rate=0.3)
    n = len(tokens_only.blocks)
    bridged = [i for i, b in enumerate(tokens_only.blocks) if b.bridges is not None]
    for i in bridged:
        b, c = tokens_only.blocks[i], cnn_only.blocks[i]
        assert b.bridges.former.drop_path.drop_prob == pytest.approx(0.2 * (i + 1) / n)
        assert isinstance(b.drop_path, torch.nn.Identity)
        assert c.drop_path.drop_prob == pytest.approx(0.3 * (i + 1) / n)
        assert isinstance(c.bridges.mobile_to_former.drop_path, torch.nn.Identity)


def test_batch_size_one_training_step():
    torch.manual_seed(0)
    model = visionmix.create_model(SMALL, num_classes=5).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = model.head.norm.running_mean.clone()
    loss = F.cross_entropy(model(torch.randn(1, 3, 64, 64)), torch.tensor([3]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    # one sample has no batch statistics: the classifier BN uses (and keeps) its running ones
    assert torch.equal(model.head.norm.running_mean, stats)
    assert model.blocks[0].conv_dw.bn.num_batches_tracked == 1
    # ... and batches of two still use batch statistics
    model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(model.head.norm.running_mean, stats)


def test_batch_one_head_norm_equals_eval(small):
    norm = small.head.norm
    x = torch.randn(1, norm.num_features)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        expected = norm.eval()(x)
        got = norm.train()(x)
    norm.eval()
    assert torch.allclose(got, expected)


@pytest.mark.parametrize('hw', [(32, 32), (33, 47), (97, 61)])
@torch.no_grad()
def test_any_input_size(small, hw):
    x = torch.randn(1, 3, *hw)
    assert small(x).shape == (1, 1000)
    maps = small.forward_intermediates(x, intermediates_only=True)
    h, w = hw
    for fmap, r in zip(maps, (2, 4, 8, 16, 32)):
        assert fmap.shape[-2:] == (-(-h // r), -(-w // r))


@torch.no_grad()
def test_features_only_and_tokens(small):
    x = torch.randn(2, 3, 64, 64)
    extractor = visionmix.create_model('mobile_former_151m', features_only=True)
    assert extractor.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert extractor.feature_info.channels() == [12, 16, 32, 88, 128]
    assert [m.shape[1:] for m in extractor(x)] == [(12, 32, 32), (16, 16, 16), (32, 8, 8), (88, 4, 4), (128, 2, 2)]
    final, maps, tokens = small.forward_intermediates(x, return_tokens=True)
    assert torch.allclose(final, small.forward_features(x))
    assert len(maps) == len(tokens) == 5 and all(t.shape == (2, 3, 128) for t in tokens)
    assert torch.equal(tokens[0][0], small.tokens)
    # forward_features carries token 0 (after the last bridge) as constant channels
    last = small.mobile_to_former(maps[-1], tokens[-1])[:, 0]
    assert torch.allclose(final[:, -128:, 1, 1], last, atol=1e-6)


@torch.no_grad()
def test_head_shapes(small):
    x = torch.randn(2, 3, 64, 64)
    features = small.forward_features(x)
    assert features.shape[1] == small.num_features == 96 * 6 + 128
    assert small.forward_head(features, pre_logits=True).shape == (2, 1024) and small.head_hidden_size == 1024
    # timm's convention: num_classes=0 drops only the classifier, so forward gives the pre-logits vector
    headless = visionmix.create_model(SMALL, num_classes=0).eval()
    assert headless.head_hidden_size == 1024 and headless(x).shape == (2, 1024)
    unpooled = visionmix.create_model(SMALL, num_classes=0, global_pool='').eval()
    assert unpooled.head.fc is None and unpooled(x).shape == features.shape


def test_channel_shuffle_order():
    x = torch.arange(6.).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0., 3., 1., 4., 2., 5.]


@torch.no_grad()
def test_bridges_against_explicit_attention():
    torch.manual_seed(0)
    B, C, H, W, T, D = 2, 4, 3, 5, 3, 8
    x, tokens = torch.randn(B, C, H, W), torch.randn(B, T, D)
    m2f = MobileToFormer(C, D, num_heads=2)
    q = m2f.q(tokens)
    feats = x.flatten(2).transpose(1, 2)  # B, HW, C
    heads = []
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        attn = (q[..., sl] @ feats[..., sl].transpose(1, 2) * 2 ** -0.5).softmax(-1)
        heads.append(attn @ feats[..., sl])
    out = torch.cat(heads, -1) * F.hardsigmoid(m2f.alpha(tokens)) * 2
    assert torch.allclose(m2f(x, tokens), m2f.norm(tokens + m2f.proj(out)), atol=1e-6)

    f2m = FormerToMobile(C, D, num_heads=2)
    k, v = f2m.k(tokens), f2m.v(tokens)
    heads = []
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        attn = (feats[..., sl] @ k[..., sl].transpose(1, 2) * 2 ** -0.5).softmax(-1)
        heads.append(attn @ v[..., sl])
    expected = x + torch.cat(heads, -1).transpose(1, 2).reshape(B, C, H, W)
    assert torch.allclose(f2m(x, tokens), expected, atol=1e-6)

    former = Former(D, num_heads=4)
    t = torch.randn(B, T, D)
    q = former.q(t)
    heads = [(q[..., 2 * h:2 * h + 2] @ t[..., 2 * h:2 * h + 2].transpose(1, 2) * 2 ** -0.5).softmax(-1)
             @ t[..., 2 * h:2 * h + 2] for h in range(4)]
    mid = former.norm1(t + former.proj(torch.cat(heads, -1)))
    expected = former.norm2(mid + former.fc2(F.gelu(former.fc1(mid))))
    assert torch.allclose(former(t), expected, atol=1e-6)


def test_conv_bn_eval_fold_equals_conv_then_bn():
    torch.manual_seed(0)
    for groups in (1, 2, 8):
        block = ConvBn(8, 16, 3, 2, groups=groups)
        with torch.no_grad():
            block.bn.running_mean.uniform_(-1, 1)
            block.bn.running_var.uniform_(0.5, 2)
            block.bn.weight.uniform_(0.5, 1.5)
            block.bn.bias.uniform_(-1, 1)
        block.eval()
        x = torch.randn(2, 8, 9, 7)
        assert torch.allclose(block(x), block.bn(block.conv(x)), atol=1e-5)
        block.train()  # training still normalises with the batch statistics and updates them
        before = block.bn.running_mean.clone()
        out = block(x)
        assert torch.allclose(out.mean((0, 2, 3)), block.bn.bias, atol=1e-5)
        assert not torch.equal(before, block.bn.running_mean)


@pytest.mark.parametrize('in_chs,out_chs,stride,dilation', [(8, 8, 1, 1), (8, 16, 2, 1), (6, 24, 1, 2)])
def test_depthwise_conv_takes_the_dynamic_relu_scale(in_chs, out_chs, stride, dilation):
    # eval: the activation's per-sample positive slope goes into per-sample depthwise weights (channel multiplier
    # out / in incl.); the result must equal the conv, then the dynamic ReLU
    torch.manual_seed(0)
    conv = ConvBn(in_chs, out_chs, 3, stride, groups=in_chs, dilation=dilation)
    act = DynamicReLU(out_chs, 16)
    with torch.no_grad():
        conv.bn.running_mean.uniform_(-1, 1)
        conv.bn.running_var.uniform_(0.5, 2)
        act.fc2.bias.uniform_(-3, 3)  # slopes of both signs, some hard-sigmoids saturated
    conv.eval()
    x, token, scale = torch.randn(3, in_chs, 10, 9), torch.randn(3, 16), torch.rand(3, out_chs)
    assert conv.scales_by_sample()
    assert torch.allclose(conv.forward_scaled(x, scale), conv(x) * scale[:, :, None, None], atol=1e-5)
    assert torch.allclose(conv_dynamic_relu(conv, act, x, token), act(conv(x), token), atol=1e-5)
    conv.train()  # training: the plain path (batch statistics), gradients reach every parameter
    assert not conv.scales_by_sample()
    conv_dynamic_relu(conv, act, x, token).square().sum().backward()
    assert all(p.grad is not None for p in (*conv.parameters(), *act.parameters()))
    assert not ConvBn(8, 16, 3, groups=2).eval().scales_by_sample()  # not depthwise: the plain path


@pytest.mark.parametrize('name', ['mobile_former_26m', 'mobile_former_151m'])  # grouped + shuffled / ungrouped
def test_fused_eval_path_equals_the_plain_one(name, monkeypatch):
    from visionmix.models import mobile_former

    torch.manual_seed(0)
    model = visionmix.create_model(name, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        with torch.enable_grad():  # eval with gradients (receptive-field maps): the same outputs, and a gradient
            xg = x.clone().requires_grad_()
            assert torch.allclose(model(xg), fused, rtol=1e-5, atol=1e-6)
        monkeypatch.setattr(mobile_former, 'is_tracing', lambda: True)  # what tracers and exporters get
        plain = model(x)
    assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-6)
    assert (fused - plain).abs().max() > 0  # the two paths did differ in their arithmetic


def test_timm_create_model():
    assert isinstance(timm.create_model(SMALL, pretrained=False), MobileFormer)
    cfg = timm.models.get_pretrained_cfg(SMALL).to_dict()
    assert cfg['first_conv'] == 'stem.conv' and cfg['classifier'] == 'head.classifier'
    assert cfg['interpolation'] == 'bilinear' and cfg['crop_pct'] == 0.875


def test_ungrouped_variant_trains():
    # mobile_former_96m: ungrouped convs, 4 x 128 tokens, a stride-1 first block with its skip (not in 26m / 52m)
    torch.manual_seed(0)
    model = visionmix.create_model('mobile_former_96m', num_classes=3).train()
    assert model.blocks[0].has_skip and model.blocks[0].bridges is None
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
