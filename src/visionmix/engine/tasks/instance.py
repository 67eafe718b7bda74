"""Instance segmentation: torchvision's Mask R-CNN losses, COCO box / mask AP, overlays and COCO results JSON.

The model (``maskrcnn:BACKBONE``, :mod:`visionmix.models.detection`) takes a list of float images in [0, 1] and
normalises them itself with its backbone's mean / std (torchvision's ``GeneralizedRCNNTransform``), which is also what
the run's ``mean`` / ``std`` record (the trainer reads them from the model's ``pretrained_cfg``); the datasets'
transforms only make tensors and flip. Items are ``(image, target)`` (:mod:`visionmix.data.instance_sets`).

* Loss: the sum of torchvision's five Mask R-CNN losses (RPN objectness and box, classifier, box, mask).
* Running training metric (``train_mask_ap`` in metrics.csv, despite its name): the share of sampled foreground RoIs
  the box classifier labels with their class (detectron2's ``fg_cls_accuracy``), free to count.
* Validation: box and mask AP (COCO AP@[.5:.95], AP50, AP75; with ``full`` APs / APm / APl, AR@100 and per class) by
  torchmetrics' ``MeanAveragePrecision`` on the pycocotools backend, in %, ``None`` where COCO gives -1 (no object of
  that size); the loss is the same five losses on the val set (backbone in eval mode, RoI sampling on a forked RNG).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from ...data.instance_sets import InstanceTransform, collate_instances
from ...errors import ConfigError
from ...models.detection import fg_cls_counts
from ..config import TrainConfig
from .base import StepOutput, Task, write_json

__all__ = ['Instance', 'instance_metrics', 'evaluate_instances', 'losses_and_detections', 'draw_instances',
           'coco_results', 'MASK_THRESHOLD', 'OVERLAY_SCORE', 'METRIC_BACKEND']

MASK_THRESHOLD = 0.5  # Mask R-CNN's mask probabilities -> binary masks (the paper's and torchvision's choice)
OVERLAY_SCORE = 0.5  # detections drawn and listed by predict (the COCO results JSON keeps every detection)
METRIC_BACKEND = 'torchmetrics MeanAveragePrecision, pycocotools COCOeval backend'
_SUMMARY = (('ap', 'map'), ('ap50', 'map_50'), ('ap75', 'map_75'), ('aps', 'map_small'), ('apm', 'map_medium'),
            ('apl', 'map_large'), ('ar100', 'mar_100'))
Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


# --------------------------------------------------------------------------------------------------- metrics

def _percent(value: torch.Tensor) -> float | None:
    value = float(value)
    return None if value < 0 else 100 * value  # COCOeval's -1: no ground truth in that area range


def instance_metrics(preds: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                     classes: list[str] | None = None) -> dict[str, Any]:
    """COCO box and mask AP of detections against ground truth, in %.

    Args:
        preds: Per image ``boxes`` (xyxy), ``scores``, ``labels`` and bool ``masks`` (N, H, W).
        targets: Per image ``boxes``, ``labels`` and ``masks`` (K, H, W).
        classes: Class names; given, per-class AP is added (``per_class``).

    Returns:
        ``box_ap``, ``box_ap50``, ..., ``mask_ap``, ``mask_ap50``, ... (keys of ``_SUMMARY`` after ``box_`` /
        ``mask_``), and ``per_class`` when ``classes`` is given.
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type=('bbox', 'segm'), backend='pycocotools',
                                  class_metrics=classes is not None)
    metric.update([dict(p, masks=p['masks'].bool()) for p in preds],
                  [dict(boxes=t['boxes'], labels=t['labels'], masks=t['masks'].bool()) for t in targets])
    raw = metric.compute()
    out: dict[str, Any] = {f'{kind}_{key}': _percent(raw[f'{prefix}_{name}'])
                           for kind, prefix in (('box', 'bbox'), ('mask', 'segm')) for key, name in _SUMMARY}
    if classes is not None:
        present = [int(c) for c in raw['classes'].reshape(-1).tolist()]
        per_class = {name: dict(box_ap=None, mask_ap=None) for name in classes}
        for kind, prefix in (('box_ap', 'bbox'), ('mask_ap', 'segm')):
            values = raw[f'{prefix}_map_per_class'].reshape(-1).tolist()
            for label, value in zip(present, values):
                if 1 <= label <= len(classes):
                    per_class[classes[label - 1]][kind] = None if value < 0 else 100 * value
        out['per_class'] = per_class
    return out


