"""``maskrcnn:BACKBONE``: torchvision's Mask R-CNN over the feature pyramid of any visionmix or timm backbone.

The detector is torchvision's (:class:`torchvision.models.detection.MaskRCNN`: RPN, RoIAlign box and mask heads,
their losses and post-processing); this module only supplies what it takes as ``backbone``: the backbone's
``forward_intermediates`` maps at strides 4, 8, 16 and 32 (timm's ``FeatureGetterNet``) through a
:class:`torchvision.ops.FeaturePyramidNetwork` with a max-pooled extra level (``LastLevelMaxPool``), as torchvision's
``resnet_fpn_backbone`` does for ResNets. Every hierarchical native model (Hire-MLP, Swin-MLP, multi-stage SPACH,
Mobile-Former) and the hierarchical timm CNNs / transformers qualify; a model whose maps all share one stride (ViT,
MLP-Mixer, single-stage SPACH) is refused with one line naming the models that work.

Defaults suit small images on a CPU (``shapes-inst`` at 128 px), not COCO at 800 px: images are resized so that
their longer side is ``img_size`` (``min_size = max_size = img_size``), anchors are 4x each level's stride (16..256
px), the FPN is 64 channels wide with GroupNorm, the box head's two FC layers 256 wide, the mask head two 64-channel
GroupNorm convolutions; the RPN keeps 600 / 300 proposals in training (300 / 100 at test) and the RoI heads sample 64
RoIs an image, up to half of them foreground, with box features pooled one level deeper than torchvision's rule
would on such small images (``box_canonical_scale``). These choices were measured (the report of the instance
segmentation issue): torchvision's COCO heads (256-channel FPN, 1024-wide FC layers, four 256-channel mask
convolutions, 2000 proposals, 512 RoIs) cost ~15x more per step on 128 px images and every one of them is an option
of :func:`mask_rcnn`. The RoIAligns are torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign`, trained on a
CPU through :class:`~visionmix.layers.roi_align.FastMultiScaleRoIAlign` (separable batched products; torchvision's CPU
backward took a quarter of a training step).

Two options go past torchvision's heads, for classes told apart by their outline (``shapes-inst``), where the box
classifier learns the class slowly while the mask head learns figure and ground fast: ``mask_classifier`` adds a
small conv net that names the class from the mask (trained on ground-truth masks, used to rescore detections) and
``mask_refine`` sharpens the masks with the pixels of each RoI. Both are off by default.

Nothing is ever downloaded (``weights=None`` everywhere); ``backbone_checkpoint`` loads local backbone weights in
visionmix's or the official layout. Normalisation lives in the model: torchvision's ``GeneralizedRCNNTransform``
normalises with the backbone card's mean / std, so the model takes float RGB images in [0, 1], each ``(3, H, W)``,
as a list (or a batch tensor).
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import FeaturePyramidNetwork, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import UnknownModelError, VisionmixError
from ..layers.roi_align import FastMultiScaleRoIAlign
from ..registry import (
    Composite, ModelArgumentError, ModelCard, count_parameters, create_model, model_card, register_composite,
    takes_img_size,
)
from ..sizes import check_size, hw

__all__ = ['PyramidBackbone', 'PyramidMaps', 'MaskShapeClassifier', 'ClassAgnosticMaskPredictor',
           'ImageMaskRoIAlign', 'ImageGuidedMaskHead', 'ImageGuidedMaskPredictor', 'mask_rcnn', 'pyramid_levels',
           'fg_cls_counts', 'synthetic_targets', 'DEFAULT_IMG_SIZE', 'EXAMPLE_BACKBONES']

DEFAULT_IMG_SIZE = 128
COCO_NUM_CLASSES = 91  # torchvision's default: 90 COCO ids + background
PYRAMID_STRIDES = (4, 8, 16, 32)
ANCHOR_SCALE = 4  # anchor side = 4 x level stride (torchvision's COCO anchors are 8x, for 800 px images)
EXAMPLE_BACKBONES = ('spach_ms_xxs_patch4_224_conv', 'hire_mlp_tiny', 'swin_mlp_tiny_c24_patch4_window8_256',
                     'mobile_former_26m', 'resnet18')
MASKRCNN_URL = 'https://github.com/pytorch/vision'
PIXEL_CHANNELS = 12  # an RGB crop at the mask resolution, pixel-unshuffled to the pooled grid (3 x 2 x 2)


class PyramidMaps(OrderedDict):
    """The FPN's maps by level name (what torchvision's RPN and RoI heads read), plus ``image``: the normalised, padded
    batch they were computed from, for heads that look at pixels (:class:`ImageGuidedMaskPredictor`)."""

    image: torch.Tensor


class PyramidBackbone(nn.Module):
    """A backbone's multi-stride maps through an FPN: what torchvision's detectors take as ``backbone``.

    Args:
        body: Returns a list of NCHW maps, one per ``strides`` entry (timm's ``FeatureGetterNet`` / ``FeatureListNet``).
        in_channels: Channels of each map.
        strides: Stride of each map (powers of two, increasing).
        out_channels: FPN width (every output level).
        pad_to: (H, W) the body was built for, when it only takes that input (token-mixing MLPs): the batch is
            zero-padded (bottom / right) to it and the maps cropped back to the batch's own extent, so the detector
            sees maps aligned with its (smaller or non-square) images.
        norm_layer: Normalisation after the FPN's convolutions (None: none, as torchvision's v1 detectors).
    """

    def __init__(self, body: nn.Module, in_channels: Sequence[int], strides: Sequence[int], out_channels: int,
                 pad_to: tuple[int, int] | None = None, norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        self.body = body
        self.strides = tuple(strides)
        self.pad_to = pad_to
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=norm_layer)
        self.out_channels = out_channels  # read by torchvision's detectors

    def forward(self, x: torch.Tensor) -> PyramidMaps:
        h, w = x.shape[-2:]
        if self.pad_to is not None:
            ph, pw = self.pad_to
            if h > ph or w > pw:
                raise VisionmixError(f'the backbone was built for {ph}x{pw} input, got a batch of {h}x{w}; build the '
                                     f'model with img_size of at least that')
            x = F.pad(x, (0, pw - w, 0, ph - h))
        maps = self.body(x)
        if self.pad_to is not None:
            maps = [m[..., :math.ceil(h / s), :math.ceil(w / s)] for m, s in zip(maps, self.strides)]
        out = PyramidMaps(self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps))))
        out.image = x
        return out


class MaskShapeClassifier(nn.Module):
    """Names an instance's class from its mask alone: three 3x3 conv-GroupNorm-ReLU-maxpool blocks on the (M, M) mask
    probabilities in box coordinates, global average pooling and a linear layer.

    Where the classes differ by outline (discs, ellipses, rectangles, polygons in ``shapes-inst``), a box classifier
    learns them slowly: one label per RoI, from features that must first discover figure and ground. The mask head
    learns figure and ground quickly (a label per pixel), so the outline it draws is an easier input to classify.

    Args:
        num_classes: Foreground classes (no background).
        width: Channels of the first block (doubled in each next one).
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_chs = 1
        for out_chs in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(in_chs, out_chs, 3, padding=1), _group_norm(out_chs), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            in_chs = out_chs
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_chs, num_classes)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, 1, M, M) mask probabilities -> (N, num_classes) logits."""
        return self.fc(self.features(masks).mean((2, 3)))


class ClassAgnosticMaskPredictor(MaskRCNNPredictor):
    """torchvision's mask predictor with one mask for every class (the Mask R-CNN paper's class-agnostic variant),
    returned as a view with one channel per class so that torchvision's mask loss and inference index it as usual.
    A mask that does not depend on the box classifier's label is what :class:`MaskShapeClassifier` should read."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(in_channels, dim_reduced, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, self.num_classes, -1, -1)


