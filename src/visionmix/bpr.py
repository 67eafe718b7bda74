"""Geometry of BPR, Boundary Patch Refinement (Tang et al., "Look Closer to Segment Better", CVPR 2021).

BPR refines the boundary of a coarse instance mask in small square patches. For one instance:

1. :func:`boundary_map` scores every pixel whose 3x3 neighbourhood mixes foreground and background;
2. :func:`patch_boxes` centres one ``patch_size`` square on every such pixel, keeps a few with NMS and moves the
   ones that stick out of the image back inside;
3. :func:`extract_patches` crops image and coarse mask under each box and resizes them to the network's input;
4. a refinement network (built elsewhere) predicts 2-class logits per patch; :func:`patch_probabilities` turns
   them into foreground probabilities at the patch's own size;
5. :func:`merge_patches` averages the probabilities where patches overlap and thresholds them at 0.5; pixels that
   no patch covers keep the coarse mask.

:func:`refine_mask` chains the five steps around any callable refiner. :func:`training_pairs` pairs coarse
instances with ground truth for building the training set, and :func:`boundary_iou` is the Boundary IoU metric
(Cheng et al., CVPR 2021) that BPR reports.

The behaviour follows the official code (tinyalpha/BPR, now chenhang98/BPR: ``tools/split_patches.py``,
``tools/merge_patches.py``, ``tools/filter.py`` and its mmsegmentation ``EncoderDecoderRefine``), quirks included;
every place where visionmix differs or has to choose is said in the function's docstring. Masks are ``(H, W)``
bool or 0/1 numpy arrays or torch tensors (any value > 0 is foreground); boxes are int64 ``x1, y1, x2, y2`` with
exclusive ``x2, y2``, so a box covers ``mask[y1:y2, x1:x2]``. Results are CPU torch tensors.

This module is a leaf: it imports only numpy, torch, torchvision.ops and :mod:`visionmix.errors`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from visionmix.errors import ConfigError, DataError

__all__ = [
    'TRAIN_IOU_THRESH', 'INFER_IOU_THRESH', 'PATCH_SIZE', 'IMAGENET_MEAN', 'IMAGENET_STD', 'boundary_map',
    'patch_boxes', 'extract_patches', 'patch_probabilities', 'merge_patches', 'refine_mask', 'training_pairs',
    'mask_iou', 'mask_to_boundary', 'boundary_iou',
]

# NMS thresholds of the official Cityscapes scripts: prepare_dataset.sh builds training patches at 0.25 (also the
# split_patches.py default), inference.sh uses 0.55. The COCO scripts use 0.15 (build) and 0.25 (inference).
TRAIN_IOU_THRESH = 0.25
INFER_IOU_THRESH = 0.55
PATCH_SIZE = 64  # --patch-size default; no official script or config changes it
# Normalisation of the official configs, RGB order, on 0-255 values.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

MaskLike = np.ndarray | torch.Tensor
Refiner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Pixels per chunk of the float32 matmul in _pairwise_intersections: a dot product of 0/1 values is exact in float32
# up to 2**24, and chunking bounds the memory of the float copies of large masks.
_IOU_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# input checks


def _shape(x: MaskLike) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _as_mask(mask: MaskLike, name: str = 'mask') -> torch.Tensor:
    """A user mask as a CPU bool tensor (H, W); anything > 0 is foreground."""
    if isinstance(mask, torch.Tensor):
        t = mask.detach().cpu()
    else:
        a = np.asarray(mask)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DataError(f'{name} has dtype {a.dtype}; expected a bool or 0/1 numeric (H, W) array')
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim != 2:
        raise DataError(f'{name} has shape {_shape(t)}; expected a 2-D (H, W) mask, one instance at a time')
    if t.numel() == 0:
        raise DataError(f'{name} has shape {_shape(t)}; expected a non-empty (H, W) mask')
    return t > 0


def _as_mask_stack(masks: MaskLike | Sequence[MaskLike], name: str) -> torch.Tensor:
    """A stack of instance masks, (N, H, W) array/tensor or a sequence of (H, W) masks, as bool (N, H, W)."""
    if isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 3:
        masks = list(masks)
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        raise DataError(f'{name} has shape {_shape(masks)}; expected (N, H, W) or a sequence of (H, W) masks')
    stack = [_as_mask(m, f'{name}[{i}]') for i, m in enumerate(masks)]
    shapes = {_shape(m) for m in stack}
    if len(shapes) > 1:
        raise DataError(f'{name} mixes mask sizes {sorted(shapes)}; all instances of one image share its size')
    return torch.stack(stack) if stack else torch.zeros(0, 0, 0, dtype=torch.bool)


def _as_image(image: MaskLike) -> tuple[torch.Tensor, bool]:
    """A user image as float32 (3, H, W) on 0-255 values, and whether it was integer (uint8-like)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise DataError(f'image tensor has shape {_shape(image)}; expected (3, H, W) RGB with 0-255 values')
        t = image.detach().cpu()
    else:
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] != 3:
            raise DataError(f'image array has shape {a.shape}; expected (H, W, 3) RGB with 0-255 values')
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    return t.float(), not t.is_floating_point()


