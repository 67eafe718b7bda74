"""Tests of visionmix.bpr, the geometry of Boundary Patch Refinement, against hand-derived cases and loop references.

Images are small (80x90 with 16-pixel patches) so that every expected box can be derived by hand in the comments.
Box IoU with side 16 and centre offsets (dx, dy): I = (16 - dx) * (16 - dy), IoU = I / (512 - I); so IoU > 0.25
iff I >= 103 and IoU > 0.55 iff I >= 182.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visionmix import bpr
from visionmix.errors import ConfigError, DataError

H, W, PS = 80, 90, 16


# ----------------------------------------------------------------------------------------------------------------
# loop references of the official definitions


def _boundary_loop(mask: np.ndarray) -> np.ndarray:
    """find_float_boundary pixel by pixel: 3x3 foreground count with zeros outside, min(|s - 9|, s) / 4.5."""
    h, w = mask.shape
    out = np.zeros((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            s = sum(int(mask[j, i]) for j in range(y - 1, y + 2) for i in range(x - 1, x + 2)
                    if 0 <= j < h and 0 <= i < w)
            out[y, x] = min(abs(s - 9), abs(s)) / 4.5
    return out


def _boxes_reference(mask: np.ndarray, ps: int, thresh: float) -> list[list[int]]:
    """The official get_dets in plain Python: row-major candidates, stable score order, greedy NMS, move back."""
    h, w = mask.shape
    if h <= ps or w <= ps:
        return []
    fb = _boundary_loop(mask)
    ys, xs = np.where(fb > 0)
    cands = [(float(fb[y, x]), i, [x - ps // 2, y - ps // 2, x + ps // 2, y + ps // 2])
             for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist()))]
    cands.sort(key=lambda c: (-c[0], c[1]))
    kept: list[list[int]] = []
    for _, _, box in cands:
        if all(_iou(box, k) <= thresh for k in kept):
            kept.append(box)
    moved = []
    for x1, y1, x2, y2 in kept:
        if x1 < 0:
            x1, x2 = 0, ps
        if y1 < 0:
            y1, y2 = 0, ps
        if x2 >= w:
            x1, x2 = w - 1 - ps, w - 1
        if y2 >= h:
            y1, y2 = h - 1 - ps, h - 1
        moved.append([x1, y1, x2, y2])
    return moved


def _iou(a: list[int], b: list[int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _boundary_band_reference(mask: np.ndarray, ratio: float) -> np.ndarray:
    """boundary-iou-api mask_to_boundary: 1-px zero pad, d cv2-style 3x3 erosions (border = max), subtract."""
    h, w = mask.shape
    d = max(1, int(round(ratio * np.sqrt(h ** 2 + w ** 2))))
    eroded = np.pad(mask.astype(np.uint8), 1)
    for _ in range(d):
        p = np.pad(eroded, 1, constant_values=1)  # cv2.erode's default border never erodes
        eroded = np.min([p[j:j + h + 2, i:i + w + 2] for j in range(3) for i in range(3)], axis=0)
    return (mask.astype(np.uint8) - eroded[1:h + 1, 1:w + 1]).astype(bool)


def _random_mask(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A few random rectangles, some touching the image edges."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), bool)
    for _ in range(3):
        y0, x0 = rng.integers(-5, h - 5), rng.integers(-5, w - 5)
        m[max(y0, 0):y0 + rng.integers(3, 30), max(x0, 0):x0 + rng.integers(3, 30)] = True
    return m


def _one_line(exc: pytest.ExceptionInfo) -> None:
    assert '\n' not in str(exc.value) and str(exc.value)


# ----------------------------------------------------------------------------------------------------------------
# boundary_map


@pytest.mark.parametrize('case', ['left', 'right', 'top', 'bottom', 'corners', 'random', 'full', 'empty'])
def test_boundary_map_equals_loop(case):
    m = np.zeros((12, 15), bool)
    if case == 'left':
        m[3:8, :4] = True
    elif case == 'right':
        m[2:9, -3:] = True
    elif case == 'top':
        m[:2, 4:10] = True
    elif case == 'bottom':
        m[-5:, 1:6] = True
    elif case == 'corners':
        m[:3, :3] = m[:3, -3:] = m[-3:, :3] = m[-3:, -3:] = True
        m[6, 7] = True  # an isolated pixel: every neighbour scores 1/4.5
    elif case == 'random':
        m = np.random.default_rng(0).random((12, 15)) > 0.5
    elif case == 'full':
        m[:] = True  # zero padding: only the image border is boundary
    fb = bpr.boundary_map(m)
    assert fb.dtype == torch.float32 and fb.shape == (12, 15)
    torch.testing.assert_close(fb, torch.from_numpy(_boundary_loop(m)), rtol=0, atol=1e-6)
    if case == 'full':
        assert fb[1:-1, 1:-1].eq(0).all() and fb[0, 0] == pytest.approx(4 / 4.5) and fb[0, 5] == pytest.approx(3 / 4.5)


def test_boundary_map_accepts_numpy_tensor_and_0_1_values():
    m = _random_mask(1, 20, 20)
    ref = bpr.boundary_map(m)
    torch.testing.assert_close(bpr.boundary_map(torch.from_numpy(m)), ref)
    torch.testing.assert_close(bpr.boundary_map(m.astype(np.uint8)), ref)
    torch.testing.assert_close(bpr.boundary_map(torch.from_numpy(m).float()), ref)


# ----------------------------------------------------------------------------------------------------------------
# patch_boxes


def _segment_mask() -> np.ndarray:
    # Row 40, columns 30..49. Scores: rows 39..41 x cols 31..48 -> 3/4.5; cols 30, 49 -> 2/4.5; cols 29, 50 -> 1/4.5.
    m = np.zeros((H, W), bool)
    m[40, 30:50] = True
    return m


def test_patch_boxes_nms_train_threshold_by_hand():
    # IoU > 0.25 suppresses I >= 103: dx <= 9 for dy <= 1, dx <= 8 for dy = 2.
    # Keep (y39, x31); it removes rows 39-40 cols 29..40 and row 41 cols 29..39 -> next kept (39, 41), which removes
    # cols up to 50 except (41, 50) (dx 9, dy 2: I = 98). So (41, 50), a 1/4.5 pixel, is kept last.
    boxes = bpr.patch_boxes(_segment_mask(), PS, bpr.TRAIN_IOU_THRESH)
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[23, 31, 39, 47], [33, 31, 49, 47], [42, 33, 58, 49]]


def test_patch_boxes_nms_infer_threshold_by_hand():
    # IoU > 0.55 suppresses I >= 182: dx <= 4 for dy = 0, dx <= 3 for dy = 1, 2.
    # Row 39 keeps cols 31, 36, 41, 46 (every 5th); rows 40-41 and cols 29, 30, 49 all fall within reach. Of the
    # 1/4.5 pixels (39, 50) is suppressed by (39, 46) (dx 4, dy 0), (40, 50) survives (dx 4, dy 1: I = 180) and then
    # suppresses (41, 50).
    boxes = bpr.patch_boxes(_segment_mask(), PS, bpr.INFER_IOU_THRESH)
    assert boxes.tolist() == [[23, 31, 39, 47], [28, 31, 44, 47], [33, 31, 49, 47], [38, 31, 54, 47],
                              [42, 32, 58, 48]]
    assert (bpr.TRAIN_IOU_THRESH, bpr.INFER_IOU_THRESH) == (0.25, 0.55)


def test_patch_boxes_ties_follow_row_major_order():
    # An isolated pixel makes 9 candidates that all score 1/4.5. The row-major first, (y-1, x-1), is kept and
    # suppresses the 8 others (offsets <= 2: I >= 196). Two pixels: the one in the earlier row comes first.
    m = np.zeros((H, W), bool)
    m[50, 20] = True
    assert bpr.patch_boxes(m, PS, 0.25).tolist() == [[11, 41, 27, 57]]
    m[20, 60] = True
    assert bpr.patch_boxes(m, PS, 0.25).tolist() == [[51, 11, 67, 27], [11, 41, 27, 57]]
    assert bpr.patch_boxes(m, PS, 0.55).tolist() == [[51, 11, 67, 27], [11, 41, 27, 57]]


def test_patch_boxes_moved_inside_at_all_four_edges():
    # One pixel near each edge; the kept candidate is its top-left neighbour (y-1, x-1).
    m = np.zeros((H, W), bool)
    m[2, 45] = True   # (1, 44):  [36, -7, 52, 9]   -> y1 < 0            -> [36, 0, 52, 16]
    m[40, 3] = True   # (39, 2):  [-6, 31, 10, 47]  -> x1 < 0            -> [0, 31, 16, 47]
    m[40, 87] = True  # (39, 86): [78, 31, 94, 47]  -> x2 >= 90          -> [90-1-16, 31, 89, 47]
    m[77, 45] = True  # (76, 44): [36, 68, 52, 84]  -> y2 >= 80          -> [36, 80-1-16, 52, 79]
    expected = [[36, 0, 52, 16], [0, 31, 16, 47], [73, 31, 89, 47], [36, 63, 52, 79]]
    assert bpr.patch_boxes(m, PS, 0.25).tolist() == expected
    # include_edge: right/bottom boxes end at the image edge instead of one pixel short.
    expected[2], expected[3] = [74, 31, 90, 47], [36, 64, 52, 80]
    assert bpr.patch_boxes(m, PS, 0.25, include_edge=True).tolist() == expected


def test_patch_boxes_nms_runs_before_move_back():
    # (19, 0) -> [-8, 11, 8, 27] and (19, 11) -> [3, 11, 19, 27]: IoU 80/432 = 0.19, both kept. Moved back, the
    # first becomes [0, 11, 16, 27], which overlaps the second by 208/304 = 0.68; the official code keeps both.
    m = np.zeros((H, W), bool)
    m[20, 1] = m[20, 12] = True
    assert bpr.patch_boxes(m, PS, 0.25).tolist() == [[0, 11, 16, 27], [3, 11, 19, 27]]


def test_patch_boxes_full_mask_hugs_the_border():
    # Only the image border is boundary (zero padding); its corners score highest (4/4.5), top-left first.
    boxes = bpr.patch_boxes(np.ones((H, W), np.uint8), PS, 0.25)
    assert boxes[0].tolist() == [0, 0, PS, PS] and boxes[:4].tolist()[1:] == [[73, 0, 89, 16], [0, 63, 16, 79],
                                                                              [73, 63, 89, 79]]
    on_border = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 2] == W - 1) | (boxes[:, 3] == H - 1)
    assert on_border.all()
    covered = torch.zeros(H, W, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        covered[y1:y2, x1:x2] = True
    assert covered[0, :W - 1].all() and covered[:H - 1, 0].all()
    assert not covered[:, W - 1].any() and not covered[H - 1].any()  # the official last-row/column gap
    wide = bpr.patch_boxes(np.ones((H, W), np.uint8), PS, 0.25, include_edge=True)
    assert (wide[:, 2].max(), wide[:, 3].max()) == (W, H)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('thresh', [0.25, 0.55])
def test_patch_boxes_match_plain_python_reference(seed, thresh):
    m = _random_mask(seed)
    assert bpr.patch_boxes(m, PS, thresh).tolist() == _boxes_reference(m, PS, thresh)


def test_patch_boxes_empty_and_small_images():
    assert bpr.patch_boxes(np.zeros((H, W), bool), PS).shape == (0, 4)
    assert bpr.patch_boxes(np.zeros((H, W), bool), PS).dtype == torch.int64
    m = np.zeros((PS, W), bool)
    m[5, 40] = True
    assert bpr.patch_boxes(m, PS).shape == (0, 4)  # height == patch_size: skipped like the official script
    assert bpr.patch_boxes(m.T.copy(), PS).shape == (0, 4)
    assert bpr.patch_boxes(np.pad(m, ((0, 1), (0, 0))), PS).shape == (1, 4)  # 17 rows: processed
    assert bpr.patch_boxes(np.zeros((20, 20), bool)).shape == (0, 4)  # default 64 patches on a small image


# ----------------------------------------------------------------------------------------------------------------
# extract_patches and patch_probabilities


def _image(h: int = 30, w: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_extract_patches_exact_crop_and_normalisation():
    img, m = _image(), np.zeros((30, 40), bool)
    m[10:20, 5:25] = True
    boxes = torch.tensor([[0, 0, 8, 8], [20, 12, 28, 20]])
    ip, mp = bpr.extract_patches(img, m, boxes, out_size=8)
    assert ip.shape == (2, 3, 8, 8) and mp.shape == (2, 1, 8, 8) and ip.dtype == torch.float32
    mean, std = torch.tensor(bpr.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(bpr.IMAGENET_STD).view(3, 1, 1)
    crop = torch.from_numpy(img[12:20, 20:28]).permute(2, 0, 1).float()
    torch.testing.assert_close(ip[1], (crop - mean) / std)
    torch.testing.assert_close(mp[1, 0], torch.from_numpy(m[12:20, 20:28]).float() * 2 - 1)
    assert set(mp.unique().tolist()) == {-1.0, 1.0}
    # The same image as a (3, H, W) tensor gives the same patches.
    ip_t, mp_t = bpr.extract_patches(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(m), boxes, out_size=8)
    torch.testing.assert_close(ip_t, ip)
    torch.testing.assert_close(mp_t, mp)


def test_extract_patches_padding_and_resize():
    img, m = _image(), np.ones((30, 40), np.uint8)
    boxes = torch.tensor([[0, 0, 8, 8]])
    ip, mp = bpr.extract_patches(img, m, boxes, out_size=12, padding=2)  # 12x12 crop from (-2, -2), zero-padded
    black = -torch.tensor(bpr.IMAGENET_MEAN) / torch.tensor(bpr.IMAGENET_STD)
    torch.testing.assert_close(ip[0, :, 0, 0], black)
    assert mp[0, 0, :2].eq(-1).all() and mp[0, 0, 2:, 2:].eq(1).all()
    # Nearest 2x upsampling of the mask repeats each pixel; a constant image stays constant after bilinear.
    m2 = np.zeros((30, 40), bool)
    m2[3:6, 2:7] = True
    _, mp2 = bpr.extract_patches(img, m2, boxes, out_size=16)
    torch.testing.assert_close(mp2[0, 0], (torch.from_numpy(m2[:8, :8]).float() * 2 - 1).repeat_interleave(2, 0)
                               .repeat_interleave(2, 1))
    flat = np.full((30, 40, 3), 100, np.uint8)
    ip3, _ = bpr.extract_patches(flat, m2, boxes, out_size=13)
    torch.testing.assert_close(ip3[0, 1], torch.full((13, 13), (100 - 116.28) / 57.12))
    # uint8 images are rounded back to integers after resizing, like cv2 on uint8.
    ip4, _ = bpr.extract_patches(img, m2, boxes, out_size=13)
    raw = ip4 * torch.tensor(bpr.IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(bpr.IMAGENET_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(raw, raw.round(), rtol=0, atol=1e-3)
    assert bpr.extract_patches(img, m2, torch.zeros(0, 4, dtype=torch.long))[0].shape == (0, 3, 128, 128)


def test_patch_probabilities_resize_then_softmax_and_padding():
    logits = torch.randn(3, 2, 8, 8)
    probs = bpr.patch_probabilities(logits, patch_size=4)
    assert probs.shape == (3, 4, 4) and probs.dtype == torch.float32
    expected = F.interpolate(logits, size=(4, 4), mode='bilinear', align_corners=False).softmax(1)[:, 1]
    torch.testing.assert_close(probs, expected)
    # Logits already at the patch size are used as they are; padding is cropped after the softmax.
    padded = bpr.patch_probabilities(logits, patch_size=4, padding=2)
    torch.testing.assert_close(padded, logits.softmax(1)[:, 1, 2:6, 2:6])
    # A 2x nearest-upsampled map comes back exactly (bilinear 2x downsampling averages equal pairs).
    small = torch.randn(1, 2, 5, 5)
    big = small.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(bpr.patch_probabilities(big, 5), small.softmax(1)[:, 1])


# ----------------------------------------------------------------------------------------------------------------
# merge_patches and refine_mask


def test_merge_averages_overlaps_and_keeps_uncovered():
    coarse = np.zeros((8, 8), bool)
    coarse[7, 7] = True   # uncovered: stays foreground
    coarse[0, 5] = True   # covered by the second patch only
    boxes = torch.tensor([[0, 0, 4, 4], [2, 0, 6, 4]])  # overlap: rows 0..3, cols 2..3
    probs = torch.stack([torch.full((4, 4), 0.9), torch.full((4, 4), 0.0)])
    out = bpr.merge_patches(coarse, boxes, probs)
    assert out.dtype == torch.bool and out.shape == (8, 8)
    assert out[:4, :2].all()          # first patch only: 0.9 > 0.5
    assert not out[:4, 2:4].any()     # (0.9 + 0.0) / 2 = 0.45 -> background
    assert not out[:4, 4:6].any()     # second patch only: 0.0, so (0, 5) is cleared
    assert out[7, 7] and out.sum() == 9
    probs[1] = 0.3
    out = bpr.merge_patches(coarse, boxes, probs)
    assert out[:4, 2:4].all()         # (0.9 + 0.3) / 2 = 0.6 -> foreground
    assert not out[:4, 4:6].any()     # 0.3 alone -> background
    # Probabilities with a padding border: the border is cropped before pasting.
    padded = F.pad(probs, (1, 1, 1, 1), value=1.0)
    assert torch.equal(bpr.merge_patches(coarse, boxes, padded, padding=1), out)
    assert torch.equal(bpr.merge_patches(coarse, torch.zeros(0, 4), torch.zeros(0, 4, 4)), torch.from_numpy(coarse))


def _mask_copying_refiner(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Predicts the coarse mask it is given: logits -k / +k from the {-1, +1} mask channel."""
    assert img.shape[1] == 3 and mask.shape[1] == 1
    return torch.cat([-4 * mask, 4 * mask], dim=1)