@torch.no_grad()
def losses_and_detections(model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                          ) -> tuple[float, list[dict[str, torch.Tensor]]]:
    """The training losses (summed) and the detections of an eval-mode torchvision detector, from one backbone pass.

    The backbone stays in eval mode (batch norm statistics untouched); only the RPN and RoI heads run their training
    branch, which is where torchvision computes losses.
    """
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    batch, resized = model.transform(images, targets)
    features = model.backbone(batch.tensors)
    heads = (model.rpn, model.roi_heads)
    try:
        for head in heads:
            head.train()
        with torch.random.fork_rng(devices=[]):  # RoI sampling draws from the RNG: leave the run's stream alone
            proposals, rpn_losses = model.rpn(batch, features, resized)
            _, head_losses = model.roi_heads(features, proposals, batch.image_sizes, resized)
    finally:
        for head in heads:
            head.eval()
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    detections = model.transform.postprocess(detections, batch.image_sizes, sizes)
    return float(sum({**rpn_losses, **head_losses}.values())), detections


def _binary(det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detections on the CPU with (N, H, W) bool masks."""
    det = {k: v.detach().cpu() for k, v in det.items()}
    det['masks'] = det['masks'][:, 0] > MASK_THRESHOLD
    return det


@torch.no_grad()
def evaluate_instances(model: nn.Module, loader: Iterable[Batch], device: torch.device | str = 'cpu',
                       classes: list[str] | None = None, with_loss: bool = True) -> dict[str, Any]:
    """Mean val loss (``nan`` without ``with_loss``) and :func:`instance_metrics` of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    preds, gts, loss_sum, count = [], [], 0.0, 0
    try:
        for images, targets in loader:
            images = [img.to(device) for img in images]
            if with_loss:
                dev_targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                loss, dets = losses_and_detections(model, images, dev_targets)
                loss_sum += loss * len(images)
            else:
                dets = model(images)
            preds += [_binary(d) for d in dets]
            gts += [{k: v.cpu() for k, v in t.items()} for t in targets]
            count += len(images)
    finally:
        model.train(was_training)
    metrics = instance_metrics(preds, gts, classes)  # torchmetrics gathers every rank's images itself
    sums = torch.tensor([loss_sum, count, sum(len(t['labels']) for t in gts)], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    loss_sum, count, instances = sums.tolist()
    metrics.update(loss=loss_sum / count if with_loss and count else float('nan'), num_images=int(count),
                   num_instances=int(instances))
    return metrics


# ------------------------------------------------------------------------------------------------------ the task

class Instance(Task):
    """Instance segmentation with a torchvision detector (``maskrcnn:BACKBONE``); main metric: mask AP (%)."""

    name, metric, metric_label = 'instance', 'mask_ap', 'mask AP'
    val_metrics = ('mask_ap', 'mask_ap50', 'mask_ap75', 'box_ap', 'box_ap50')
    dataset_hint = 'an instance segmentation dataset (shapes-inst, coins, coco:IMAGES_DIR:ANNOTATIONS.json)'
    collate_fn = staticmethod(collate_instances)
    tensor_inputs = False  # lists of images and targets: torch's update_bn cannot drive a detector (no precise_bn)

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> list[str]:
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise ConfigError('mixup / cutmix mix class labels and are classification-only; set mixup=0 and '
                              'cutmix=0 for an instance segmentation model')
        ignored = [f'{k}={getattr(cfg, k)}' for k in ('auto_augment', 'reprob', 'smoothing', 'precise_bn')
                   if getattr(cfg, k)]
        if ignored:  # on in the default recipe, so a note rather than an error
            return [f'instance segmentation ignores the classification-only option(s) {", ".join(ignored)} (its '
                    f'augmentation is a horizontal flip of image, masks and boxes together)']
        return []

    def model_kwargs(self) -> dict[str, Any]:
        return dict(num_classes=self.num_classes + 1)  # torchvision's detectors count the background as class 0

    def probe(self, model: nn.Module, img_size: int) -> Any:
        device = next(model.parameters(), torch.empty(0)).device
        return model([torch.zeros(3, img_size, img_size, device=device)])

    def output_error(self, model: nn.Module, img_size: int) -> str | None:
        out = self.probe(model, img_size)
        if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict) and 'masks' in out[0]):
            return (f'in eval mode it returns {type(out).__name__}, not one detection dict with masks per image (an '
                    f'instance segmentation model is a maskrcnn:BACKBONE)')
        return None

    def transforms(self, dcfg: dict[str, Any]) -> tuple[Callable, Callable]:
        return InstanceTransform(self.cfg.hflip), InstanceTransform()

    def to_device(self, batch: Batch, device: torch.device, channels_last: bool) -> Batch:
        images, targets = batch
        return [img.to(device) for img in images], [{k: v.to(device) for k, v in t.items()} for t in targets]

    def batch_size_of(self, inputs: list[torch.Tensor]) -> int:
        return len(inputs)

    def train_step(self, model: nn.Module, inputs: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                   ) -> StepOutput:
        losses = model(inputs, targets)
        correct, total = fg_cls_counts(model)
        return StepOutput(sum(losses.values()), correct, total)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device | str = 'cpu',
                 channels_last: bool = False, full: bool = False) -> dict[str, Any]:
        return evaluate_instances(model, loader, device, self.info.classes if full else None)

    # -------------------------------------------------------------------------------------- trained checkpoints
    @classmethod
    def eval_report(cls, model: nn.Module, trained: dict[str, Any], val_ds: Any, batch_size: int,
                    out_dir: Path) -> dict[str, Any]:
        """Box and mask AP (AP, AP50, AP75, APs / APm / APl, AR@100, per class) in ``eval.json``, and overlays of the
        first val images in ``eval_examples.png``."""
        classes = trained['classes']
        val_ds.transform = InstanceTransform()
        loader = DataLoader(val_ds, batch_size=min(batch_size, 32), collate_fn=collate_instances)
        m = evaluate_instances(model, loader, classes=classes)
        summary = {kind: {key: m[f'{kind}_{key}'] for key, _ in _SUMMARY} for kind in ('box', 'mask')}
        result = dict(checkpoint=trained['checkpoint'], model=trained['model'], model_kwargs=trained['model_kwargs'],
                      dataset=trained['eval_dataset'], split='val', task=cls.name, img_size=trained['img_size'],
                      num_images=m['num_images'], num_instances=m['num_instances'], loss=m['loss'],
                      mask_ap=m['mask_ap'], mask_ap50=m['mask_ap50'], box_ap=m['box_ap'], box_ap50=m['box_ap50'],
                      box=summary['box'], mask=summary['mask'], per_class=m['per_class'], classes=classes,
                      metric_backend=METRIC_BACKEND, units='% (COCO AP x 100; null: no object of that size)')
        write_json(out_dir / 'eval.json', result)
        examples = _example_grid(model, val_ds, classes, out_dir / 'eval_examples.png')
        return dict(result, files=[str(out_dir / 'eval.json'), *([str(examples)] if examples else [])])

    @classmethod
    @torch.no_grad()
    def predict_images(cls, model: nn.Module, trained: dict[str, Any], images: list[tuple[Path, Image.Image]],
                       output: Path, topk: int = 5, min_score: float | None = None,
                       ) -> list[dict[str, Any]]:
        """Per image ``<stem>_instances.png`` (masks, boxes, labels, scores >= ``min_score``, default
        :data:`OVERLAY_SCORE`) and, for all of them,
        ``coco_results.json`` (every detection, RLE masks, ``image_id`` = position + 1, ``category_id`` = label) with
        ``coco_images.json`` (the images and categories those ids refer to), so
        ``COCO('coco_images.json').loadRes('coco_results.json')`` reads them. ``topk`` is not used."""
        classes, results, used, dets = trained['classes'], [], set(), []
        min_score = OVERLAY_SCORE if min_score is None else min_score
        output.mkdir(parents=True, exist_ok=True)
        model.eval()
        for path, rgb in images:
            image = torch.from_numpy(np.array(rgb.convert('RGB'))).permute(2, 0, 1)  # a writable copy
            det = _binary(model([image.float() / 255])[0])
            dets.append(det)
            name = f'{path.stem}_instances.png'
            if name in used:  # two inputs with one stem (other folders): keep both
                name = f'{path.stem}_{len(used)}_instances.png'
            used.add(name)
            Image.fromarray(draw_instances(image, det, classes, min_score)).save(output / name)
            keep = det['scores'] >= min_score
            results.append(dict(image=str(path), overlay=str(output / name), size=[rgb.width, rgb.height],
                                image_id=len(results) + 1, instances=[
                                    dict(label=classes[int(lab) - 1], index=int(lab), score=float(s),
                                         box=[round(float(v), 2) for v in box])
                                    for lab, s, box in zip(det['labels'][keep], det['scores'][keep],
                                                           det['boxes'][keep])]))
        _write_coco(output, images, dets, classes)
        return results


