"""The fast RoIAlign (forward and gradient) equals torchvision's, on the awkward cases too."""
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from visionmix.layers import roi_align as separable
from visionmix.layers.roi_align import FastMultiScaleRoIAlign, roi_align_backward, roi_align_forward


def _rois(count: int, batch: int, extent: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(count, 2, generator=g) * extent * 1.2 - 0.1 * extent  # some start off the map
    size = torch.rand(count, 2, generator=g) * extent * 0.6
    size[: count // 4] *= 0.02  # sub-pixel RoIs
    index = torch.randint(0, batch, (count, 1), generator=g).float()
    return torch.cat([index, start, start + size], 1)


@pytest.mark.parametrize('chunked', [False, True])
@pytest.mark.parametrize('aligned', [False, True])
@pytest.mark.parametrize('output_size,sampling_ratio,scale', [(7, 2, 0.25), (14, 2, 0.125), ((3, 5), 3, 0.5)])
def test_forward_and_gradient_equal_torchvision(aligned, output_size, sampling_ratio, scale, chunked, monkeypatch):
    if chunked:  # a few RoIs per chunk
        monkeypatch.setattr(separable, '_WINDOW_FLOATS', 2000)
    x = torch.randn(3, 5, 11, 13, dtype=torch.float64, requires_grad=True)
    rois = _rois(40, 3, 13 / scale, seed=1).double()
    rois = torch.cat([rois, torch.tensor([[1, -20.0, -20.0, -8.0, -8.0], [2, 0.0, 0.0, 13 / scale, 11 / scale]],
                                         dtype=torch.float64)])  # wholly off the map; the whole map
    pooled = roi_align(x, rois, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(roi_align_forward(x.detach(), rois, output_size, scale, sampling_ratio, aligned),
                               pooled.detach(), rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(pooled)
    expected, = torch.autograd.grad(pooled, x, grad)
    got = roi_align_backward(grad, rois, x.shape, scale, sampling_ratio, aligned)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_no_rois_and_adaptive_sampling():
    x = torch.randn(2, 3, 8, 8)
    assert roi_align_backward(torch.zeros(0, 3, 7, 7), torch.zeros(0, 5), x.shape, 0.25, 2).abs().sum() == 0
    assert roi_align_forward(x, torch.zeros(0, 5), (7, 5), 0.25, 2).shape == (0, 3, 7, 5)
    with pytest.raises(ValueError, match='sampling_ratio > 0'):
        roi_align_forward(x, torch.zeros(1, 5), 7, 0.25, 0)
    with pytest.raises(ValueError, match='sampling_ratio > 0'):
        roi_align_backward(torch.zeros(1, 3, 7, 7), torch.zeros(1, 5), x.shape, 0.25, 0)


def test_multiscale_module_matches_torchvision_forward_and_backward():
    names = ['0', '1', '2']
    maps = {n: torch.randn(2, 4, 32 >> i, 24 >> i, requires_grad=True) for i, n in enumerate(names)}
    boxes = [_rois(30, 1, 96, seed=s)[:, 1:].clamp(0, 95) for s in (2, 3)]
    boxes = [torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2] + 0.5)], 1) for b in boxes]
    sizes = [(128, 96)] * 2
    ours = FastMultiScaleRoIAlign(names, 7, 2, canonical_scale=56)
    theirs = MultiScaleRoIAlign(names, 7, 2, canonical_scale=56)
    a, b = ours(maps, boxes, sizes), theirs(maps, boxes, sizes)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)  # float32 sample positions round differently
    assert len(set(theirs.map_levels(boxes).tolist())) > 1  # several levels pooled
    grad = torch.randn_like(a)
    ga = torch.autograd.grad(a, list(maps.values()), grad)
    gb = torch.autograd.grad(b, list(maps.values()), grad)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference takes torchvision's kernel
        assert torch.equal(ours(maps, boxes, sizes), b)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # not float32 / float64: torchvision's kernel, exactly
        assert torch.equal(ours(maps, boxes, sizes), theirs(maps, boxes, sizes))


def test_autocast_bfloat16_maps_get_gradients_of_their_dtype():
    """Under CPU autocast torchvision pools bf16 maps in float32; the gradient comes back in bf16, at the pixels
    float32's lands on."""
    maps32 = {'0': torch.randn(1, 4, 40, 40)}
    boxes = [torch.tensor([[50.3, 61.7, 97.1, 150.9], [3.2, 5.5, 9.9, 12.1]])]
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        maps = {'0': maps32['0'].to(dtype).requires_grad_()}
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            pooled = FastMultiScaleRoIAlign(['0'], 7, 2)(maps, boxes, [(160, 160)])
        grad, = torch.autograd.grad(pooled, maps['0'], torch.ones_like(pooled))
        assert grad.dtype == dtype
        grads.append(grad.float())
    assert torch.equal(grads[0] != 0, grads[1] != 0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-2, atol=1e-2)
