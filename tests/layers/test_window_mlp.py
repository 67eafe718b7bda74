"""Windowed spatial MLP: hand-computed values, a dense reference for any size, padding invariance, tracing."""
import pytest
import torch
import torch.nn.functional as F

import visionmix.layers.window_mlp as window_mlp
from visionmix.layers.window_mlp import (
    WindowSpatialMlp, pad_to_windows, window_pad_sizes, window_partition, window_reverse, window_spatial_mix)

X44 = torch.arange(16.).view(1, 4, 4, 1)  # one image, one channel: x[i, j] = 4i + j


def dense_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ws: int, shift: int) -> torch.Tensor:
    """Straight from the definition, no padding or partition: token p = (y, x) sits in window
    ((y + o) // ws, (x + o) // ws) at in-window index ((y + o) % ws) * ws + (x + o) % ws, with o = (ws - shift) % ws;
    out[p] = sum over q in p's window of weight[h, idx(p), idx(q)] * x[q] + bias[h, idx(p)]."""
    B, H, W, C = x.shape
    heads = weight.shape[0]
    o = (ws - shift) % ws
    ys, xs = torch.meshgrid(torch.arange(H) + o, torch.arange(W) + o, indexing='ij')
    win = ((ys // ws) * 10_000 + xs // ws).flatten()
    idx = ((ys % ws) * ws + xs % ws).flatten()
    same = win[:, None] == win[None, :]
    tokens = x.reshape(B, H * W, heads, C // heads)
    out = torch.empty_like(tokens)
    for h in range(heads):
        mix = weight[h][idx[:, None], idx[None, :]] * same  # (HW, HW)
        out[:, :, h] = torch.einsum('pq,bqd->bpd', mix, tokens[:, :, h]) + bias[h][idx][None, :, None]
    return out.reshape(B, H, W, C)


def random_mixer(dim: int, heads: int, ws: int, shift: int) -> WindowSpatialMlp:
    m = WindowSpatialMlp(dim, heads, ws, shift)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    return m


@pytest.mark.parametrize('size, window, shift, expected', [
    (8, 8, 0, (0, 0)), (8, 8, 4, (4, 4)), (16, 8, 4, (4, 4)), (10, 8, 0, (0, 6)), (10, 8, 4, (4, 2)),
    (7, 7, 0, (0, 0)), (5, 8, 4, (4, 7)), (3, 2, 1, (1, 0)),
])
def test_pad_sizes(size, window, shift, expected):
    before, after = window_pad_sizes(size, window, shift)
    assert (before, after) == expected
    assert (size + before + after) % window == 0


def test_pad_sizes_rejects_bad_shift():
    with pytest.raises(ValueError):
        window_pad_sizes(8, 4, 4)
    with pytest.raises(ValueError):
        WindowSpatialMlp(8, 2, 4, 4)
    with pytest.raises(ValueError):
        WindowSpatialMlp(10, 4, 4)  # 10 channels do not split into 4 heads


def test_hand_computed_window_sums():
    """ws=2 on a 4x4 map, all-ones mixing: each token becomes the sum of its window."""
    ones = torch.ones(1, 4, 4)
    plain = window_spatial_mix(X44, ones, None, (2, 2), (0, 0))[0, ..., 0]
    assert torch.equal(plain, torch.tensor([
        [10., 10., 18., 18.],
        [10., 10., 18., 18.],
        [42., 42., 50., 50.],
        [42., 42., 50., 50.]]))
    # shift 1: zero-pad 1 before, 1 after -> windows cover rows/cols {0}, {1, 2}, {3}
    shifted = window_spatial_mix(X44, ones, None, (2, 2), (1, 1))[0, ..., 0]
    assert torch.equal(shifted, torch.tensor([
        [0., 3., 3., 3.],
        [12., 30., 30., 18.],
        [12., 30., 30., 18.],
        [12., 27., 27., 15.]]))


def test_hand_computed_orientation_and_bias():
    """weight[h, i, j] takes input token j into output token i: copy each window's top-left token, add 0.5."""
    weight = torch.zeros(1, 4, 4)
    weight[0, :, 0] = 1.
    bias = torch.full((1, 4), .5)
    shifted = window_spatial_mix(X44, weight, bias, (2, 2), (1, 1))[0, ..., 0]
    # windows' top-left tokens sit at rows/cols -1 (zero padding), 1 and 3
    assert torch.equal(shifted, torch.tensor([
        [0., 0., 0., 0.],
        [0., 5., 5., 7.],
        [0., 5., 5., 7.],
        [0., 13., 13., 15.]]) + .5)
    bias = torch.arange(4.).view(1, 4)  # per-token bias lands on the token's in-window position
    plain = window_spatial_mix(torch.zeros(1, 4, 4, 1), torch.zeros(1, 4, 4), bias, (2, 2), (0, 0))[0, ..., 0]
    assert torch.equal(plain, torch.tensor([[0., 1., 0., 1.], [2., 3., 2., 3.]] * 2))


@pytest.mark.parametrize('H, W, ws, shift', [
    (8, 8, 4, 0), (8, 8, 4, 2), (12, 8, 4, 2),  # sizes divide
    (10, 7, 4, 0), (10, 7, 4, 2), (5, 3, 4, 2), (9, 13, 3, 1), (6, 6, 7, 3),  # they do not
])
def test_matches_dense_reference(H, W, ws, shift):
    m = random_mixer(12, 3, ws, shift)
    x = torch.randn(2, H, W, 12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), dense_reference(x, m.weight, m.bias, ws, shift), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('H, W, shift', [(8, 8, 0), (8, 12, 0), (10, 7, 2)])
def test_non_contiguous_input_matches_dense_reference(H, W, shift):
    """A transposed (non-contiguous) map takes the permuting copy instead of the row gather: the same result."""
    m = random_mixer(12, 3, 4, shift)
    x = torch.randn(2, W, H, 12).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(m(x), dense_reference(x, m.weight, m.bias, 4, shift), rtol=1e-5, atol=1e-5)
        # the contiguous map skips the padding (sub-blocks of the weights): the same sums, fewer zero terms
        torch.testing.assert_close(m(x), m(x.contiguous()), rtol=1e-6, atol=1e-6)


def test_matches_grouped_conv1d_formulation():
    """The official parametrisation: grouped Conv1d over (heads * tokens) channels, weights reshaped from ours."""
    ws, shift, heads, C = 4, 2, 2, 8
    m = random_mixer(C, heads, ws, shift)
    x = torch.randn(2, 8, 8, C)
    pad = F.pad(x, (0, 0, ws - shift, shift, ws - shift, shift))
    win = window_partition(pad, (ws, ws)).reshape(-1, ws * ws, heads, C // heads).transpose(1, 2)
    conv_w = m.weight.detach().reshape(heads * ws * ws, ws * ws, 1)
    y = F.conv1d(win.reshape(-1, heads * ws * ws, C // heads), conv_w, m.bias.detach().flatten(), groups=heads)
    y = y.view(-1, heads, ws * ws, C // heads).transpose(1, 2).reshape(-1, ws, ws, C)
    expected = window_reverse(y, (ws, ws), 12, 12)[:, ws - shift:-shift, ws - shift:-shift]
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


def test_padding_adds_nothing_where_sizes_divide():
    """Mixing a 10x6 map (padded inside to 12x8) equals mixing it zero-padded by hand to 12x8, then cropping."""
    m = random_mixer(8, 2, 4, 0)
    x = torch.randn(1, 10, 6, 8)
    with torch.no_grad():
        padded_inside = m(x)
        unpadded = m(F.pad(x, (0, 0, 0, 2, 0, 2)))[:, :10, :6]
    torch.testing.assert_close(padded_inside, unpadded, rtol=1e-6, atol=1e-6)
    y = x[:, :8, :4].contiguous()
    assert pad_to_windows(y, (4, 4)) is y  # nothing to pad: no copy


@pytest.mark.parametrize('size, window, shift, expected', [
    (16, 8, 4, [(0, 1, 4, 4), (4, 1, 0, 8), (12, 1, 0, 4)]),  # Swin-MLP stage 3: 24 padded positions, 3 kinds
    (64, 8, 4, [(0, 1, 4, 4), (4, 7, 0, 8), (60, 1, 0, 4)]),
    (16, 8, 0, [(0, 2, 0, 8)]),
    (10, 8, 0, [(0, 1, 0, 8), (8, 1, 0, 2)]),
    (5, 8, 4, [(0, 1, 4, 4), (4, 1, 0, 1)]),  # a map smaller than the window
])
def test_window_groups_cover_the_map_once(size, window, shift, expected):
    groups = window_mlp._window_groups(size, window, shift)
    assert groups == expected
    covered = [y for y0, n, _, length in groups for y in range(y0, y0 + n * length)]
    assert covered == list(range(size))


@pytest.mark.parametrize('H, W, ws, shift, with_bias, with_residual', [
    (16, 16, 8, 4, True, True), (9, 7, 4, 2, True, False), (10, 12, 4, 0, False, True), (5, 6, 8, 4, True, True),
    (8, 8, 4, 0, True, True),
])
def test_inference_over_map_tokens_equals_the_padded_mix(H, W, ws, shift, with_bias, with_residual):
    """Inference mixes each window group over its map tokens only (no padding): the padded formulation's result,
    with or without residual and bias."""
    torch.manual_seed(0)
    m = random_mixer(12, 3, ws, shift)
    if not with_bias:
        m.bias = None
    x = torch.randn(2, H, W, 12)
    residual = torch.randn(2, H, W, 12) if with_residual else None
    expected = m(x, residual)  # autograd on: pad, partition, one matmul, crop
    assert expected.requires_grad
    with torch.inference_mode():
        out = m(x, residual)
        assert out.is_contiguous()
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)


def test_partition_roundtrip():
    x = torch.randn(2, 6, 9, 5)
    windows = window_partition(x, (3, 3))
    assert windows.shape == (12, 3, 3, 5)
    assert torch.equal(windows[1], x[0, 0:3, 3:6])  # row-major window order
    assert torch.equal(window_reverse(windows, (3, 3), 6, 9), x)


def test_gradients_reach_parameters():
    m = random_mixer(8, 2, 4, 2)
    m(torch.randn(1, 9, 7, 8)).sum().backward()
    assert m.weight.grad.abs().sum() > 0 and m.bias.grad.abs().sum() > 0


def test_init_matches_official():
    m = WindowSpatialMlp(96, 4, 8, 4)
    assert m.weight.shape == (4, 64, 64) and m.bias.shape == (4, 64)
    assert torch.count_nonzero(m.bias) == 0
    assert 0.018 < m.weight.std() < 0.022
