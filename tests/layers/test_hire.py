"""Hire module building blocks: the region rearrangement against explicit index loops, and any-size mixing."""
import pytest
import torch
import torch.nn.functional as F

import visionmix.layers.hire as hire
from visionmix.layers.hire import HireMlp, RegionMlp, circular_take, region_fold, region_unfold


def fold_by_loops(x: torch.Tensor, p: int, step: int, dim: int) -> torch.Tensor:
    """Region folding written out entry by entry from its definition (roll by +step, circular pad, regroup)."""
    B, C, H, W = x.shape
    n = x.shape[dim]
    regions = -(-n // p)
    shape = (B, C * p, regions, W) if dim == 2 else (B, C * p, H, regions)
    out = torch.empty(shape)
    for c in range(C):
        for i in range(p):
            for r in range(regions):
                src = ((r * p + i) - step) % n  # rolled[j] = x[j - step]; padding repeats from the start
                if dim == 2:
                    out[:, c * p + i, r, :] = x[:, c, src, :]
                else:
                    out[:, c * p + i, :, r] = x[:, c, :, src]
    return out


@pytest.mark.parametrize('dim', [2, 3])
@pytest.mark.parametrize(('n', 'p', 'step'), [(6, 3, 0), (7, 3, 1), (5, 4, 2), (2, 3, 1), (1, 4, 3), (9, 2, 4)])
def test_region_fold_matches_index_loops(dim, n, p, step):
    size = (n, 5) if dim == 2 else (5, n)
    x = torch.arange(2 * 3 * size[0] * size[1], dtype=torch.float32).reshape(2, 3, *size)
    folded = region_fold(x, p, step, dim)
    assert torch.equal(folded, fold_by_loops(x, p, step, dim))
    assert torch.equal(region_unfold(folded, p, n, step, dim), x)


def test_region_fold_equals_roll_and_circular_pad_when_torch_can_pad():
    # torch's circular pad refuses pads larger than the map; where it works, ours must agree with it
    x = torch.randn(1, 4, 7, 10)
    ref = F.pad(torch.roll(x, 2, -2), (0, 0, 0, 2), mode='circular')  # 7 -> 9 rows for p=3
    ref = ref.reshape(1, 4, 3, 3, 10).permute(0, 1, 3, 2, 4).reshape(1, 12, 3, 10)
    assert torch.equal(region_fold(x, 3, 2, dim=2), ref)


def test_region_fold_without_shift_or_padding_is_a_pure_regroup():
    x = torch.randn(1, 2, 8, 4)
    folded = region_fold(x, 4, 0, dim=2)
    assert torch.equal(folded.reshape(1, 2, 4, 2, 4).transpose(2, 3).reshape(1, 2, 8, 4), x)


def test_circular_take_returns_view_when_not_wrapping():
    x = torch.arange(10.).reshape(1, 1, 10, 1)
    view = circular_take(x, 2, 3, 5)
    assert view.data_ptr() == x[:, :, 3:].data_ptr()
    wrapped = circular_take(x, 2, 8, 25)
    assert wrapped.flatten().tolist() == [float((8 + k) % 10) for k in range(25)]


def test_region_mlp_mixes_only_within_regions():
    # a perturbation at row 0 reaches exactly the rows of its region (p=3, no shift): rows 0-2
    torch.manual_seed(0)
    mlp = RegionMlp(4, region_size=3, step=0, axis=2).eval()
    x = torch.randn(1, 4, 9, 2)
    y = x.clone()
    y[:, :, 0, 0] += 1.0
    changed = (mlp(y) - mlp(x)).abs().amax(dim=(0, 1, 3)) > 0
    assert changed.tolist() == [True] * 3 + [False] * 6
    # with step 1 the region boundaries move down by one: rows 8 (wrapped), 0, 1 form a region
    mlp.step = 1
    changed = (mlp(y) - mlp(x)).abs().amax(dim=(0, 1, 3)) > 0
    assert changed.tolist() == [True, True] + [False] * 6 + [True]


@pytest.mark.parametrize('size', [(1, 1), (2, 5), (7, 3), (13, 11)])
def test_hire_mlp_any_size_and_gradients(size):
    mixer = HireMlp(8, region_size=3, step=2)
    x = torch.randn(2, 8, *size, requires_grad=True)
    out = mixer(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_hire_mlp_reweighting_is_a_softmax_over_branches():
    torch.manual_seed(0)
    mixer = HireMlp(4, region_size=2).eval()
    x = torch.randn(1, 4, 4, 4)
    h, w, c = mixer.height(x), mixer.width(x), mixer.channel(x)
    logits = mixer.reweight((h + w + c).mean((2, 3), keepdim=True)).flatten()
    expected = torch.zeros_like(x)
    for ch in range(4):  # reweight output channel ch * 3 + k weighs branch k of channel ch
        a = logits[ch * 3:ch * 3 + 3].softmax(0)
        expected[:, ch] = h[:, ch] * a[0] + w[:, ch] * a[1] + c[:, ch] * a[2]
    assert torch.allclose(mixer(x), mixer.proj(expected), atol=1e-6)
    with torch.inference_mode():  # the cached mean layer and permuted reweighting rows, twice (the memo's hit)
        for _ in range(2):
            assert torch.allclose(mixer(x), mixer.proj(expected), atol=1e-6)


def _randomised_mixer(dim: int, p: int, step: int) -> HireMlp:
    mixer = HireMlp(dim, region_size=p, step=step).eval()
    for bn in (mixer.height.norm, mixer.width.norm):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return mixer


@pytest.mark.parametrize('p, step, size', [(2, 0, (12, 12)), (4, 2, (13, 11)), (3, 1, (10, 14))])
def test_projection_folded_into_per_sample_branch_weights_equals_the_plain_mixer(monkeypatch, p, step, size):
    """Inference on maps with more than (1 + p) * C positions folds the projection into the branch weights (no
    mixed map, no projection GEMM): the result is still residual + proj(reweighted branches)."""
    torch.manual_seed(0)
    mixer = _randomised_mixer(8, p, step)
    x, residual = torch.randn(2, *size, 8), torch.randn(2, *size, 8)
    expected = residual + mixer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # autograd on: the plain formulation

    def unused(*args):
        raise AssertionError('the per-sample path forms no weighted channel branch')

    with torch.no_grad():
        assert mixer._projects_per_sample(x, residual)
        monkeypatch.setattr(hire, 'weighted_channel_branch', unused)
        torch.testing.assert_close(mixer.forward_nhwc(x, residual=residual), expected, rtol=1e-5, atol=1e-5)


def test_projection_stays_a_gemm_on_small_maps_with_active_dropout_or_a_strided_residual():
    torch.manual_seed(0)
    mixer = _randomised_mixer(8, 3, 1)
    with torch.no_grad():
        small = torch.randn(2, 5, 6, 8)
        assert not mixer._projects_per_sample(small, small)  # 30 positions <= (1 + 3) * 8
        large = torch.randn(2, 10, 14, 8)
        assert mixer._projects_per_sample(large, large)
        transposed = torch.randn(2, 14, 10, 8).transpose(1, 2)
        assert not mixer._projects_per_sample(large, transposed)  # the residual is accumulated onto as a view
        expected = transposed + mixer(large.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(mixer.forward_nhwc(large, residual=transposed), expected, rtol=1e-5, atol=1e-5)
        mixer.proj_drop.p = 0.5
        mixer.train()
        assert not mixer._projects_per_sample(large, large)  # dropout acts between the mix and the projection


def test_add_region_unfold_without_weight_adds_the_unfolded_map():
    torch.manual_seed(0)
    mlp = RegionMlp(4, 3, 1, axis=3).eval()
    x = torch.randn(2, 5, 7, 4)
    with torch.no_grad():
        weights = mlp.folded_weights()
        folded = F.linear(mlp.hidden(x, weights), *weights[2:])
        weighted = hire.add_region_unfold_(torch.zeros_like(x), folded, torch.ones(1), 1, 2)
        plain = hire.add_region_unfold_(torch.zeros_like(x), folded, None, 1, 2)
    assert torch.equal(weighted, plain)
    torch.testing.assert_close(plain, mlp(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), rtol=1e-5, atol=1e-6)
