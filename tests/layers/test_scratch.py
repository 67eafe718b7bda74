"""Scratch buffers for inference temporaries: reused only where that is safe, and never visible in a result.

A wrong reuse shows up as a result that changes when the model runs again (a returned tensor living in a buffer the
next call overwrites), as a module output that shares memory with a buffer, or as threads overwriting each other's
temporaries; each is checked here on the models that use scratch buffers, against the same model with them off.
"""
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import visionmix
import visionmix.layers.fused as fused
import visionmix.layers.hire as hire
import visionmix.layers.mixing as mixing
import visionmix.layers.scratch as scratch_module
import visionmix.layers.window_mlp as window_mlp
from visionmix.layers.fused import linear_scratch
from visionmix.layers.scratch import release_scratch, scratch, scratch_active, scratch_bytes, scratch_disabled

# every module that decides on scratch buffers through its own reference to scratch_active
USERS = (fused, hire, mixing, window_mlp)
MODELS = [
    ('hire_mlp_tiny', 64, {}),
    ('swin_mlp_tiny_c24_patch4_window8_256', 64, {'img_size': 64}),  # shifted windows, padding at 64 px
    ('spach_ms_xxs_patch4_224_mlp', 64, {'img_size': 64}),
]


def _scratch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in USERS:
        monkeypatch.setattr(module, 'scratch_active', lambda like: False)


def _randomised(name: str, **kwargs) -> nn.Module:
    model = visionmix.create_model(name, **kwargs).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, t in model.named_buffers():
            if n.endswith('running_var'):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif n.endswith('running_mean'):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return model


def test_active_only_in_cpu_inference():
    x = torch.zeros(2)
    assert not scratch_active(x)  # gradients recorded
    with torch.no_grad():
        assert scratch_active(x)
        assert not scratch_active(torch.zeros(2, device='meta'))
    with torch.inference_mode():
        assert scratch_active(x)