@pytest.mark.parametrize('padding', [0, 4])
def test_refine_perfect_mask_is_unchanged(padding):
    img, m = _image(H, W), _random_mask(3)
    out_size = 2 * (PS + 2 * padding)  # exact 2x: the round trip nearest-up / bilinear-down is lossless
    refined = bpr.refine_mask(img, m, _mask_copying_refiner, patch_size=PS, out_size=out_size, padding=padding,
                              batch_size=3)
    assert refined.dtype == torch.bool and torch.equal(refined, torch.from_numpy(m))


def test_refine_background_refiner_clears_exactly_the_covered_pixels():
    img, m = _image(H, W), _random_mask(2)
    calls = []

    def background(ip: torch.Tensor, mp: torch.Tensor) -> torch.Tensor:
        calls.append(len(ip))
        return torch.cat([torch.ones_like(mp), -torch.ones_like(mp)], dim=1)

    refined = bpr.refine_mask(img, m, background, patch_size=PS, out_size=32, batch_size=4)
    boxes = bpr.patch_boxes(m, PS, bpr.INFER_IOU_THRESH)
    covered = torch.zeros(H, W, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        covered[y1:y2, x1:x2] = True
    assert torch.equal(refined, torch.from_numpy(m) & ~covered)
    assert sum(calls) == len(boxes) and max(calls) <= 4
    assert torch.equal(bpr.refine_mask(img, np.zeros((H, W)), background, patch_size=PS), torch.zeros(H, W).bool())


# ----------------------------------------------------------------------------------------------------------------
# training pairs, IoU and Boundary IoU


def test_training_pairs_by_hand():
    def box(y0, y1, x0, x1):
        m = np.zeros((10, 10), bool)
        m[y0:y1, x0:x1] = True
        return m

    gt = [box(0, 4, 0, 4), box(0, 4, 0, 5), box(5, 10, 5, 10)]          # classes 1, 2, 1
    coarse = [box(0, 4, 0, 4),   # gt0 IoU 1 (class 1); gt1 IoU 0.8 is class 2
              box(0, 4, 0, 4),   # class 2: gt1 IoU 16/20 = 0.8
              box(5, 10, 5, 7),  # class 1: gt2 IoU 10/25 = 0.4 -> dropped
              box(0, 4, 0, 2)]   # class 1: gt0 IoU 8/16 = 0.5 -> dropped (<= 0.5)
    pairs = bpr.training_pairs(coarse, [1, 2, 1, 1], np.stack(gt), np.array([1, 2, 1]))
    assert pairs == [(0, 0), (1, 1)]
    assert bpr.training_pairs(coarse, [3, 3, 3, 3], gt, [1, 2, 1]) == []  # no gt of their class
    assert bpr.training_pairs(coarse, [1, 2, 1, 1], [], []) == []
    assert bpr.mask_iou(coarse[3], gt[0]) == 0.5 and bpr.mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0


def test_mask_to_boundary_by_hand_and_against_erosion_reference():
    # 20x20: diagonal 28.28; ratio 0.02 -> d = round(0.57) = 1; ratio 0.1 -> d = round(2.83) = 3.
    sq = np.zeros((20, 20), bool)
    sq[4:12, 4:12] = True
    assert bpr.mask_to_boundary(sq).sum() == 64 - 36        # the 1-pixel ring of the 8x8 square
    assert bpr.mask_to_boundary(sq, 0.1).sum() == 64 - 4    # a 3-pixel ring leaves the 2x2 centre
    corner = np.zeros((20, 20), bool)
    corner[:6, :6] = True
    assert bpr.mask_to_boundary(corner).sum() == 36 - 16    # the image edges count as contour
    for seed in range(3):
        m = np.random.default_rng(seed).random((20, 24)) > 0.3
        for ratio in (0.02, 0.07, 0.1):
            assert torch.equal(bpr.mask_to_boundary(m, ratio), torch.from_numpy(_boundary_band_reference(m, ratio)))


def test_boundary_iou_by_hand():
    # gt: 8x8 square rows/cols 4..11; pred: rows/cols 6..13; d = 1, so each band is the 28-pixel outer ring.
    # In the overlap [6..11]^2 the gt ring is row 11 or col 11, the pred ring is row 6 or col 6: both hold only at
    # (11, 6) and (6, 11). Boundary IoU = 2 / (28 + 28 - 2) = 1 / 27.
    gt, pred = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    gt[4:12, 4:12] = True
    pred[6:14, 6:14] = True
    assert bpr.boundary_iou(gt, pred) == pytest.approx(1 / 27)
    assert bpr.boundary_iou(gt, gt) == 1.0
    assert bpr.boundary_iou(gt, np.zeros((20, 20))) == 0.0
    assert bpr.boundary_iou(np.zeros((20, 20)), np.zeros((20, 20))) == 0.0  # documented: empty vs empty is 0


# ----------------------------------------------------------------------------------------------------------------
# user mistakes


def test_bad_inputs_raise_one_line_errors():
    img, m = _image(), np.zeros((30, 40), bool)
    box = torch.tensor([[0, 0, 8, 8]])
    cases = [
        (DataError, lambda: bpr.boundary_map(np.zeros((2, 3, 4)))),
        (DataError, lambda: bpr.patch_boxes(np.zeros(5))),
        (DataError, lambda: bpr.extract_patches(img, np.zeros((30, 41)), box)),
        (DataError, lambda: bpr.extract_patches(img[..., :2], m, box)),
        (DataError, lambda: bpr.extract_patches(img, m, torch.tensor([[0, 0, 8, 6]]))),
        (DataError, lambda: bpr.extract_patches(img, m, torch.tensor([[35, 0, 43, 8]]))),
        (DataError, lambda: bpr.merge_patches(m, box, torch.zeros(2, 8, 8))),
        (DataError, lambda: bpr.merge_patches(m, box, torch.zeros(1, 6, 6))),
        (DataError, lambda: bpr.patch_probabilities(torch.zeros(1, 3, 8, 8), 8)),
        (DataError, lambda: bpr.boundary_iou(np.zeros((4, 4)), np.zeros((4, 5)))),
        (DataError, lambda: bpr.training_pairs([m], [1, 2], [m], [1])),
        (DataError, lambda: bpr.refine_mask(img, np.ones((30, 40)), lambda a, b: torch.zeros(1), patch_size=8)),
        (ConfigError, lambda: bpr.patch_boxes(m, patch_size=15)),
        (ConfigError, lambda: bpr.patch_boxes(m, iou_thresh=1.5)),
        (ConfigError, lambda: bpr.extract_patches(img, m, box, padding=-1)),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as exc:
            call()
        _one_line(exc)