# ----------------------------------------------------------------------------------------- predictions on disk

def coco_results(det: dict[str, torch.Tensor], image_id: int) -> list[dict[str, Any]]:
    """One image's detections in the COCO results format: xywh ``bbox``, compressed-RLE ``segmentation`` (str)."""
    from pycocotools import mask as mask_utils

    masks = det['masks'].numpy().astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    out = []
    for rle, box, label, score in zip(rles, det['boxes'].tolist(), det['labels'].tolist(), det['scores'].tolist()):
        x1, y1, x2, y2 = box
        out.append(dict(image_id=image_id, category_id=int(label), score=round(float(score), 5),
                        bbox=[round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        segmentation=dict(size=list(rle['size']), counts=rle['counts'].decode('ascii'))))
    return out


def _write_coco(output: Path, images: list[tuple[Path, Image.Image]], dets: list[dict[str, torch.Tensor]],
                classes: list[str]) -> None:
    header = dict(images=[dict(id=i + 1, file_name=str(path), width=rgb.width, height=rgb.height)
                          for i, (path, rgb) in enumerate(images)],
                  categories=[dict(id=i + 1, name=c) for i, c in enumerate(classes)], annotations=[])
    write_json(output / 'coco_images.json', header)
    results = [r for i, det in enumerate(dets) for r in coco_results(det, i + 1)]
    text = json.dumps(results)  # a list, as COCO.loadRes wants it; no indent: RLE strings are long
    (output / 'coco_results.json').write_text(text)


def draw_instances(image: torch.Tensor, det: dict[str, torch.Tensor], classes: list[str],
                   min_score: float = OVERLAY_SCORE) -> np.ndarray:
    """uint8 (H, W, 3) overlay of the detections scoring ``min_score`` or more: filled masks, boxes, class and score.

    Args:
        image: uint8 (3, H, W).
        det: CPU detections with bool (N, H, W) masks.
        classes: Class names (``classes[label - 1]``).
        min_score: Detections below it are not drawn.
    """
    import matplotlib
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = det['scores'] >= min_score
    labels = det['labels'][keep].tolist()
    palette = [tuple(int(255 * v) for v in matplotlib.colormaps['tab10'](i % 10)[:3]) for i in range(len(classes))]
    colors = [palette[(lab - 1) % len(palette)] for lab in labels]
    out = image
    if labels:
        out = draw_segmentation_masks(out, det['masks'][keep], alpha=0.45, colors=colors)
        names = [f'{classes[lab - 1]} {s:.2f}' for lab, s in zip(labels, det['scores'][keep].tolist())]
        out = draw_bounding_boxes(out, det['boxes'][keep], labels=names, colors=colors, width=1)
    return out.permute(1, 2, 0).numpy()


def _example_grid(model: nn.Module, val_ds: Any, classes: list[str], path: Path, count: int = 4) -> Path | None:
    """Overlays of the first ``count`` val images next to each other (``eval_examples.png``)."""
    if not len(val_ds):
        return None
    tiles = []
    with torch.no_grad():
        for i in range(min(count, len(val_ds))):
            image, _ = val_ds[i]
            det = _binary(model([image])[0])
            tiles.append(draw_instances((image * 255).round().to(torch.uint8), det, classes))
    height = max(t.shape[0] for t in tiles)
    grid = np.concatenate([np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0)), constant_values=255)
                           for t in tiles], axis=1)
    Image.fromarray(grid).save(path)
    return path