def _check_same_size(image: torch.Tensor, mask: torch.Tensor) -> None:
    if _shape(image)[1:] != _shape(mask):
        raise DataError(f'image is {_shape(image)[1]}x{_shape(image)[2]} but mask is {_shape(mask)[0]}x'
                        f'{_shape(mask)[1]} (H x W); give the mask of this image')


def _as_boxes(boxes: MaskLike, height: int, width: int) -> tuple[torch.Tensor, int]:
    """Boxes as int64 (N, 4) and their common side; they must be equal squares inside the image."""
    b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes.detach().cpu())
    if b.ndim != 2 or b.shape[1] != 4:
        raise DataError(f'boxes have shape {_shape(b)}; expected (N, 4) of x1, y1, x2, y2')
    if b.is_floating_point() and not torch.equal(b, b.round()):
        raise DataError('boxes have fractional coordinates; expected integer pixel boxes as patch_boxes gives')
    b = b.long()
    if len(b) == 0:
        return b, 0
    sides = torch.cat([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]).unique()
    if len(sides) != 1 or int(sides[0]) <= 0:
        raise DataError(f'boxes have sides {sides.tolist()[:8]}; expected squares of one positive size')
    outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > width) | (b[:, 3] > height)
    if outside.any():
        raise DataError(f'box {b[outside][0].tolist()} lies outside the {height}x{width} (H x W) image')
    return b, int(sides[0])


