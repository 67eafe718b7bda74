"""Eval-mode BatchNorm folding: equal to the unfolded math, never used in training, and recomputed when a source
tensor changes (load_state_dict, in-place updates, new BN statistics).

The references below are the plain formulations (NCHW BatchNorm modules, the region MLP's reference ``forward``,
``h + w + c`` formed explicitly), so they share none of the folded / channels-last code paths.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import visionmix
from visionmix.layers.fold import (batch_norm_last, bn_scale_shift, cached_fold, contiguous_grad, fold_bn_after,
                                   fold_bn_before, folded_conv_bn)
from visionmix.layers.hire import HireMlp
from visionmix.models.hire_mlp import ConvBnRelu, HireBlock
from visionmix.models.unext import ConvBnPool

RTOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics (fresh BNs are identities, which would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            if name.endswith('running_var') or (name.endswith('weight') and t.ndim == 1):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim >= 2:
                t.copy_(torch.randn(t.shape, generator=g) / (t.numel() // t.shape[0]) ** 0.5)
            else:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return model


def hire_reference(mixer: HireMlp, x: torch.Tensor) -> torch.Tensor:
    """The Hire module on NCHW maps, written out as in the paper / official code."""
    B, C = x.shape[:2]
    h, w, c = mixer.height(x), mixer.width(x), mixer.channel(x)
    a = mixer.reweight((h + w + c).mean((2, 3), keepdim=True)).reshape(B, C, 3, 1, 1).softmax(dim=2)
    return mixer.proj_drop(mixer.proj(h * a[:, :, 0] + w * a[:, :, 1] + c * a[:, :, 2]))


def block_reference(block: HireBlock, x: torch.Tensor) -> torch.Tensor:
    """``x + hire(norm1(x))``, then ``x + mlp(norm2(x))``, NCHW, every BN a module call."""
    x = x + hire_reference(block.token_mixer, block.norm1(x))
    m = block.mlp
    y = block.norm2(x)
    return x + m.drop2(F.conv2d(m.drop1(m.act(F.conv2d(y, m.fc1.weight, m.fc1.bias))), m.fc2.weight, m.fc2.bias))


def _block(seed: int = 0, step: int = 1) -> HireBlock:
    torch.manual_seed(seed)
    return _randomise(HireBlock(12, region_size=3, step=step), seed)


def _block_forward(block: HireBlock, x: torch.Tensor) -> torch.Tensor:
    return block(x.permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2)


# -- the fold formulas


def test_fold_bn_after_and_before_equal_the_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(5, 7, 3, padding=1), _randomise(nn.BatchNorm2d(7)).eval()
    x = torch.randn(2, 5, 6, 6)
    w, b = fold_bn_after(conv.weight, conv.bias, bn)
    assert _rel(F.conv2d(x, w, b, padding=1), bn(conv(x))) < RTOL
    pre, lin = _randomise(nn.BatchNorm2d(5), 1).eval(), nn.Linear(5 * 3, 4)
    y = torch.randn(2, 5, 3)  # channel c of the input is repeated at positions c * 3 + i
    ref = lin(pre(y.unsqueeze(-1)).squeeze(-1).flatten(1))
    w, b = fold_bn_before(lin.weight, lin.bias, *bn_scale_shift(pre), repeat=3)
    assert _rel(F.linear(y.flatten(1), w, b), ref) < RTOL


# -- eval mode: the folded model equals the unfolded math


@torch.no_grad()
@pytest.mark.parametrize(('size', 'step'), [((9, 12), 1), ((7, 5), 2), ((6, 6), 0)])
def test_hire_block_eval_equals_unfolded(size, step):
    block = _block(step=step).eval()
    x = torch.randn(2, 12, *size)
    assert _rel(_block_forward(block, x), block_reference(block, x)) < RTOL


@torch.no_grad()
def test_conv_bn_eval_equals_unfolded():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 17, 19)
    cbr = _randomise(ConvBnRelu(3, 8, 7, 4, 2)).eval()
    assert _rel(cbr(x), F.relu(cbr.norm(cbr.conv(x)))) < RTOL
    pool = _randomise(ConvBnPool(3, 8)).eval()
    assert _rel(pool(x), F.relu(F.max_pool2d(pool.bn(pool.conv(x)), 2, 2))) < RTOL


@torch.no_grad()
def test_conv_bn_relu_eval_runs_channels_last_with_a_channels_last_folded_weight_and_keeps_act_hooks():
    torch.manual_seed(0)
    cbr = _randomise(ConvBnRelu(4, 8, 3, 2, 1)).eval()
    x = torch.randn(2, 4, 15, 13)
    out = cbr(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    weight, _ = folded_conv_bn(cbr.conv, cbr.norm, cbr, torch.channels_last)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    # the memo is keyed by the layout: the NCHW fold is a different entry
    assert folded_conv_bn(cbr.conv, cbr.norm, cbr)[0].is_contiguous()
    seen = []
    cbr.act.register_forward_hook(lambda m, i, o: seen.append(o))  # the in-place ReLU shortcut must not skip it
    hooked = cbr(x)
    assert len(seen) == 1 and torch.equal(hooked, out) and _rel(out, F.relu(cbr.norm(cbr.conv(x)))) < RTOL


@torch.no_grad()
def test_hire_mlp_model_eval_equals_unfolded_blocks():
    # the whole network, against the same network whose blocks run the reference formulation
    torch.manual_seed(0)
    model = _randomise(visionmix.create_model('hire_mlp_tiny', num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model.stem.act(model.stem.norm(model.stem.conv(x)))
    for i, stage in enumerate(model.stages):
        if i:
            d = stage.downsample
            ref = d.act(d.norm(d.conv(ref)))
        for block in stage.blocks:
            ref = block_reference(block, ref)
    ref = model.forward_head(ref)
    assert _rel(model(x), ref) < RTOL


# -- training mode: batch statistics, gradients to the original parameters


def test_hire_block_train_uses_batch_statistics_and_gradients_reach_every_parameter():
    block = _block().train()
    ref_block = copy.deepcopy(block)
    x = torch.randn(4, 12, 9, 12)
    out = _block_forward(block, x)
    ref = block_reference(ref_block, x)
    assert _rel(out, ref) < RTOL
    # the running statistics moved as nn.BatchNorm2d moves them
    for name, buf in block.named_buffers():
        assert torch.allclose(buf, ref_block.get_buffer(name), rtol=1e-5, atol=1e-6), name
    out.square().mean().backward()
    ref.square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        q = ref_block.get_parameter(name).grad
        assert (p.grad - q).abs().max() <= 1e-4 * q.abs().max() + 1e-7, name


def test_eval_with_gradients_reaches_bn_parameters():
    # eval mode, gradients enabled (e.g. fine-tuning with frozen statistics): folded on the fly, differentiable
    block = _block().eval()
    x = torch.randn(2, 12, 6, 6)
    _block_forward(block, x).sum().backward()
    for bn in (block.norm1, block.norm2, block.token_mixer.height.norm):
        assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    assert '_fold_memo' not in block.token_mixer.height.__dict__  # nothing memoised with autograd on


def test_model_train_mode_output_and_grads_match_unfolded():
    torch.manual_seed(0)
    model = _randomise(visionmix.create_model('hire_mlp_tiny', num_classes=10)).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref_model = copy.deepcopy(model)
    out = model(x)
    ref = ref_model.stem.act(ref_model.stem.norm(ref_model.stem.conv(x_ref)))
    for i, stage in enumerate(ref_model.stages):
        if i:
            d = stage.downsample
            ref = d.act(d.norm(d.conv(ref)))
        for block in stage.blocks:
            ref = block_reference(block, ref)
    ref = ref_model.forward_head(ref)
    assert _rel(out, ref) < 1e-4
    out.logsumexp(1).sum().backward()
    ref.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # input gradients through every BN in training mode
    assert _rel(x.grad, x_ref.grad) < 1e-4


# -- the eval memo is invalidated whenever a source changes


@torch.no_grad()
def test_memo_follows_load_state_dict():
    block, other = _block(0).eval(), _block(1).eval()
    x = torch.randn(2, 12, 9, 12)
    first = _block_forward(block, x)
    assert torch.equal(_block_forward(block, x), first)  # memo hit: same result
    block.load_state_dict(other.state_dict())
    assert _rel(_block_forward(block, x), block_reference(other, x)) < RTOL


@torch.no_grad()
def test_memo_follows_in_place_updates_and_new_statistics():
    block = _block().eval()
    x = torch.randn(2, 12, 9, 12)
    _block_forward(block, x)
    block.token_mixer.height.fc1.weight.mul_(1.5)  # an optimizer step is an in-place update like this
    block.norm1.running_mean.add_(0.3)
    block.token_mixer.width.norm.weight.mul_(0.5)
    block.mlp.fc1.bias.add_(0.1)
    assert _rel(_block_forward(block, x), block_reference(block, x)) < RTOL
    # a train-mode pass updates the running statistics: the next eval pass must see them
    block.train()
    _block_forward(block, torch.randn(4, 12, 9, 12))
    block.eval()
    assert _rel(_block_forward(block, x), block_reference(block, x)) < RTOL


@pytest.mark.parametrize('optimizer', [torch.optim.AdamW, torch.optim.SGD])
def test_memo_follows_a_fused_optimizer_step(optimizer):
    """Fused optimizers write the parameters without bumping their version counters: the memo must still see it."""
    block = _block().eval()
    x = torch.randn(2, 12, 9, 12)
    opt = optimizer(block.parameters(), lr=0.1, fused=True)
    with torch.no_grad():
        before = _block_forward(block, x)
    versions = [p._version for p in block.parameters()]
    for p in block.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert [p._version for p in block.parameters()] == versions  # the reason for this test
    with torch.no_grad():
        after = _block_forward(block, x)
        assert not torch.equal(after, before) and _rel(after, block_reference(block, x)) < RTOL


@torch.no_grad()
def test_memo_follows_replaced_parameters_and_dtype():
    block = _block().eval()
    x = torch.randn(2, 12, 6, 6)
    _block_forward(block, x)
    block.mlp.fc1.weight = nn.Parameter(torch.randn_like(block.mlp.fc1.weight))
    assert _rel(_block_forward(block, x), block_reference(block, x)) < RTOL
    block.double()
    out = _block_forward(block, x.double())
    assert out.dtype == torch.float64 and _rel(out, block_reference(block, x.double())) < 1e-10


def test_cached_fold_is_skipped_with_autograd_and_keyed_by_version():
    owner, t = nn.Module(), torch.ones(3)
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return t * 2

    with torch.no_grad():
        cached_fold(owner, 'k', (t,), compute)
        cached_fold(owner, 'k', (t,), compute)
        assert len(calls) == 1
        t.add_(1)  # bumps the version counter
        assert torch.equal(cached_fold(owner, 'k', (t,), compute), torch.full((3,), 4.))
        assert len(calls) == 2
    cached_fold(owner, 'k', (t,), compute)  # grad mode: always computed
    assert len(calls) == 3


def test_batch_norm_last_backward_gets_contiguous_gradients_and_equals_the_plain_bn():
    # the BN kernel must see an NCHW gradient next to its NCHW input (the mixed-layout path is slow), and the
    # gradients must equal those of a plain BatchNorm over the moved channel axis
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(6).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.uniform_(-0.5, 0.5, generator=g)
    ref_bn = copy.deepcopy(bn)
    x = (torch.randn(2, 5, 7, 6, generator=g) + 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    w = torch.randn(2, 5, 7, 6, generator=g)
    layouts = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.native_batch_norm_backward.default:
                layouts.append((args[0].is_contiguous(), args[1].is_contiguous()))
            return func(*args, **(kwargs or {}))

    with Spy():
        (batch_norm_last(bn, x) * w).sum().backward()
    (ref_bn(x_ref.movedim(-1, 1)).movedim(1, -1) * w).sum().backward()
    assert layouts == [(True, True)]
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.weight.grad, ref_bn.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)


def test_contiguous_grad_is_the_identity_without_gradients_or_under_tracing():
    x = torch.randn(2, 3, 4, 5).permute(0, 3, 1, 2)
    assert contiguous_grad(x) is x  # nothing to record
    xg = x.clone().requires_grad_()
    y = contiguous_grad(xg)
    assert y.data_ptr() == xg.data_ptr() and y.stride() == xg.stride()  # a view in the forward pass
    y.backward(torch.ones(2, 3, 4, 5).permute(0, 3, 1, 2))
    torch.testing.assert_close(xg.grad, torch.ones_like(xg))

    class Wrap(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return contiguous_grad(t) * 2

    assert 'contiguous_grad' not in torch.fx.symbolic_trace(Wrap()).code  # traced through as the identity
