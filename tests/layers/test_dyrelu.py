"""Dynamic ReLU: hand-computed values on tiny tensors."""
import pytest
import torch

from visionmix.layers.dyrelu import DynamicReLU


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
