"""Dynamic ReLU: hand-computed values on tiny tensors."""
import pytest
import torch

from visionmix.layers.dyrelu import DynamicReLU, two_piece_activation


def _fixed(num_func: int, biases: list[float]) -> DynamicReLU:
    # zero weights: the coefficients are hsigmoid(fc2.bias), whatever the token
    act = DynamicReLU(channels=1, token_dim=4, num_func=num_func, reduction=4)
    with torch.no_grad():
        for fc in (act.fc1, act.fc2):
            fc.weight.zero_()
            fc.bias.zero_()
        act.fc2.bias.copy_(torch.tensor(biases))
    return act


def test_two_pieces_hand_computed():
    # hsigmoid(1.5) = 0.75 -> a1 = 1.5; hsigmoid(-1.5) = 0.25 -> a2 = -0.5
    act = _fixed(2, [1.5, -1.5])
    x = torch.tensor([-2., -1., 0., 3.]).view(1, 1, 2, 2)
    out = act(x, torch.randn(1, 4))
    assert torch.allclose(out.flatten(), torch.tensor([1., 0.5, 0., 4.5]))


def test_centre_is_relu():
    act = _fixed(2, [0., 0.])  # h1 = h2 = 0.5 -> a1 = 1, a2 = 0
    x = torch.randn(2, 1, 3, 3)
    assert torch.equal(act(x, torch.randn(2, 4)), torch.relu(x))


def test_one_piece_is_a_gate():
    act = _fixed(1, [1.5])  # h = 0.75 -> x * 1.5
    x = torch.randn(1, 1, 2, 2)
    assert torch.allclose(act(x, torch.randn(1, 4)), x * 1.5)


def test_coefficients_follow_the_token_per_sample():
    torch.manual_seed(0)
    act = DynamicReLU(channels=3, token_dim=8)
    x, tokens = torch.randn(2, 3, 4, 4), torch.randn(2, 8)
    both = act(x, tokens)
    for i in range(2):
        assert torch.allclose(both[i:i + 1], act(x[i:i + 1], tokens[i:i + 1]))
    h = act.coefficients(tokens)
    a1, a2 = (h[:, :3] - .5) * 2 + 1, (h[:, 3:] - .5) * 2
    expected = torch.maximum(x * a1[:, :, None, None], x * a2[:, :, None, None])
    assert torch.allclose(both, expected)


def test_rejects_other_piece_counts():
    with pytest.raises(ValueError):
        DynamicReLU(4, 8, num_func=3)


def _max_form(x: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x * a1[:, :, None, None], x * a2[:, :, None, None])


def test_two_piece_activation_equals_the_maximum_with_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    a1 = (torch.rand(2, 3, dtype=torch.float64) * 2).requires_grad_()
    a2 = (torch.rand(2, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    out = two_piece_activation(x, a1, a2)
    ref = _max_form(x, a1, a2)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (x, a1, a2))
    ref_grads = torch.autograd.grad((ref * g).sum(), (x, a1, a2))
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_two_piece_activation_edge_slopes():
    # hi == 0 (saturated hard-sigmoid: a1 = 0, a2 <= 0), equal slopes, a2 > a1, and a channels-last map
    x = torch.tensor([-2., -0.5, 0., 1.5]).view(1, 1, 2, 2).repeat(1, 4, 1, 1)
    a1 = torch.tensor([[0., 1., 0.25, 2.]])
    a2 = torch.tensor([[-1., 1., 0.75, 0.]])
    expected = _max_form(x, a1, a2)
    assert torch.allclose(two_piece_activation(x, a1, a2), expected, atol=1e-9)
    # a1 = 0, a2 = -1: the positive side is off by at most 1e-12 * x (the documented clamp of the larger slope)
    assert torch.allclose(two_piece_activation(x, a1, a2)[0, 0].flatten(), torch.tensor([2., 0.5, 0., 0.]),
                          rtol=0, atol=1e-11)
    x_cl = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    a1, a2 = torch.rand(2, 4) * 2, torch.rand(2, 4) * 2 - 1
    assert torch.allclose(two_piece_activation(x_cl, a1, a2), _max_form(x_cl, a1, a2), atol=1e-6)