def _check_int(name: str, value: int, minimum: int, hint: str = '') -> None:
    """Options are user input: a wrong one is a :class:`ConfigError`, not a failure deep inside torch."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f'{name}={value!r}; expected an integer >= {minimum}{hint}')


def _check_patch_size(patch_size: int) -> None:
    _check_int('patch_size', patch_size, 2, ' such as 64')
    if patch_size % 2:
        raise ConfigError(f'patch_size={patch_size}; expected an even size (boxes span centre +- patch_size // 2)')


# ----------------------------------------------------------------------------------------------------------------
# patch proposal


def boundary_map(mask: MaskLike) -> torch.Tensor:
    """Boundary score of every pixel (official ``find_float_boundary`` with width 3).

    ``s`` counts the foreground pixels of each 3x3 neighbourhood (zero padding, so a mask that touches the image
    border has boundary pixels along it); the score is ``min(|s - 9|, s) / 4.5``. It is > 0 exactly where the
    neighbourhood mixes foreground and background, and largest (4/4.5) where it is split 4/5 or 5/4, e.g. at
    convex corners. The score orders the patch proposals in NMS.

    Args:
        mask: (H, W) bool or 0/1 array or tensor.

    Returns:
        float32 tensor (H, W) with values in {0, 1, 2, 3, 4} / 4.5.
    """
    m = _as_mask(mask).float()[None, None]
    s = F.conv2d(m, torch.ones(1, 1, 3, 3), padding=1)[0, 0]
    return torch.minimum((s - 9).abs(), s.abs()) / 4.5


def _move_inside(boxes: torch.Tensor, height: int, width: int, patch_size: int, include_edge: bool) -> torch.Tensor:
    """Shift boxes that stick out of the image back inside (official ``_force_move_back``).

    The official code moves a box with ``x2 >= W`` to ``[W - 1 - ps, W - 1]``, so right/bottom patches never cover
    the last column/row; ``include_edge`` moves only boxes with ``x2 > W``, to ``[W - ps, W]``.
    """
    b = boxes.clone()
    # Same order as the official code (left, top, right, bottom); images are larger than the patch, so a box can
    # stick out on at most one side per axis and the order does not change the result.
    for lo, hi in ((0, 2), (1, 3)):
        out = b[:, lo] < 0
        b[out, lo], b[out, hi] = 0, patch_size
    for lo, hi, size in ((0, 2, width), (1, 3, height)):
        end = size if include_edge else size - 1
        out = b[:, hi] > end if include_edge else b[:, hi] >= size
        b[out, lo], b[out, hi] = end - patch_size, end
    return b


def patch_boxes(
        mask: MaskLike,
        patch_size: int = PATCH_SIZE,
        iou_thresh: float = TRAIN_IOU_THRESH,
        *,
        include_edge: bool = False,
) -> torch.Tensor:
    """Square patches along the boundary of one instance mask (official ``get_dets``).

    One box ``[x - ps//2, y - ps//2, x + ps//2, y + ps//2]`` per boundary pixel of :func:`boundary_map`, scored by
    its boundary score; NMS (IoU > ``iou_thresh`` suppresses, boxes of side ``ps``, no +1 offset, as in mmcv's and
    torchvision's nms); then the kept boxes that stick out of the image are moved inside. As in the official code
    the move happens after NMS, so two kept boxes may overlap more than ``iou_thresh`` once moved.

    Ties: most candidates share one of only four scores. The official ``mmcv.ops.nms`` orders them with an unstable
    ``sort``, so its tie order is not defined. visionmix breaks ties by the row-major order of the boundary pixels
    (the order of ``np.where``), which is what a stable descending sort of the official candidates gives; the ranks
    of that order are what is passed to ``torchvision.ops.nms``, so the result does not depend on how its sort
    treats equal scores.

    Edges: like the official ``_force_move_back``, a box with ``x2 >= W`` becomes ``[W - 1 - ps, W - 1]`` (same for
    y), so by default the patches never cover the last column and row of the image. ``include_edge=True`` (a
    visionmix option) moves only boxes with ``x2 > W``, to ``[W - ps, W]``, which covers them.

    Args:
        mask: (H, W) bool or 0/1 array or tensor, one instance.
        patch_size: Patch side in pixels, even. Official default 64.
        iou_thresh: NMS IoU threshold; :data:`TRAIN_IOU_THRESH` (0.25) to build training patches,
            :data:`INFER_IOU_THRESH` (0.55) for inference.
        include_edge: Let right/bottom patches reach the last column/row (not the official behaviour).

    Returns:
        int64 tensor (N, 4) of ``x1, y1, x2, y2`` in NMS keep order (highest score first). Empty (0, 4) for an empty
        mask, and for an image whose height or width is <= ``patch_size``, which the official script skips.
    """
    _check_patch_size(patch_size)
    if not 0.0 <= float(iou_thresh) <= 1.0:
        raise ConfigError(f'iou_thresh={iou_thresh!r}; expected a value in [0, 1] such as 0.25 or 0.55')
    m = _as_mask(mask)
    height, width = _shape(m)
    if height <= patch_size or width <= patch_size:
        return torch.zeros(0, 4, dtype=torch.long)
    score = boundary_map(m)
    ys, xs = torch.nonzero(score > 0, as_tuple=True)  # row-major, like np.where
    if len(ys) == 0:
        return torch.zeros(0, 4, dtype=torch.long)
    half = patch_size // 2
    boxes = torch.stack([xs - half, ys - half, xs + half, ys + half], dim=1)
    order = torch.sort(score[ys, xs], descending=True, stable=True).indices
    rank = torch.empty(len(order), dtype=torch.float64)
    rank[order] = torch.arange(len(order), 0, -1, dtype=torch.float64)  # distinct scores: no ties left for nms
    keep = nms(boxes.double(), rank, float(iou_thresh))
    return _move_inside(boxes[keep], height, width, patch_size, include_edge)


# ----------------------------------------------------------------------------------------------------------------
# patch crops and network outputs


def _crop_patches(
        image: torch.Tensor,
        mask: torch.Tensor,
        boxes: torch.Tensor,
        side: int,
        padding: int,
        out_size: int,
        round_image: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of an already zero-padded image (3, H+2p, W+2p) and mask (H+2p, W+2p), resized and normalised."""
    n, crop = len(boxes), side + 2 * padding
    if n == 0:
        return torch.zeros(0, 3, out_size, out_size), torch.zeros(0, 1, out_size, out_size)
    # A box's top-left (x1, y1) is the crop's top-left (x1 - p, y1 - p) shifted by the padding p of the image.
    rows = boxes[:, 1, None] + torch.arange(crop)
    cols = boxes[:, 0, None] + torch.arange(crop)
    img = image[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # (N, 3, crop, crop), exact slices
    msk = mask[rows[:, :, None], cols[:, None, :]][:, None].float()
    if crop != out_size:
        img = F.interpolate(img, size=(out_size, out_size), mode='bilinear', align_corners=False)
        if round_image:  # the official pipeline resizes uint8 images with cv2, whose output is uint8 again
            img = img.round().clamp_(0, 255)
        # 'nearest' picks floor(i * in / out) like cv2.INTER_NEAREST (mmcv's resize of segmentation maps)
        msk = F.interpolate(msk, size=(out_size, out_size), mode='nearest')
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (img - mean) / std, (msk - 0.5) / 0.5


def extract_patches(
        image: MaskLike,
        mask: MaskLike,
        boxes: MaskLike,
        out_size: int = 128,
        padding: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs for each box: the image patch and the coarse-mask patch (official crop + test pipeline).

    The crop is ``[y1 - p : y2 + p, x1 - p : x2 + p]`` of the zero-padded image and mask (``p = padding``, 0 by
    default, so a default patch is the box itself); it is taken by exact slicing and resized to ``out_size``
    (128 for HRNet-18s, 256 for HRNet-48), the image bilinearly (``align_corners=False``) and the mask with nearest
    neighbour, as the official ``Resize`` (keep_ratio, square patches) does. A uint8 image is rounded back to
    integers after the resize, like the official cv2 pipeline on uint8 images (cv2's fixed-point bilinear may
    still differ by one grey level); float images are not rounded. The image is then normalised with
    :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` and the binarised mask mapped to {-1, +1} by ``(m - 0.5) / 0.5``.

    Args:
        image: (H, W, 3) numpy array (uint8) or (3, H, W) tensor, RGB with 0-255 values. The official code reads BGR
            with cv2 and converts to RGB; visionmix takes RGB directly.
        mask: (H, W) coarse mask of the instance, same H, W as the image.
        boxes: (N, 4) integer ``x1, y1, x2, y2`` squares of one size inside the image (from :func:`patch_boxes`).
        out_size: Side of the network input.
        padding: Context added on each side of the box before resizing.

    Returns:
        ``(image_patches, mask_patches)``: float32 (N, 3, out_size, out_size) and (N, 1, out_size, out_size).
    """
    _check_int('out_size', out_size, 1, ' such as 128')
    _check_int('padding', padding, 0)
    img, integer = _as_image(image)
    m = _as_mask(mask)
    _check_same_size(img, m)
    b, side = _as_boxes(boxes, *_shape(m))
    pad = (padding,) * 4
    return _crop_patches(F.pad(img, pad), F.pad(m, pad), b, side, padding, out_size, integer)


def patch_probabilities(logits: torch.Tensor, patch_size: int, padding: int = 0) -> torch.Tensor:
    """Foreground probability of each patch at its original size (official ``rescale=True``, BPR#39).

    Like mmseg's ``whole_inference`` + ``inference``, the logits are resized bilinearly (``align_corners=False``)
    to the cropped patch size ``patch_size + 2 * padding`` first and the softmax is taken after; then the padding
    is cropped off. The official model's logits are at its input size (mmseg's ``encode_decode`` upsamples the
    head output), so a refiner should return logits at ``out_size`` for the result to match; logits of another
    size are resized in one step.

    Args:
        logits: (N, 2, h, w) background/foreground logits.
        patch_size: Side of the boxes the patches were cropped from.
        padding: The ``padding`` given to :func:`extract_patches`.

    Returns:
        float32 tensor (N, patch_size, patch_size) of foreground probabilities.
    """
    _check_int('patch_size', patch_size, 1, ' such as 64')
    _check_int('padding', padding, 0)
    x = torch.as_tensor(logits).detach()
    if x.ndim != 4 or x.shape[1] != 2:
        raise DataError(f'logits have shape {_shape(x)}; expected (N, 2, h, w) background/foreground logits')
    x = x.cpu().float()
    crop = patch_size + 2 * padding
    if _shape(x)[2:] != (crop, crop) and len(x):
        x = F.interpolate(x, size=(crop, crop), mode='bilinear', align_corners=False)
    prob = x.softmax(dim=1)[:, 1]
    return prob[:, padding:crop - padding, padding:crop - padding]


# ----------------------------------------------------------------------------------------------------------------
# reassembly and the whole pipeline


def merge_patches(coarse_mask: MaskLike, boxes: MaskLike, probs: MaskLike, padding: int = 0) -> torch.Tensor:
    """Paste refined patches back into the instance mask (official ``tools/merge_patches.py``).

    Starting from the coarse mask, each patch's probabilities are summed into ``[y1:y2, x1:x2]`` (float32, in box
    order, like the official code) and the patches covering each pixel are counted; a covered pixel becomes
    foreground iff the mean probability is > 0.5, an uncovered pixel keeps its coarse value.

    Args:
        coarse_mask: (H, W) coarse mask of the instance.
        boxes: (N, 4) integer squares of one size inside the image, as used to crop the patches.
        probs: (N, s, s) foreground probabilities with ``s = box side + 2 * padding``.
        padding: Border of ``probs`` to crop off; 0 for the output of :func:`patch_probabilities`, which already
            removes it.

    Returns:
        bool tensor (H, W), the refined mask.
    """
    _check_int('padding', padding, 0)
    m = _as_mask(coarse_mask, 'coarse_mask')
    height, width = _shape(m)
    b, side = _as_boxes(boxes, height, width)
    p = torch.as_tensor(probs.detach().cpu() if isinstance(probs, torch.Tensor) else np.asarray(probs))
    if p.ndim != 3 or len(p) != len(b):
        raise DataError(f'probs have shape {_shape(p)} for {len(b)} boxes; expected one (s, s) map per box')
    if len(b) == 0:
        return m.clone()
    crop = side + 2 * padding
    if _shape(p)[1:] != (crop, crop):
        raise DataError(f'probs are {_shape(p)[1]}x{_shape(p)[2]} but boxes of side {side} with padding {padding} '
                        f'need {crop}x{crop}')
    p = p.float()[:, padding:crop - padding, padding:crop - padding]
    rows = b[:, 1, None] + torch.arange(side)
    cols = b[:, 0, None] + torch.arange(side)
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(-1)
    total = torch.zeros(height * width).index_add_(0, flat, p.reshape(-1))
    count = torch.bincount(flat, minlength=height * width)
    covered = count > 0
    out = m.reshape(-1).clone()
    out[covered] = total[covered] / count[covered] > 0.5
    return out.reshape(height, width)


def _refiner_device(refiner: Refiner, device: torch.device | str | None) -> torch.device:
    """Where the patches go: ``device``, else the refiner's parameters' device, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(refiner, torch.nn.Module):
        param = next(refiner.parameters(), None)
        if param is not None:
            return param.device
    return torch.device('cpu')


def refine_mask(
        image: MaskLike,
        mask: MaskLike,
        refiner: Refiner,
        patch_size: int = PATCH_SIZE,
        iou_thresh: float = INFER_IOU_THRESH,
        out_size: int = 128,
        padding: int = 0,
        batch_size: int = 64,
        *,
        include_edge: bool = False,
        device: torch.device | str | None = None,
) -> torch.Tensor:
    """Refine one instance mask with BPR: propose patches, run the refiner, merge (the official inference).

    The refiner is called under ``torch.no_grad()`` as ``refiner(image_patches, mask_patches)`` with at most
    ``batch_size`` patches, the tensors of :func:`extract_patches` on ``device``; it returns (n, 2, h, w) logits,
    ideally at ``out_size`` like the official model (see :func:`patch_probabilities`). Putting the model in eval
    mode is the caller's job.

    Args:
        image: (H, W, 3) uint8 numpy array or (3, H, W) tensor, RGB, 0-255.
        mask: (H, W) coarse mask of one instance.
        refiner: Callable (e.g. the refinement network) from patches to logits.
        patch_size: Patch side (official 64).
        iou_thresh: NMS threshold of the proposals; :data:`INFER_IOU_THRESH` (0.55, Cityscapes) by default.
        out_size: Network input side (128 for HRNet-18s, 256 for HRNet-48).
        padding: Context around each patch (official default 0).
        batch_size: Patches per refiner call.
        include_edge: See :func:`patch_boxes`.
        device: Where the patches are sent; default the refiner's parameters' device, else the CPU.

    Returns:
        bool tensor (H, W); the coarse mask unchanged where no patch covers it (and when there are no patches).
    """
    _check_patch_size(patch_size)
    _check_int('out_size', out_size, 1, ' such as 128')
    _check_int('padding', padding, 0)
    _check_int('batch_size', batch_size, 1)
    img, integer = _as_image(image)
    m = _as_mask(mask)
    _check_same_size(img, m)
    boxes = patch_boxes(m, patch_size, iou_thresh, include_edge=include_edge)
    if len(boxes) == 0:
        return m.clone()
    dev = _refiner_device(refiner, device)
    pad = (padding,) * 4
    img, padded_mask = F.pad(img, pad), F.pad(m, pad)  # padded once, cropped per batch
    probs = []
    with torch.no_grad():
        for start in range(0, len(boxes), batch_size):
            batch = boxes[start:start + batch_size]
            img_p, mask_p = _crop_patches(img, padded_mask, batch, patch_size, padding, out_size, integer)
            logits = refiner(img_p.to(dev), mask_p.to(dev))
            if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or len(logits) != len(batch):
                got = _shape(logits) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise DataError(f'refiner returned {got} for {len(batch)} patches; expected (n, 2, h, w) logits')
            probs.append(patch_probabilities(logits, patch_size, padding))
    return merge_patches(m, boxes, torch.cat(probs))


# ----------------------------------------------------------------------------------------------------------------
# training pairs and metrics


def _pairwise_intersections(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel counts of ``a[i] & b[j]`` for bool stacks (N, P) and (M, P), exactly, as int64 (N, M)."""
    inter = torch.zeros(len(a), len(b), dtype=torch.float64)
    for start in range(0, a.shape[1], _IOU_CHUNK):
        end = start + _IOU_CHUNK
        inter += (a[:, start:end].float() @ b[:, start:end].float().T).double()
    return inter.round().long()


def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (N, M) of bool mask stacks (N, H, W) and (M, H, W); 0 where both masks are empty."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    inter = _pairwise_intersections(a, b).double()
    union = a.sum(1, dtype=torch.float64)[:, None] + b.sum(1, dtype=torch.float64)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def mask_iou(mask_a: MaskLike, mask_b: MaskLike) -> float:
    """IoU of two (H, W) masks.

    Two empty masks give 0.0, as pycocotools' ``maskUtils.iou`` does (the official ``cal_iou`` would give NaN,
    which its ``> thresh`` test then treats like 0).
    """
    a, b = _as_mask(mask_a, 'mask_a'), _as_mask(mask_b, 'mask_b')
    if _shape(a) != _shape(b):
        raise DataError(f'mask_a is {_shape(a)} but mask_b is {_shape(b)}; compare masks of the same image')
    return float(_pairwise_iou(a[None], b[None])[0, 0])


def _as_labels(labels: MaskLike | Sequence[int]) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().reshape(-1)
    return torch.as_tensor(np.asarray(labels)).reshape(-1)


def training_pairs(
        coarse_masks: MaskLike | Sequence[MaskLike],
        coarse_labels: MaskLike | Sequence[int],
        gt_masks: MaskLike | Sequence[MaskLike],
        gt_labels: MaskLike | Sequence[int],
        iou_min: float = 0.5,
) -> list[tuple[int, int]]:
    """Pair each coarse instance of one image with its ground truth for BPR training (official ``tools/filter.py``).

    Each coarse instance is matched to the ground-truth mask of the same class with the highest IoU (the first one
    on ties, like ``list.index(max(...))`` in ``query_gt_mask``); instances whose best IoU is <= ``iou_min``, or that
    have no ground truth of their class, are dropped. Crowd regions should not be passed as ground truth (the
    official code skips ``iscrowd`` annotations).

    Args:
        coarse_masks: (N, H, W) or a sequence of N (H, W) predicted masks.
        coarse_labels: N class ids.
        gt_masks: (M, H, W) or a sequence of M (H, W) ground-truth masks.
        gt_labels: M class ids.
        iou_min: Keep a pair only if its IoU is > this (official 0.5).

    Returns:
        ``[(coarse_index, gt_index), ...]`` in coarse order.
    """
    coarse, gt = _as_mask_stack(coarse_masks, 'coarse_masks'), _as_mask_stack(gt_masks, 'gt_masks')
    c_lab, g_lab = _as_labels(coarse_labels), _as_labels(gt_labels)
    if len(c_lab) != len(coarse) or len(g_lab) != len(gt):
        raise DataError(f'{len(coarse)} coarse masks with {len(c_lab)} labels and {len(gt)} gt masks with '
                        f'{len(g_lab)} labels; give one label per mask')
    if len(coarse) == 0 or len(gt) == 0:
        return []
    if _shape(coarse)[1:] != _shape(gt)[1:]:
        raise DataError(f'coarse masks are {_shape(coarse)[1:]} but gt masks are {_shape(gt)[1:]}; use one image')
    iou = _pairwise_iou(coarse, gt)
    iou = torch.where(c_lab[:, None] == g_lab[None, :], iou, torch.full_like(iou, -1.0))
    best, index = iou.max(dim=1)  # first maximum on ties
    return [(i, int(index[i])) for i in range(len(coarse)) if float(best[i]) > iou_min]


def mask_to_boundary(mask: MaskLike, dilation_ratio: float = 0.02) -> torch.Tensor:
    """The inner boundary band of a mask used by Boundary IoU (Cheng et al., CVPR 2021).

    The band is the mask pixels within distance ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))`` of the
    contour, in the chessboard metric, with everything outside the image counting as background (so a mask
    truncated by the image border has a boundary there). This is what the official boundary-iou-api
    ``mask_to_boundary`` computes: it pads the mask with a 1-pixel zero border and erodes it ``d`` times with a
    3x3 square kernel (cv2), then subtracts. Here the ``d`` erosions are one (2d+1)x(2d+1) min-filter with zero
    padding (a max-pool of the complement padded with ones), which is the same set. ``round`` is Python's
    half-to-even rounding, as numpy's in the official code.

    Args:
        mask: (H, W) bool or 0/1 array or tensor.
        dilation_ratio: Band width as a fraction of the image diagonal (0.02 in the paper).

    Returns:
        bool tensor (H, W).
    """
    if not float(dilation_ratio) >= 0:
        raise ConfigError(f'dilation_ratio={dilation_ratio!r}; expected a value >= 0 such as 0.02')
    m = _as_mask(mask)
    height, width = _shape(m)
    d = max(1, int(round(dilation_ratio * math.sqrt(height ** 2 + width ** 2))))
    background = F.pad((~m).float()[None, None], (d, d, d, d), value=1.0)
    near_background = F.max_pool2d(background, kernel_size=2 * d + 1, stride=1)[0, 0] > 0
    return m & near_background


def boundary_iou(gt: MaskLike, pred: MaskLike, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU ``|G_d & P_d| / |G_d | P_d|`` of two masks, with the bands of :func:`mask_to_boundary`.

    This is the single-pair ``boundary_iou`` of the official boundary-iou-api. Two empty masks (hence empty bands)
    give 0.0 here, like the api's pycocotools-based evaluation and :func:`mask_iou`; the api's ``boundary_iou``
    function itself would divide 0 by 0.

    Args:
        gt: (H, W) ground-truth mask.
        pred: (H, W) predicted mask.
        dilation_ratio: Band width as a fraction of the image diagonal.

    Returns:
        The Boundary IoU in [0, 1].
    """
    g, p = _as_mask(gt, 'gt'), _as_mask(pred, 'pred')
    if _shape(g) != _shape(p):
        raise DataError(f'gt is {_shape(g)} but pred is {_shape(p)}; compare masks of the same image')
    g, p = mask_to_boundary(g, dilation_ratio), mask_to_boundary(p, dilation_ratio)
    union = int((g | p).sum())
    return int((g & p).sum()) / union if union else 0.0
