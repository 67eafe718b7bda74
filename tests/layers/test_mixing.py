"""Mixing block and spatial functions: registry, block formula, axial shift (UNeXt), token MLP / attention."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from visionmix.layers.mixing import (
    MixingBlock, TokenAttention, TokenMlp, create_spatial_func, list_spatial_funcs, register_spatial_func)
from visionmix.layers.shift import AxialShiftMlp, axial_shift


def test_registry_lists_every_spatial_function():
    assert list_spatial_funcs() == ['attn', 'hire', 'mlp', 'pass', 'shift', 'window_mlp']
    with pytest.raises(ValueError, match="unknown spatial function 'nope'; choose from attn, hire"):
        create_spatial_func('nope', 8)
    with pytest.raises(ValueError, match='already registered'):
        register_spatial_func('attn')(lambda dim: None)


def test_factories_take_only_their_options():
    # one model-wide option set serves all: each factory picks its own
    opts = dict(num_heads=2, token_ratio=0.25, shift_size=3, region_size=2, window_size=2)
    assert create_spatial_func('pass', 8, **opts) is None
    assert isinstance(create_spatial_func('attn', 8, **opts), TokenAttention)
    mlp = create_spatial_func('mlp', 8, grid_size=(4, 4), **opts)
    assert isinstance(mlp, TokenMlp) and mlp.fc1.weight.shape == (4, 16)
    assert create_spatial_func('shift', 8, **opts).shift_size == 3
    with pytest.raises(ValueError, match='pass grid_size'):
        create_spatial_func('mlp', 8)


def test_custom_spatial_function_is_one_registration():
    @register_spatial_func('test_identity_mixer')
    def _identity(dim: int) -> nn.Module:
        return nn.Identity()

    block = MixingBlock(4, 'test_identity_mixer', cpe=False)
    assert isinstance(block.token_mixer, nn.Identity)


@torch.no_grad()
def test_block_formula_against_hand_written():
    block = MixingBlock(8, 'attn', spatial_kwargs=dict(num_heads=2), layer_scale_init=0.5).eval()
    for p in block.parameters():
        p.normal_()
    x = torch.randn(2, 4, 3, 8)
    y = x + block.ls1.gamma * block.token_mixer(block.norm1(x))
    y = y + F.conv2d(x.permute(0, 3, 1, 2), block.cpe.weight, block.cpe.bias, padding=1, groups=8).permute(0, 2, 3, 1)
    y = y + block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x), y)


def test_pass_block_has_no_spatial_branch():
    block = MixingBlock(8, 'pass')
    names = {n.split('.')[0] for n, _ in block.named_parameters()}
    assert names == {'cpe', 'norm2', 'mlp'}


@torch.no_grad()
def test_token_attention_matches_explicit_softmax():
    attn = TokenAttention(8, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(1, 3, 2, 8)
    t = x.reshape(1, 6, 8)
    q, k, v = attn.qkv(t).reshape(1, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    out = ((q @ k.transpose(-2, -1)) * 4 ** -0.5).softmax(-1) @ v
    expected = attn.proj(out.transpose(1, 2).reshape(1, 6, 8)).reshape(1, 3, 2, 8)
    torch.testing.assert_close(attn(x), expected)


@torch.no_grad()
def test_token_mlp_mixes_tokens_per_channel():
    mlp = TokenMlp(6, 3)
    x = torch.randn(2, 2, 3, 5)
    t = x.reshape(2, 6, 5).transpose(1, 2)  # (B, C, N)
    expected = mlp.fc2(F.gelu(mlp.fc1(t))).transpose(1, 2).reshape(2, 2, 3, 5)
    torch.testing.assert_close(mlp(x), expected)
    with pytest.raises(ValueError, match='built for 6 tokens, got a 3x3 map'):
        mlp(torch.randn(1, 3, 3, 5))


# ---- axial shift (UNeXt) --------------------------------------------------------------------------------------------

def unext_shift(x: torch.Tensor, shift_size: int, dim: int) -> torch.Tensor:
    """UNeXt's recipe on NCHW: zero-pad shift_size // 2 on all sides, torch.chunk channels into shift_size groups,
    torch.roll group i by i - pad along dim, crop the padding."""
    pad = shift_size // 2
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rolled = [torch.roll(c, s, dim) for c, s in zip(torch.chunk(xp, shift_size, 1), range(-pad, pad + 1))]
    return torch.cat(rolled, 1)[:, :, pad:pad + H, pad:pad + W]


def test_axial_shift_by_hand():
    x = torch.arange(1., 6.).view(1, 5, 1, 1).expand(1, 5, 1, 5).permute(0, 2, 3, 1).contiguous()  # (1, 1, 5, 5)
    x = x * torch.arange(1., 6.).view(1, 1, 5, 1)  # channel c holds (c + 1) * (w + 1) at column w
    out = axial_shift(x, 5, dim=2)
    # channel 0 moves by -2 (left), channel 2 stays, channel 4 moves by +2 (right); zeros come in
    assert out[0, 0, :, 0].tolist() == [3., 4., 5., 0., 0.]
    assert out[0, 0, :, 2].tolist() == [3., 6., 9., 12., 15.]
    assert out[0, 0, :, 4].tolist() == [0., 0., 5., 10., 15.]


@pytest.mark.parametrize('channels', [256, 12, 3])
@pytest.mark.parametrize('dim', [1, 2])
def test_axial_shift_equals_unext_recipe(channels, dim):
    x = torch.randn(2, 6, 7, channels)
    expected = unext_shift(x.permute(0, 3, 1, 2), 5, dim + 1).permute(0, 2, 3, 1)
    assert torch.equal(axial_shift(x, 5, dim), expected)


@torch.no_grad()
def test_axial_shift_mlp_follows_unext_order():
    mlp = AxialShiftMlp(10).eval()
    x = torch.randn(1, 4, 6, 10)
    h = mlp.fc1(unext_shift(x.permute(0, 3, 1, 2), 5, 2).permute(0, 2, 3, 1))
    h = F.gelu(mlp.dwconv(h.permute(0, 3, 1, 2)))
    expected = mlp.fc2(unext_shift(h, 5, 3).permute(0, 2, 3, 1))
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.fc1.weight.shape == (10, 10)  # UNeXt: hidden = C