class ImageMaskRoIAlign(FastMultiScaleRoIAlign):
    """The mask head's RoIAlign that also crops each RoI from the image itself at twice its output size (the mask
    resolution), appended to the pooled features as ``PIXEL_CHANNELS`` pixel-unshuffled channels: the pixels reach
    :class:`ImageGuidedMaskPredictor` through the mask head's tensors, with no state between the calls."""

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]],
                ) -> torch.Tensor:
        pooled = super().forward(x, boxes, image_shapes)
        image = getattr(x, 'image', None)
        if image is None:
            raise VisionmixError('an image-guided mask head needs the image: use it with PyramidBackbone')
        size = 2 * self.output_size[0]
        crops = roi_align(image, [b.to(image.dtype) for b in boxes], size, 1.0, self.sampling_ratio)
        return torch.cat([pooled, F.pixel_unshuffle(crops, 2)], 1)


class ImageGuidedMaskHead(nn.Module):
    """torchvision's mask head on the pooled features; the image channels of :class:`ImageMaskRoIAlign` pass by it
    untouched to the predictor."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(x[:, :-PIXEL_CHANNELS]), x[:, -PIXEL_CHANNELS:]], 1)


class ImageGuidedMaskPredictor(nn.Module):
    """A mask predictor that sharpens its masks with the pixels of the RoI.

    On small images a 20 px object covers 5x5 cells of the stride-4 map: the mask it gives is rounded, its corners
    lost, while the image has them. torchvision's predictor (2x transposed convolution, ReLU, 1x1) gives coarse
    logits; a small conv net over the upsampled features, those logits and the RoI's RGB crop adds a residual.

    Args:
        in_channels: Mask head output channels.
        dim_reduced: Channels after the transposed convolution.
        num_classes: Classes including the background.
        class_agnostic: One mask for every class (returned as a view per class, as
            :class:`ClassAgnosticMaskPredictor`), else one per class.
        width: Channels of the refining convolutions.
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int, class_agnostic: bool = True,
                 width: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        masks = 1 if class_agnostic else num_classes
        self.upsample = nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2)
        self.coarse = nn.Conv2d(dim_reduced, masks, 1)
        self.refine = nn.Sequential(
            nn.Conv2d(dim_reduced + masks + PIXEL_CHANNELS // 4, width, 3, padding=1), _group_norm(width),
            nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1), _group_norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, masks, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = F.pixel_shuffle(x[:, -PIXEL_CHANNELS:], 2)
        features = F.relu(self.upsample(x[:, :-PIXEL_CHANNELS]))
        coarse = self.coarse(features)
        logits = coarse + self.refine(torch.cat([features, coarse, pixels], 1))
        return logits.expand(-1, self.num_classes, -1, -1) if logits.shape[1] == 1 else logits


class _RoIHeadsWithStats(RoIHeads):
    """torchvision's RoIHeads that, in training, also counts the sampled foreground RoIs the box classifier labels
    right (detectron2's ``fast_rcnn/fg_cls_accuracy``): a cheap running metric for the training loop.

    With a ``mask_classifier`` (:class:`MaskShapeClassifier`, set by :func:`mask_rcnn`) it also learns to name each
    ground-truth instance from its ground-truth mask (``loss_mask_class``), and at inference scores each detection by
    the geometric mean of its box score and the probability the classifier gives its label on the predicted mask,
    then re-sorts. With ``mask_rois_per_image`` the mask head trains on a random subset of at most that many of each
    image's foreground RoIs (the box head still sees them all). Without either nothing else changes: no parameter,
    no output."""

    fg_stats: tuple[int, int] = (0, 0)
    mask_rois_per_image: int | None = None
    _sampled_labels: torch.Tensor | None = None
    _samples: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None,
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training and self.mask_rois_per_image is not None and self.has_mask():
            # torchvision's forward skips the mask branch while it has no RoI pool; ours then trains it on the subset
            pool, self.mask_roi_pool = self.mask_roi_pool, None
            try:
                result, losses = super().forward(features, proposals, image_shapes, targets)
            finally:
                self.mask_roi_pool = pool
            losses['loss_mask'] = self._subset_mask_loss(features, image_shapes, targets or [])
        else:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        classifier = getattr(self, 'mask_classifier', None)  # a submodule: no class-level default may shadow it
        if classifier is None or not self.has_mask():
            return result, losses
        if self.training:
            losses['loss_mask_class'] = self._mask_class_loss(classifier, targets or [])
        else:
            result = [self._rescore(classifier, det) for det in result]
        return result, losses

    def _subset_mask_loss(self, features: dict[str, torch.Tensor], image_shapes: list[tuple[int, int]],
                          targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """torchvision's mask loss on at most ``mask_rois_per_image`` random foreground RoIs of each image (the mask
        head's cost grows with the RoIs, its targets are much alike on one object)."""
        samples, self._samples = self._samples, None  # set by select_training_samples in this forward
        boxes, matched = [], []
        for proposals, matched_idxs, labels in zip(*samples):
            foreground = torch.where(labels > 0)[0]
            if len(foreground) > self.mask_rois_per_image:
                keep = torch.randperm(len(foreground), device=foreground.device)[:self.mask_rois_per_image]
                foreground = foreground[keep]
            boxes.append(proposals[foreground])
            matched.append(matched_idxs[foreground])
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
        return maskrcnn_loss(logits, boxes, [t['masks'] for t in targets], [t['labels'] for t in targets], matched)

    def _mask_class_loss(self, classifier: nn.Module, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Cross-entropy of the classifier on each ground-truth mask cropped to its ground-truth box (at the mask
        head's output size): clean outlines, not the blurred masks of half-trained heads on jittered proposals,
        which it does not learn from."""
        size = 2 * self.mask_roi_pool.output_size[0]
        crops, labels = [], []
        for t in targets:
            if len(t['boxes']):
                index = torch.arange(len(t['boxes']), dtype=t['boxes'].dtype, device=t['boxes'].device)[:, None]
                # as torchvision builds the mask head's targets, so the classifier trains on what that head learns
                crops.append(roi_align(t['masks'][:, None].float(), torch.cat([index, t['boxes']], 1), size, 1.0))
                labels.append(t['labels'])
        if not crops:  # no instance in the batch: a zero that still reaches every parameter (DDP expects them)
            return sum(p.sum() for p in classifier.parameters()) * 0.0
        return F.cross_entropy(classifier(torch.cat(crops)), torch.cat(labels) - 1)

    def _rescore(self, classifier: nn.Module, det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not len(det['scores']):
            return det
        probs = classifier(det['masks']).softmax(1)
        # the product ranks best (measured); its square root ranks the same and stays on a probability's scale, so
        # score thresholds (predict draws >= 0.5) keep their meaning
        scores = (det['scores'] * probs.gather(1, (det['labels'] - 1)[:, None])[:, 0]).sqrt()
        order = scores.argsort(descending=True)
        return {**{k: v[order] for k, v in det.items()}, 'scores': scores[order]}

    def select_training_samples(self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None,
                                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                                           list[torch.Tensor]]:
        out = super().select_training_samples(proposals, targets)
        self._sampled_labels = torch.cat(out[2])  # the box predictor's next call classifies exactly these RoIs
        if self.mask_rois_per_image is not None:
            self._samples = out[:3]  # proposals, matched_idxs, labels: what the capped mask branch selects from
        return out

    def record_fg_accuracy(self, module: nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Forward hook of ``box_predictor``: (correct, total) over the sampled foreground RoIs."""
        labels, self._sampled_labels = self._sampled_labels, None
        if not self.training or labels is None or len(labels) != len(output[0]):
            return
        fg = labels > 0
        correct = (output[0].detach().argmax(1)[fg] == labels[fg]).sum()
        self.fg_stats = (int(correct), int(fg.sum()))


def fg_cls_counts(model: nn.Module) -> tuple[int, int]:
    """(correct, total) sampled foreground RoIs of the last training forward of a ``maskrcnn:`` model ((0, 0) for
    another model). ``model`` may be wrapped (DDP ``.module``, ``torch.compile`` ``._orig_mod``)."""
    for attr in ('module', '_orig_mod'):
        model = getattr(model, attr, model)
    heads = getattr(model, 'roi_heads', None)
    if not isinstance(heads, _RoIHeadsWithStats):
        return 0, 0
    stats, heads.fg_stats = heads.fg_stats, (0, 0)
    return stats


def synthetic_targets(images: torch.Tensor | Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One centred box and its filled mask per image (label 1): targets that let a training step of a detector be
    timed or profiled without a dataset (torchvision's detectors refuse a training forward without targets)."""
    out = []
    for image in images:
        h, w = image.shape[-2:]
        y0, y1, x0, x1 = h // 4, max(h // 4 + 1, 3 * h // 4), w // 4, max(w // 4 + 1, 3 * w // 4)
        masks = torch.zeros(1, h, w, dtype=torch.uint8, device=image.device)
        masks[:, y0:y1, x0:x1] = 1
        out.append(dict(boxes=torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32, device=image.device),
                        labels=torch.ones(1, dtype=torch.int64, device=image.device),
                        masks=masks))
    return out


# --------------------------------------------------------------------------------------------------- backbones

def pyramid_levels(feature_info: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the maps an FPN takes: for each stride of :data:`PYRAMID_STRIDES` present, its deepest map.

    Returns fewer than two indices when the backbone has no pyramid (every map at one stride, e.g. ViT).
    """
    deepest: dict[int, int] = {}
    for i, info in enumerate(feature_info):
        if info['reduction'] in PYRAMID_STRIDES:
            deepest[info['reduction']] = i
    return [deepest[s] for s in sorted(deepest)]


def _no_pyramid(name: str, why: str) -> UnknownModelError:
    examples = ', '.join(f'maskrcnn:{n}' for n in EXAMPLE_BACKBONES)
    return UnknownModelError(f'maskrcnn:{name}: {why}; Mask R-CNN needs a backbone with a feature pyramid (maps at '
                             f'strides 4-32): Hire-MLP, Swin-MLP, multi-stage SPACH (spach_ms_*), Mobile-Former or a '
                             f'hierarchical timm model, e.g. {examples}')


def _backbone_levels(name: str, kwargs: dict[str, Any] | None = None
                     ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(indices, channels, strides) of the pyramid maps of backbone ``name`` built with ``kwargs`` (its widths may
    differ from the default's); raises :class:`UnknownModelError`."""
    model_card(name)  # an unknown name: its own error, with suggestions
    if ':' in name:
        raise _no_pyramid(name, 'a composite model is not a backbone')
    with torch.device('meta'):  # only feature_info is read: no memory, no init cost
        model = create_model(name, **(kwargs or {}))
    info = getattr(model, 'feature_info', None)
    if not hasattr(model, 'forward_intermediates') or not info:
        raise _no_pyramid(name, 'it has no forward_intermediates / feature_info (not a timm-style backbone)')
    info = list(info)
    levels = pyramid_levels(info)
    if len(levels) < 2:
        strides = sorted({f['reduction'] for f in info})
        raise _no_pyramid(name, f'its feature maps are all at stride {"/".join(map(str, strides))}')
    return tuple(levels), tuple(info[i]['num_chs'] for i in levels), tuple(info[i]['reduction'] for i in levels)


def _build_body(name: str, levels: Sequence[int], img_size: tuple[int, int] | None, checkpoint: str | None,
                drop_path_rate: float, kwargs: dict[str, Any]) -> nn.Module:
    """The backbone (local weights loaded, head pruned) as a module returning its pyramid maps."""
    from timm.models._features import FeatureGetterNet  # not re-exported by timm.models

    kwargs = dict(kwargs)
    if img_size is not None:
        kwargs.setdefault('img_size', img_size[0] if img_size[0] == img_size[1] else img_size)
    if drop_path_rate:
        kwargs.setdefault('drop_path_rate', drop_path_rate)
    model = create_model(name, checkpoint_path=checkpoint, **kwargs)
    # FeatureGetterNet calls forward_intermediates and prunes the classifier head and unused later blocks.
    return FeatureGetterNet(model, out_indices=tuple(levels))


def _size_pair(backbone: str, img_size: Any) -> tuple[int, int]:
    try:
        return hw(check_size(tuple(img_size) if isinstance(img_size, list) else img_size))
    except VisionmixError:
        raise ModelArgumentError(f'maskrcnn:{backbone}: img_size must be N or (H, W), got {img_size!r}') from None


# ------------------------------------------------------------------------------------------------- the detector

def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(math.gcd(16, channels), channels)


def _box_head(channels: int, dim: int, convs: int, norm: Callable[[int], nn.Module] | None) -> nn.Module:
    if convs <= 0:
        return TwoMLPHead(channels * 7 * 7, dim)
    return FastRCNNConvFCHead((channels, 7, 7), [channels] * convs, [dim], norm_layer=norm)


def _norm_layer(backbone: str, head_norm: str) -> Callable[[int], nn.Module] | None:
    norms = {'none': None, 'gn': _group_norm, 'bn': nn.BatchNorm2d}
    if head_norm not in norms:
        raise ModelArgumentError(f'maskrcnn:{backbone}: head_norm must be one of {", ".join(norms)}, got {head_norm!r}')
    return norms[head_norm]


def _check_options(backbone: str, num_classes: int, min_size: int, max_size: int, anchor_sizes: Sequence[int],
                   num_levels: int, switches: dict[str, bool | None], mask_rois_per_image: int | None) -> None:
    name = f'maskrcnn:{backbone}'
    if num_classes < 2:
        raise ModelArgumentError(f'{name}: num_classes counts the background too and must be >= 2, got {num_classes}')
    for key, value in (('min_size', min_size), ('max_size', max_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 32:
            raise ModelArgumentError(f'{name}: {key} must be an integer >= 32, got {value!r}')
    if len(anchor_sizes) != num_levels or not all(isinstance(s, (int, float)) and s > 0 for s in anchor_sizes):
        raise ModelArgumentError(f'{name}: anchor_sizes needs {num_levels} positive sizes (one per FPN level, the '
                                 f'last for the max-pooled level), got {list(anchor_sizes)}')
    for key, value in switches.items():
        if value is not None and not isinstance(value, bool):
            raise ModelArgumentError(f'{name}: {key} must be true or false, got {value!r}')
    if mask_rois_per_image is not None and (not isinstance(mask_rois_per_image, int)
                                            or isinstance(mask_rois_per_image, bool) or mask_rois_per_image < 1):
        raise ModelArgumentError(f'{name}: mask_rois_per_image must be a positive integer or null, '
                                 f'got {mask_rois_per_image!r}')


def _mask_branch(names: list[str], channels: int, head_channels: int, head_layers: int,
                 norm: Callable[[int], nn.Module] | None, num_classes: int, agnostic: bool, refine: bool,
                 ) -> dict[str, nn.Module]:
    """torchvision's mask RoIAlign, head and predictor (``agnostic``: one mask for all classes), or their
    image-guided versions (``refine``), as :class:`MaskRCNN` keyword arguments."""
    head = MaskRCNNHeads(channels, [head_channels] * head_layers, dilation=1, norm_layer=norm)
    if refine:
        return dict(mask_roi_pool=ImageMaskRoIAlign(names, output_size=14, sampling_ratio=2),
                    mask_head=ImageGuidedMaskHead(head),
                    mask_predictor=ImageGuidedMaskPredictor(head_channels, head_channels, num_classes, agnostic))
    predictor = ClassAgnosticMaskPredictor if agnostic else MaskRCNNPredictor
    return dict(mask_roi_pool=FastMultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
                mask_head=head, mask_predictor=predictor(head_channels, head_channels, num_classes))


def mask_rcnn(
        backbone: str,
        num_classes: int = COCO_NUM_CLASSES,
        img_size: int | Sequence[int] = DEFAULT_IMG_SIZE,
        min_size: int | None = None,
        max_size: int | None = None,
        anchor_sizes: Sequence[int] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        fpn_channels: int = 64,
        box_head_dim: int = 256,
        box_head_convs: int = 0,
        mask_head_channels: int = 64,
        mask_head_layers: int = 2,
        head_norm: str = 'gn',
        rpn_pre_nms_top_n_train: int = 600,
        rpn_post_nms_top_n_train: int = 300,
        rpn_pre_nms_top_n_test: int = 300,
        rpn_post_nms_top_n_test: int = 100,
        box_batch_size_per_image: int = 64,
        box_positive_fraction: float = 0.5,
        mask_rois_per_image: int | None = None,
        box_canonical_scale: int = 56,
        box_detections_per_img: int = 100,
        box_score_thresh: float | None = None,
        mask_classifier: bool = False,
        class_agnostic_masks: bool | None = None,
        mask_refine: bool = False,
        backbone_checkpoint: str | None = None,
        drop_path_rate: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
) -> MaskRCNN:
    """torchvision's Mask R-CNN on ``backbone``'s feature pyramid, sized for small images.

    Args:
        backbone: Any registered model with maps at strides 4-32 (see the module docstring).
        num_classes: Classes *including* the background (torchvision's convention): ``len(classes) + 1``.
        img_size: Training image size, N or (H, W): the default of ``min_size`` / ``max_size`` (its longer side), and
            the input size of backbones built for one size (token-mixing MLPs), whose batches are padded to it.
        min_size: Shorter-side target of torchvision's resize (default: the longer side of ``img_size``; for a
            backbone built for one size, its shorter side, so every image fits).
        max_size: Longer-side limit of that resize (same default): with ``min_size == max_size`` every image is
            scaled so that its longer side is ``max_size``.
        anchor_sizes: One anchor size (px) per FPN level and the pooled level (default 4x each stride).
        aspect_ratios: Anchor aspect ratios (h / w) at every level.
        fpn_channels: FPN width, also the RPN and RoI heads' input width (torchvision: 256).
        box_head_dim: Width of the FC layers of the box head (torchvision: 1024).
        box_head_convs: 0: the box head is two FC layers (torchvision's v1); N > 0: N 3x3 convolutions with
            ``head_norm`` then one FC layer (torchvision's v2 head has 4).
        mask_head_channels: Width of the mask head's convolutions (torchvision: 256).
        mask_head_layers: Number of 3x3 convolutions in the mask head (torchvision: 4).
        head_norm: Normalisation in the FPN and the mask head: ``'none'`` (torchvision's v1 Mask R-CNN), ``'gn'``
            (GroupNorm, 16 groups) or ``'bn'`` (BatchNorm, torchvision's v2).
        rpn_pre_nms_top_n_train: Proposals per level before NMS, training (torchvision: 2000).
        rpn_post_nms_top_n_train: Proposals kept after NMS, training (torchvision: 2000).
        rpn_pre_nms_top_n_test: Proposals per level before NMS, inference (torchvision: 1000).
        rpn_post_nms_top_n_test: Proposals kept after NMS, inference (torchvision: 1000).
        box_batch_size_per_image: RoIs sampled per image for the box / mask losses (torchvision: 512).
        box_positive_fraction: Largest share of foreground RoIs in that sample (torchvision: 0.25).
        mask_rois_per_image: The mask head trains on at most this many of an image's foreground RoIs, a random subset
            (torchvision: all of them). The mask branch is the costliest part of a step on small images, and its
            targets on one object are much alike.
        box_canonical_scale: Box side (px) whose RoI features come from the stride-16 level (torchvision: 224, for
            800 px images): 56 takes a 28-56 px object's box features from the stride-8 map, deeper and more
            semantic than the stride-4 map 224 would pick on 128 px images. Masks keep 224 (fine detail).
        box_detections_per_img: Detections kept per image (COCO AP counts up to 100).
        box_score_thresh: Detections whose box score is below this are dropped (default 0.05, torchvision's; 0.01
            with ``mask_classifier``, which may raise a detection's rank above that of higher box scores).
        mask_classifier: Add a :class:`MaskShapeClassifier` that learns the class from ground-truth masks and, at
            inference, scores each detection by the geometric mean of its box score and its label's probability on
            the predicted mask (for classes told apart by their outline).
        class_agnostic_masks: One mask for all classes (:class:`ClassAgnosticMaskPredictor`); default: on with
            ``mask_classifier`` (a class-specific mask is drawn in the shape of its label), else off.
        mask_refine: Sharpen the masks with the pixels of each RoI (:class:`ImageGuidedMaskPredictor`).
        backbone_checkpoint: Local backbone weights (our or the official layout), loaded before the head is pruned.
        drop_path_rate: Stochastic depth of the backbone.
        backbone_kwargs: More arguments for the backbone's builder.

    Returns:
        A :class:`torchvision.models.detection.MaskRCNN` with a ``pretrained_cfg`` (mean, std, input size).
    """
    levels, channels, strides = _backbone_levels(backbone, backbone_kwargs)
    size = _size_pair(backbone, img_size)
    fixed = takes_img_size(backbone)  # built for one input size: batches are padded to it
    side = min(size) if fixed else max(size)
    min_size, max_size = min_size or side, max_size or side
    pyramid_strides = (*strides, 2 * strides[-1])  # LastLevelMaxPool adds a level at twice the last stride
    anchor_sizes = tuple(anchor_sizes or (ANCHOR_SCALE * s for s in pyramid_strides))
    _check_options(backbone, num_classes, min_size, max_size, anchor_sizes, len(pyramid_strides),
                   dict(mask_classifier=mask_classifier, class_agnostic_masks=class_agnostic_masks,
                        mask_refine=mask_refine), mask_rois_per_image)
    agnostic = mask_classifier if class_agnostic_masks is None else class_agnostic_masks
    if fixed and max_size > min(size):
        raise ModelArgumentError(f'maskrcnn:{backbone}: the backbone takes {size[0]}x{size[1]} input only, so '
                                 f'max_size ({max_size}) must be <= {min(size)}')
    body = _build_body(backbone, levels, size if fixed else None, backbone_checkpoint, drop_path_rate,
                       backbone_kwargs or {})
    pad_to = size if fixed else None
    norm = _norm_layer(backbone, head_norm)
    pyramid = PyramidBackbone(body, channels, strides, fpn_channels, pad_to, norm)
    names = [str(i) for i in range(len(strides))]
    card = model_card(backbone)
    model = MaskRCNN(
        pyramid, num_classes=None, min_size=min_size, max_size=max_size, image_mean=list(card.mean),
        image_std=list(card.std),
        # a fixed-size body pads the batch itself: do not round it past img_size
        size_divisible=1 if pad_to else 32,
        rpn_anchor_generator=AnchorGenerator(tuple((int(s),) for s in anchor_sizes),
                                             (tuple(aspect_ratios),) * len(anchor_sizes)),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_roi_pool=FastMultiScaleRoIAlign(names, output_size=7, sampling_ratio=2,
                                            canonical_scale=box_canonical_scale),
        box_head=_box_head(fpn_channels, box_head_dim, box_head_convs, norm),
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
        box_batch_size_per_image=box_batch_size_per_image, box_positive_fraction=box_positive_fraction,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh if box_score_thresh is not None else 0.01 if mask_classifier else 0.05,
        **_mask_branch(names, fpn_channels, mask_head_channels, mask_head_layers, norm, num_classes, agnostic,
                       mask_refine))
    # the subclass adds no tensors of its own: the running metric, the mask-RoI cap, and the mask classifier when one
    # is set below
    model.roi_heads.__class__ = _RoIHeadsWithStats
    model.roi_heads.mask_rois_per_image = mask_rois_per_image
    if mask_classifier:
        model.roi_heads.mask_classifier = MaskShapeClassifier(num_classes - 1)
    model.roi_heads.box_predictor.register_forward_hook(model.roi_heads.record_fg_accuracy)
    model.pretrained_cfg = dict(architecture=f'maskrcnn:{backbone}', input_size=(3, *size),
                                mean=tuple(card.mean), std=tuple(card.std), interpolation='bilinear', crop_pct=1.0,
                                num_classes=num_classes)
    return model


def _resolve(rest: str) -> tuple[ModelCard, Any]:
    if not rest:
        raise _no_pyramid('', 'no backbone given')
    _backbone_levels(rest)
    builder = functools.partial(mask_rcnn, rest)
    inner = model_card(rest)
    card = ModelCard(
        name=f'maskrcnn:{rest}', family='detection', paper='Mask R-CNN', arxiv='1703.06870', code_url=MASKRCNN_URL,
        code_commit=f'torchvision {torchvision.__version__}', params=count_parameters(builder), gmacs=None,
        input_size=(3, DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE), top1_source='not applicable (instance segmentation)',
        mean=inner.mean, std=inner.std, license='bsd-3-clause (torchvision); backbone: ' + (inner.license or '?'),
        verified='builds, trains and evaluates on shapes-inst (tests/test_instance.py)', curated=False,
        notes=f'torchvision MaskRCNN + FPN (64 ch) over {rest} (family {inner.family}); light heads for small images '
              f'on a CPU, see visionmix.models.detection.mask_rcnn; params at 91 classes (COCO)')
    return card, builder


register_composite(Composite('maskrcnn', _resolve, '(Mask R-CNN over a backbone pyramid, e.g. '
                                                   'maskrcnn:spach_ms_xxs_patch4_224_conv)', check_input=False))