def test_slots_reuse_grow_release_and_are_per_thread():
    release_scratch()
    like = torch.zeros(1)
    a = scratch('test.a', (4, 8), like)
    assert a.shape == (4, 8) and a.is_contiguous()
    assert scratch('test.a', (2, 3), like).data_ptr() == a.data_ptr()  # smaller: the same memory
    assert scratch('test.b', (4, 8), like).data_ptr() != a.data_ptr()  # another slot: its own memory
    assert scratch('test.a', (4, 8), torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    big = scratch('test.a', (64, 64), like)
    assert big.numel() == 4096 and scratch_bytes() >= 4096 * 4
    other = []
    thread = threading.Thread(target=lambda: other.append(scratch('test.a', (64, 64), like).data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != big.data_ptr()
    release_scratch()
    assert scratch_bytes() == 0


def test_buffer_made_in_inference_mode_is_usable_under_no_grad():
    release_scratch()
    with torch.inference_mode():
        scratch('test.c', (3,), torch.zeros(1))
    with torch.no_grad():
        scratch('test.c', (3,), torch.zeros(1)).fill_(1.)  # an inference tensor would refuse this write
    release_scratch()


def test_linear_matches_the_plain_op():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 12, generator=g)
    w, b = torch.randn(9, 12, generator=g), torch.randn(9, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(linear_scratch(x, w, b, 'test.lin'), F.linear(x, w, b))
        torch.testing.assert_close(linear_scratch(x, w, None, 'test.lin'), F.linear(x, w))
        assert linear_scratch(x, w, b, 'test.lin').data_ptr() == scratch('test.lin', (1,), x).data_ptr()
    # with autograd: plain tensors that carry the graph
    xg = x.clone().requires_grad_()
    y = linear_scratch(xg, w, b, 'test.lin')
    assert y.grad_fn is not None and y.data_ptr() != scratch('test.lin', (1,), x).data_ptr()
    release_scratch()


@pytest.mark.parametrize('name,size,kwargs', MODELS, ids=[m[0] for m in MODELS])
def test_models_equal_with_and_without_scratch(name, size, kwargs, monkeypatch):
    model = _randomised(name, **kwargs)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast = model(x)
        assert scratch_bytes() > 0  # the buffers were used
    _scratch_off(monkeypatch)
    with torch.inference_mode():
        plain = model(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    release_scratch()


@pytest.mark.parametrize('name,size,kwargs', MODELS, ids=[m[0] for m in MODELS])
def test_no_result_and_nothing_a_hook_sees_lives_in_a_scratch_buffer(name, size, kwargs):
    model = _randomised(name, **kwargs)
    outputs = []

    def keep(module, args, out):  # what a hook sees: the module's inputs and outputs
        seen = [*args, *(out if isinstance(out, (tuple, list)) else [out])]
        outputs.extend(t for t in seen if isinstance(t, torch.Tensor))

    handles = [m.register_forward_hook(keep) for m in model.modules()]
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(2, 2, 3, size, size, generator=g)
    with torch.no_grad():
        y1 = model(x1)
        kept = [t.clone() for t in outputs]
        intermediates = [t.clone() for t in model.forward_intermediates(x1, intermediates_only=True)]
        feats = model.forward_intermediates(x1, intermediates_only=True)
        model(x2)  # overwrites every scratch buffer a result could wrongly live in
        again = model(x1)
    for h in handles:
        h.remove()
    torch.testing.assert_close(y1, again, rtol=0, atol=0)
    for before, after in zip(kept, outputs):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    for before, after in zip(intermediates, feats):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    buffers = {b.untyped_storage().data_ptr() for b in scratch_module._buffers().values()}
    assert not any(t.untyped_storage().data_ptr() in buffers for t in outputs)
    release_scratch()


@pytest.mark.parametrize('skip_channel_mlps', [False, True])
@pytest.mark.parametrize('name,size,kwargs', MODELS, ids=[m[0] for m in MODELS])
def test_what_a_hook_sees_is_not_changed_later_in_the_same_forward(name, size, kwargs, skip_channel_mlps):
    # the blocks accumulate their channel MLP into the spatial branch's sum: never into a tensor a hook has seen
    # (without hooks on the channel MLPs, their fused path runs while the token mixers' outputs are observed)
    model = _randomised(name, **kwargs)
    seen = []

    def snapshot(module, args, out):
        for t in [*args, *(out if isinstance(out, (tuple, list)) else [out])]:
            if isinstance(t, torch.Tensor):
                seen.append((t, t.clone()))

    handles = [m.register_forward_hook(snapshot) for n, m in model.named_modules()
               if not (skip_channel_mlps and (n.endswith('.mlp') or '.mlp.' in n))]
    with torch.inference_mode():
        model(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)))
    for h in handles:
        h.remove()
    assert len(seen) > 50
    for t, at_hook_time in seen:
        torch.testing.assert_close(t, at_hook_time, rtol=0, atol=0)
    release_scratch()


def test_threads_running_one_model_do_not_share_temporaries():
    model = _randomised('hire_mlp_tiny')
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(1, 3, 64, 64, generator=g) for _ in range(2)]
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def run(i: int) -> None:
        with torch.inference_mode():
            for _ in range(4):
                results[i].append(model(inputs[i]))
        release_scratch()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for y in results[i]:
            torch.testing.assert_close(y, expected[i], rtol=1e-5, atol=1e-6)
    release_scratch()


@pytest.mark.parametrize('with_bias', [True, False])
def test_gelu_mlp_in_row_blocks_equals_the_plain_mlp(with_bias, monkeypatch):
    monkeypatch.setattr(fused, 'MLP_BLOCK_ROWS', 256)  # 1000 rows: 3 blocks of 256 and one of 232
    g = torch.Generator().manual_seed(3)
    x, res = torch.randn(2, 20, 25, 8, generator=g), torch.randn(2, 20, 25, 6, generator=g)
    w1, b1 = torch.randn(24, 8, generator=g), torch.randn(24, generator=g) if with_bias else None
    w2, b2 = torch.randn(6, 24, generator=g), torch.randn(6, generator=g) if with_bias else None
    expected = res + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    with torch.inference_mode():
        out = fused.gelu_mlp_residual(x, w1, b1, w2, b2, res)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.data_ptr() != res.data_ptr()  # a new tensor: the shortcut is left as it was
    assert scratch_bytes() < 24 * 1000 * 4  # one block's hidden map, not the whole
    # with autograd, the plain steps (gradients reach both layers)
    w1g = w1.clone().requires_grad_()
    fused.gelu_mlp_residual(x, w1g, b1, w2, b2, res).sum().backward()
    assert w1g.grad is not None and w1g.grad.abs().sum() > 0
    release_scratch()


def test_gelu_mlp_row_blocks_are_2048_rows_unless_the_hidden_block_would_pass_the_cap(monkeypatch):
    g = torch.Generator().manual_seed(6)
    x, res = torch.randn(5000, 8, generator=g), torch.randn(5000, 6, generator=g)
    w1, w2 = torch.randn(24, 8, generator=g), torch.randn(6, 24, generator=g)
    release_scratch()
    with torch.inference_mode():
        fused.gelu_mlp_residual(x, w1, None, w2, None, res)
    assert scratch_bytes() == fused.MLP_BLOCK_ROWS * 24 * 4 == 2048 * 24 * 4  # the hidden block is the only scratch
    release_scratch()
    monkeypatch.setattr(fused, 'MLP_BLOCK_NUMBERS', 1000 * 24)  # a wide hidden layer: fewer rows per block
    with torch.inference_mode():
        fused.gelu_mlp_residual(x, w1, None, w2, None, res)
    assert scratch_bytes() == 1000 * 24 * 4
    release_scratch()


@pytest.mark.parametrize('with_bias', [True, False])
@pytest.mark.parametrize('input_is_residual', [False, True])
def test_gelu_mlp_accumulates_into_a_residual_it_is_handed(with_bias, input_is_residual, monkeypatch):
    monkeypatch.setattr(fused, 'MLP_BLOCK_NUMBERS', 256 * 24)  # wide hidden layers: 256 rows of 24, 3 blocks and 232
    g = torch.Generator().manual_seed(4)
    res = torch.randn(2, 20, 25, 6, generator=g)
    x = res if input_is_residual else torch.randn(2, 20, 25, 6, generator=g)  # fc1 may read the residual itself
    w1, b1 = torch.randn(24, 6, generator=g), torch.randn(24, generator=g) if with_bias else None
    w2, b2 = torch.randn(6, 24, generator=g), torch.randn(6, generator=g) if with_bias else None
    expected = res + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    with torch.inference_mode():
        out = fused.gelu_mlp_residual(x, w1, b1, w2, b2, res, owns_residual=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.data_ptr() == res.data_ptr()  # no new map
    # with autograd the residual is never written to, handed over or not
    res2 = torch.randn(2, 20, 25, 6, generator=g)
    kept = res2.clone()
    fused.gelu_mlp_residual(x, w1.clone().requires_grad_(), b1, w2, b2, res2, owns_residual=True).sum().backward()
    torch.testing.assert_close(res2, kept, rtol=0, atol=0)
    release_scratch()


@pytest.mark.parametrize('size, p, step', [(7, 2, 1), (8, 3, 2), (6, 3, 0), (2, 3, 1)])
def test_hire_reweighting_mean_equals_the_mean_of_the_unfolded_branch(size, p, step):
    # the mean layer reads sums of the hidden map only; it must equal the mean over the map of the branch output
    g = torch.Generator().manual_seed(5)
    mlp = hire.RegionMlp(4, p, step, axis=3).eval()
    mlp.fc2.bias.data.normal_(generator=g)
    x = torch.randn(2, 5, size, 4, generator=g)
    with torch.no_grad():
        weights = mlp.folded_weights()
        hidden = mlp.hidden(x, weights)
        full = hire.add_region_unfold_(torch.zeros_like(x), F.linear(hidden, *weights[2:]), None, step, 2)
        mean = F.linear(hire.region_sums(hidden, size, p), *mlp.mean_layer(size, 5))
    torch.testing.assert_close(mean, full.mean((1, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('with_bias', [True, False])
@pytest.mark.parametrize('owns_residual', [False, True])
def test_token_mlp_scaled_residual_equals_the_plain_sum(with_bias, owns_residual):
    # the layer scale moved onto the hidden map's channels, fc2 accumulating onto the shortcut
    g = torch.Generator().manual_seed(6)
    mlp = mixing.TokenMlp(num_tokens=20, hidden_features=12)
    if not with_bias:
        mlp.fc2.bias = None
    x, res = torch.randn(2, 2, 4, 5, 6, generator=g)
    gamma = torch.randn(6, generator=g)
    with torch.inference_mode():
        expected = torch.addcmul(res, mlp(x), gamma)
        kept = res.clone()
        out = mlp.scaled_residual(x, res, gamma, owns_residual=owns_residual)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out.data_ptr() == res.data_ptr()) == owns_residual  # written into the shortcut only when handed over
    if not owns_residual:
        torch.testing.assert_close(res, kept, rtol=0, atol=0)
    xg = x.clone().requires_grad_()  # with autograd: the module itself, gradients flow
    mlp.scaled_residual(xg, res.clone(), gamma, owns_residual=True).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    release_scratch()


def test_scratch_disabled_turns_the_inference_paths_off_in_this_thread_only():
    x = torch.zeros(2)
    seen = []
    with torch.no_grad():
        assert scratch_active(x)
        with scratch_disabled():
            assert not scratch_active(x)
            worker = threading.Thread(target=lambda: seen.append(torch.no_grad()(scratch_active)(x)))
            worker.start()
            worker.join()
        assert scratch_active(x)
    assert seen == [True]
