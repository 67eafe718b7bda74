"""Instance segmentation: ``maskrcnn:BACKBONE`` on every hierarchical family, the instance datasets (shapes-inst,
coins, COCO files), COCO mask AP against pycocotools itself, predictions pycocotools can read, and a short real run
that resumes exactly."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from visionmix.data import build_datasets, dataset_task
from visionmix.data.instance_sets import InstanceTransform, clean_instances, collate_instances
from visionmix.data.instances import check_instances, mask_boxes
from visionmix.engine.building import TrainError
from visionmix.errors import DataError, UnknownModelError
from visionmix.registry import ModelArgumentError, create_model, model_card, takes_img_size

NATIVE_BACKBONES = ['hire_mlp_tiny', 'swin_mlp_tiny_c24_patch4_window8_256', 'spach_ms_xxs_patch4_224_conv',
                    'spach_ms_xxs_patch4_224_mlp', 'spach_ms_xxs_patch4_224_attn', 'mobile_former_26m']


def _target(masks: np.ndarray, labels: list[int]) -> dict[str, torch.Tensor]:
    masks = masks.astype(bool)
    return dict(boxes=torch.from_numpy(mask_boxes(masks)), labels=torch.tensor(labels, dtype=torch.int64),
                masks=torch.from_numpy(masks.astype(np.uint8)))


def _two_rects(h: int, w: int) -> np.ndarray:
    masks = np.zeros((2, h, w), bool)
    masks[0, 4:20, 6:30] = True
    masks[1, 24:40, 40:60] = True
    return masks


# ------------------------------------------------------------------------------------------------------ models

@pytest.mark.parametrize('backbone', NATIVE_BACKBONES)
def test_every_hierarchical_family_trains_and_predicts_at_a_non_square_size(backbone):
    """A train step (losses, gradients into the backbone) and an eval forward with 48x96 / 64x96 images."""
    torch.manual_seed(0)
    model = create_model(f'maskrcnn:{backbone}', num_classes=3, img_size=(64, 96))
    assert model_card(f'maskrcnn:{backbone}').family == 'detection'
    assert model_card(f'maskrcnn:{backbone}').task == 'instance'
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    targets = [_target(_two_rects(64, 96), [1, 2]), _target(np.zeros((0, 64, 96)), [])]  # one empty image
    model.train()
    losses = model(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 48, 96)])
    assert len(out) == 1 and set(out[0]) == {'boxes', 'labels', 'scores', 'masks'}
    assert out[0]['masks'].shape[1:] == (1, 48, 96)


def test_timm_cnn_backbone_and_defaults_suit_small_images():
    model = create_model('maskrcnn:resnet18', num_classes=5)
    assert takes_img_size('maskrcnn:resnet18')
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    assert model.backbone.out_channels == 64 and model.backbone.pad_to is None
    sizes = [s[0] for s in model.rpn.anchor_generator.sizes]
    assert sizes == [16, 32, 64, 128, 256]  # 4x the strides 4..64
    assert model.pretrained_cfg['mean'] == model_card('resnet18').mean
    assert list(model.transform.image_mean) == list(model_card('resnet18').mean)


@pytest.mark.parametrize('name', ['maskrcnn:vit_small_patch16_224', 'maskrcnn:spach_xxs_patch16_224_conv',
                                  'maskrcnn:tv:resnet18'])
def test_backbone_without_pyramid_is_one_line_naming_what_works(name):
    with pytest.raises(UnknownModelError) as info:
        create_model(name, num_classes=3)
    msg = str(info.value)
    assert '\n' not in msg and 'feature pyramid' in msg and 'maskrcnn:spach_ms_xxs_patch4_224_conv' in msg
    assert 'Hire-MLP' in msg and 'Mobile-Former' in msg


def test_bad_detector_options_are_argument_errors():
    with pytest.raises(ModelArgumentError, match='anchor_sizes needs 5'):
        create_model('maskrcnn:resnet18', num_classes=3, anchor_sizes=[16, 32])
    with pytest.raises(ModelArgumentError, match='num_classes counts the background'):
        create_model('maskrcnn:resnet18', num_classes=1)
    with pytest.raises(ModelArgumentError, match='max_size'):  # a token-mixing MLP takes its build size only
        create_model('maskrcnn:spach_ms_xxs_patch4_224_mlp', num_classes=3, img_size=64, max_size=128)
    with pytest.raises(ModelArgumentError, match='unexpected argument'):
        create_model('maskrcnn:resnet18', num_classes=3, bogus=1)
    with pytest.raises(ModelArgumentError, match='mask_classifier must be true or false'):
        create_model('maskrcnn:resnet18', num_classes=3, mask_classifier='yes')
    with pytest.raises(ModelArgumentError, match='mask_rois_per_image must be a positive integer'):
        create_model('maskrcnn:resnet18', num_classes=3, mask_rois_per_image=0)


def test_mask_rois_per_image_trains_the_mask_head_on_a_subset():
    """Above the foreground count the capped branch is torchvision's (same losses, same gradients); a cap of 2 gives
    the mask head 2 RoIs an image while the box head still sees every sampled RoI."""
    def step(model, cap):
        model.roi_heads.mask_rois_per_image = cap
        sizes = {}
        hooks = [getattr(model.roi_heads, name).register_forward_hook(
            lambda m, args, out, name=name: sizes.__setitem__(name, out.shape[0] if name == 'mask_head'
                                                              else out[0].shape[0]))
            for name in ('mask_head', 'box_predictor')]
        model.zero_grad()
        torch.manual_seed(1)
        losses = model(images, targets)
        sum(losses.values()).backward()
        for hook in hooks:
            hook.remove()
        return losses, sizes, model.roi_heads.mask_head[0][0].weight.grad.clone()

    torch.manual_seed(0)
    model = create_model('maskrcnn:spach_ms_xxs_patch4_224_conv', num_classes=3, img_size=(64, 96),
                         box_positive_fraction=0.5).train()
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    targets = [_target(_two_rects(64, 96), [1, 2]), _target(_two_rects(64, 96)[:1], [2])]
    plain, plain_sizes, plain_grad = step(model, None)
    capped, capped_sizes, capped_grad = step(model, 10_000)
    assert plain.keys() == capped.keys() and all(torch.equal(plain[k], capped[k]) for k in plain)
    assert plain_sizes == capped_sizes and torch.allclose(plain_grad, capped_grad, rtol=1e-5, atol=1e-7)
    assert plain_sizes['mask_head'] > 4  # the GT boxes alone are 3 foreground RoIs
    few, few_sizes, few_grad = step(model, 2)
    assert few_sizes == dict(mask_head=4, box_predictor=plain_sizes['box_predictor'])
    assert torch.equal(few['loss_classifier'], plain['loss_classifier']) and torch.isfinite(few['loss_mask'])
    assert few_grad.abs().sum() > 0 and not torch.allclose(few_grad, plain_grad)
    model.eval()
    with torch.no_grad():  # inference is untouched
        assert set(model(images[:1])[0]) == {'boxes', 'labels', 'scores', 'masks'}


def test_mask_classifier_learns_from_ground_truth_masks_and_rescores_detections():
    """Training adds loss_mask_class (ground-truth masks on their boxes; a zero that still reaches every classifier
    parameter when the batch has no instance); inference keeps the same detections, each scored by the geometric mean
    of its box score and the classifier's probability of its label on the predicted mask, sorted again."""
    from visionmix.models.detection import ClassAgnosticMaskPredictor, MaskShapeClassifier

    torch.manual_seed(0)
    model = create_model('maskrcnn:spach_ms_xxs_patch4_224_conv', num_classes=3, img_size=(64, 96),
                         mask_classifier=True, box_score_thresh=0.0)
    heads = model.roi_heads
    assert isinstance(heads.mask_classifier, MaskShapeClassifier)
    assert isinstance(heads.mask_predictor, ClassAgnosticMaskPredictor)  # the default with the classifier
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    model.train()
    losses = model(images, [_target(_two_rects(64, 96), [1, 2]), _target(np.zeros((0, 64, 96)), [])])
    assert 'loss_mask_class' in losses and losses['loss_mask_class'].item() > 0
    sum(losses.values()).backward()
    assert heads.mask_classifier.fc.weight.grad.abs().sum() > 0
    empty = model(images[:1], [_target(np.zeros((0, 64, 96)), [])])
    assert empty['loss_mask_class'].item() == 0 and empty['loss_mask_class'].requires_grad

    model.eval()
    with torch.no_grad():
        logits = heads.mask_predictor(torch.rand(2, 64, 14, 14))
        assert logits.shape == (2, 3, 28, 28) and torch.equal(logits[:, 0], logits[:, 2])  # one mask for all
        rescored = model(images[:1])[0]
        heads.mask_classifier = None  # the same model without the rescoring
        plain = model(images[:1])[0]
    assert len(rescored['scores']) == len(plain['scores']) > 0
    assert torch.all(rescored['scores'][:-1] >= rescored['scores'][1:])
    key = lambda det, i: (tuple(det['boxes'][i].tolist()), int(det['labels'][i]))  # noqa: E731
    plain_score = {key(plain, i): float(plain['scores'][i]) for i in range(len(plain['scores']))}
    assert {key(rescored, i) for i in range(len(plain['scores']))} == set(plain_score)
    assert all(0 < float(rescored['scores'][i]) <= plain_score[key(rescored, i)] ** 0.5
               for i in range(len(plain['scores'])))  # sqrt(score x p) <= sqrt(score)

    # the rule itself, on a hand-made detection and a classifier whose probabilities are known
    class Fixed(torch.nn.Module):
        def forward(self, masks):
            return torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]))
    det = dict(boxes=torch.rand(3, 4), labels=torch.tensor([1, 2, 2]), scores=torch.tensor([0.9, 0.8, 0.5]),
               masks=torch.rand(3, 1, 28, 28))
    out = heads._rescore(Fixed(), det)
    assert out['scores'].tolist() == pytest.approx([0.45 ** 0.5, 0.4 ** 0.5, 0.08 ** 0.5])  # 0.9 x 0.5, 0.5 x 0.8, ...
    assert torch.equal(out['labels'], torch.tensor([1, 2, 2])) and torch.equal(out['boxes'], det['boxes'][[0, 2, 1]])


def test_image_guided_masks_see_the_pixels_of_each_roi():
    """mask_refine: the mask RoIAlign appends each RoI's image crop at the mask resolution (pixel-unshuffled), the mask
    head passes it by untouched, the predictor's residual learns from it; a train step and a non-square eval run."""
    from collections import OrderedDict

    from torchvision.ops import roi_align

    from visionmix.errors import VisionmixError
    from visionmix.models.detection import ImageGuidedMaskPredictor, ImageMaskRoIAlign, PyramidMaps

    torch.manual_seed(0)
    pool = ImageMaskRoIAlign(['0'], output_size=14, sampling_ratio=2)
    maps = PyramidMaps(OrderedDict([('0', torch.rand(1, 8, 16, 24))]))
    maps.image = torch.rand(1, 3, 64, 96)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 30.0], [50.0, 10.0, 90.0, 60.0]])]
    out = pool(maps, boxes, [(64, 96)])
    assert out.shape == (2, 8 + 12, 14, 14)
    crops = roi_align(maps.image, boxes, 28, 1.0, 2)
    assert torch.equal(torch.nn.functional.pixel_shuffle(out[:, 8:], 2), crops)
    with pytest.raises(VisionmixError, match='needs the image'):
        pool(OrderedDict(maps), boxes, [(64, 96)])

    model = create_model('maskrcnn:spach_ms_xxs_patch4_224_conv', num_classes=3, img_size=(64, 96), mask_refine=True)
    predictor = model.roi_heads.mask_predictor
    assert isinstance(predictor, ImageGuidedMaskPredictor)
    x = torch.rand(2, 64 + 12, 14, 14)
    assert model.roi_heads.mask_head(x)[:, -12:].equal(x[:, -12:])
    logits = predictor(model.roi_heads.mask_head(x))
    assert logits.shape == (2, 3, 28, 28) and not torch.equal(logits[:, 1], logits[:, 2])  # class-specific default
    model.train()
    losses = model([torch.rand(3, 64, 96)], [_target(_two_rects(64, 96), [1, 2])])
    sum(losses.values()).backward()
    assert predictor.refine[0].weight.grad[:, -3:].abs().sum() > 0  # the pixel channels are learned from
    model.eval()
    with torch.no_grad():
        det = model([torch.rand(3, 48, 96)])[0]
    assert det['masks'].shape[1:] == (1, 48, 96)


def test_backbone_checkpoint_is_loaded(tmp_path):
    from visionmix.checkpoint import save_checkpoint

    source = create_model('resnet18')
    save_checkpoint(source, tmp_path / 'r18.safetensors')
    model = create_model('maskrcnn:resnet18', num_classes=3, backbone_checkpoint=str(tmp_path / 'r18.safetensors'))
    assert torch.equal(model.backbone.body.model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_profile_inference_and_training_step():
    from visionmix.profile import profile_model

    # the training step feeds synthetic targets (torchvision's detectors refuse a training forward without them)
    res = profile_model('maskrcnn:spach_ms_xxs_patch4_224_conv', mode='both', img_size=64, memory=False, iters=1,
                        warmup=0, batch_size=1)
    assert res.gmacs > 0 and res.latency_ms is not None and res.params > 1e6 and res.train_img_s.median > 0


# ---------------------------------------------------------------------------------------------------- datasets

def test_shapes_inst_masks_and_boxes_are_consistent():
    train, val, info = build_datasets('shapes-inst:24', img_size=64)
    assert dataset_task('shapes-inst') == 'instance' and info.task == 'instance'
    assert info.classes == ['disc', 'ellipse', 'rectangle', 'polygon'] and (len(train), len(val)) == (24, 6)
    counts = []
    for ds in (train, val):
        for i in range(len(ds)):
            sample = ds.sample(i)
            check_instances(sample)  # box = mask extent, no empty mask, labels in range
            assert (sample['masks'].sum(0) <= 1).all()  # occlusion: a pixel belongs to one visible instance
            image, target = ds[i]
            assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() <= image.max() <= 1
            assert torch.equal(target['boxes'], torch.from_numpy(mask_boxes(target['masks'].numpy().astype(bool))))
            counts.append(len(target['labels']))
    assert max(counts) > 1


def test_empty_image_and_hflip_move_masks_and_boxes_together():
    masks = _two_rects(48, 64)
    sample = dict(image=np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8), masks=masks,
                  boxes=mask_boxes(masks), labels=np.array([1, 2]))
    image, target = InstanceTransform(hflip=1.0)(sample)
    assert torch.equal(image, torch.from_numpy(sample['image']).permute(2, 0, 1).flip(-1).float() / 255)
    assert torch.equal(target['masks'], torch.from_numpy(masks[..., ::-1].copy()).to(torch.uint8))
    assert torch.equal(target['boxes'], torch.from_numpy(mask_boxes(masks[..., ::-1])))
    empty = dict(sample, masks=np.zeros((0, 48, 64), bool), boxes=np.zeros((0, 4), np.float32),
                 labels=np.zeros(0, np.int64))
    image, target = InstanceTransform(hflip=1.0)(empty)
    assert target['boxes'].shape == (0, 4) and target['masks'].shape == (0, 48, 64)
    images, targets = collate_instances([(image, target), (image, target)])
    assert len(images) == 2 and len(targets) == 2


def test_empty_masks_and_degenerate_boxes_are_dropped_and_counted():
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:5, 2:5] = True
    masks[2, 8:10, 8:12] = True
    boxes = np.array([[2, 2, 5, 5], [0, 0, 0, 0], [8, 8, 8, 10]], np.float32)  # the last one's given box: zero width
    cleaned, dropped = clean_instances(dict(image=np.zeros((16, 16, 3), np.uint8), masks=masks, boxes=boxes,
                                            labels=np.array([1, 1, 2])))
    assert dropped == 2 and cleaned['labels'].tolist() == [1] and cleaned['boxes'].tolist() == [[2, 2, 5, 5]]


def test_coins_is_one_real_photo_with_24_coins():
    train, val, info = build_datasets('coins')
    image, target = val[0]
    assert info.classes == ['coin'] and image.shape == (3, 303, 384) and len(target['labels']) == 24


# -------------------------------------------------------------------------------------------------------- COCO

def _write_coco(tmp_path: Path, annotations: list[dict], sizes: tuple = ((40, 60), (30, 50), (20, 20))) -> Path:
    images = []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(tmp_path / f'img{i}.png')
        images.append(dict(id=10 + i, file_name=f'img{i}.png', height=h, width=w))
    data = dict(images=images, annotations=annotations,
                categories=[dict(id=7, name='cat'), dict(id=3, name='dog')])  # ids out of order and with gaps
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(data))
    return path


def _rle_of(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=list(rle['size']), counts=rle['counts'].decode('ascii'))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat, counts, value, run = mask.T.ravel(), [], 0, 0  # COCO RLE: column-major, runs from 0s
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return dict(size=list(mask.shape), counts=counts)


def test_coco_round_trip_polygons_and_rle(tmp_path):
    rle_mask = np.zeros((30, 50), bool)
    rle_mask[5:12, 20:31] = True
    raw_mask = np.zeros((20, 20), bool)
    raw_mask[2:6, 3:9] = True
    anns = [
        dict(id=1, image_id=10, category_id=3, bbox=[10, 5, 20, 10], iscrowd=0,  # a 20x10 rectangle as a polygon
             segmentation=[[10, 5, 30, 5, 30, 15, 10, 15]]),
        dict(id=2, image_id=11, category_id=7, bbox=[20, 5, 11, 7], iscrowd=0, segmentation=_rle_of(rle_mask)),
        dict(id=3, image_id=12, category_id=3, bbox=[3, 2, 6, 4], iscrowd=0, segmentation=_uncompressed_rle(raw_mask)),
        dict(id=4, image_id=10, category_id=7, bbox=[0, 0, 10, 10], iscrowd=1, segmentation=_rle_of(
            np.ones((40, 60), bool))),  # crowd: dropped
        dict(id=5, image_id=10, category_id=7, bbox=[1, 1, 0, 3], iscrowd=0,
             segmentation=[[1, 1, 1, 2, 1, 4]]),  # degenerate box: dropped
        dict(id=6, image_id=12, category_id=7, bbox=[1, 1, 2, 2], iscrowd=0, segmentation=_rle_of(
            np.zeros((20, 20), bool))),  # empty mask: dropped
    ]
    ann = _write_coco(tmp_path, anns)
    with pytest.warns(UserWarning, match='dropped 2'):
        train, val, info = build_datasets(f'coco:{tmp_path}:{ann}')
    assert info.classes == ['dog', 'cat'] and info.task == 'instance'  # category ids 3, 7 -> labels 1, 2
    assert 'dropped 1 crowd' in info.description and len(train) + len(val) == 3
    samples = {s['image'].shape[:2]: s for ds in (train, val) for s in (ds.sample(i) for i in range(len(ds)))}
    poly = samples[(40, 60)]
    assert poly['labels'].tolist() == [1] and poly['masks'].shape == (1, 40, 60)
    assert abs(int(poly['masks'].sum()) - 20 * 10) <= 40  # pycocotools rasterises the polygon's edges its way
    assert poly['boxes'][0].tolist() == mask_boxes(poly['masks'])[0].tolist()
    assert np.array_equal(samples[(30, 50)]['masks'][0], rle_mask) and samples[(30, 50)]['labels'].tolist() == [2]
    assert np.array_equal(samples[(20, 20)]['masks'][0], raw_mask) and samples[(20, 20)]['labels'].tolist() == [1]
    for s in samples.values():
        check_instances(dict(s, classes=info.classes))


def test_coco_bad_files_are_one_line_naming_file_and_annotation(tmp_path):
    good = dict(id=41, image_id=10, category_id=3, bbox=[10, 5, 20, 10], segmentation=[[10, 5, 30, 5, 30, 15]])
    cases = [
        ([dict(good, bbox=[50, 5, 20, 10])], 'annotation 41.*outside the 60x40 image'),
        ([dict(good, image_id=99)], 'annotation 41.*unknown image_id 99'),
        ([dict(good, category_id=1)], 'annotation 41.*unknown category_id 1'),
        ([dict(good, segmentation=[[1, 2]])], 'annotation 41.*bad segmentation'),
    ]
    for anns, pattern in cases:
        ann = _write_coco(tmp_path, anns)
        with pytest.raises(DataError, match=pattern) as info:
            build_datasets(f'coco:{tmp_path}:{ann}')
        assert '\n' not in str(info.value) and 'ann.json' in str(info.value)
    (tmp_path / 'img1.png').unlink()
    with pytest.raises(DataError, match='img1.png does not exist'):
        build_datasets(f'coco:{tmp_path}:{ann}')
    (tmp_path / 'broken.json').write_text('{"images": [')
    with pytest.raises(DataError, match='broken.json is not valid JSON'):
        build_datasets(f'coco:{tmp_path}:{tmp_path / "broken.json"}')
    with pytest.raises(DataError, match='does not exist'):
        build_datasets(f'coco:{tmp_path}:{tmp_path / "missing.json"}')
    with pytest.raises(DataError, match='IMAGES_DIR:ANNOTATIONS'):
        build_datasets('coco:only_one_part')


# ------------------------------------------------------------------------------------------------------ metrics

def _hand_built_case() -> tuple[list[dict], list[dict]]:
    """Two 32x32 images: matches at several IoUs, a false positive, a miss, two classes."""
    def masks(*rects: tuple[int, int, int, int]) -> np.ndarray:
        out = np.zeros((len(rects), 32, 32), bool)
        for i, (y0, y1, x0, x1) in enumerate(rects):
            out[i, y0:y1, x0:x1] = True
        return out

    gts = [(masks((2, 12, 2, 12), (16, 30, 14, 30)), [1, 2]), (masks((4, 20, 4, 24)), [1])]
    dets = [(masks((2, 12, 3, 12), (18, 30, 14, 28), (0, 5, 25, 31)), [1, 2, 1], [0.9, 0.8, 0.6]),
            (masks((6, 20, 8, 24), (4, 20, 4, 24)), [1, 2], [0.7, 0.95])]
    targets = [_target(m, lab) for m, lab in gts]
    preds = [dict(_target(m, lab), scores=torch.tensor(s)) for m, lab, s in dets]
    return preds, targets


def _cocoeval_stats(preds: list[dict], targets: list[dict], iou_type: str) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from visionmix.engine.tasks.instance import coco_results

    images, anns = [], []
    for i, t in enumerate(targets):
        images.append(dict(id=i + 1, width=32, height=32))
        gt = dict(t, masks=t['masks'].bool(), scores=torch.ones(len(t['labels'])))
        for r, mask in zip(coco_results(gt, i + 1), gt['masks']):
            # the area that picks APs / APm / APl: the box's for box AP, the mask's for mask AP (as torchmetrics)
            area = r['bbox'][2] * r['bbox'][3] if iou_type == 'bbox' else float(mask.sum())
            anns.append(dict(r, id=len(anns) + 1, iscrowd=0, area=area))
    results = [r for i, p in enumerate(preds) for r in coco_results(dict(p, masks=p['masks'].bool()), i + 1)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=images, annotations=anns, categories=[dict(id=1), dict(id=2)])
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_mask_and_box_ap_equal_pycocotools_cocoeval():
    from visionmix.engine.tasks.instance import instance_metrics

    preds, targets = _hand_built_case()
    ours = instance_metrics(preds, targets)
    for kind, iou_type in (('mask', 'segm'), ('box', 'bbox')):
        stats = _cocoeval_stats(preds, targets, iou_type)
        for key, index in (('ap', 0), ('ap50', 1), ('ap75', 2), ('aps', 3)):
            assert ours[f'{kind}_{key}'] == pytest.approx(100 * stats[index], abs=1e-4), (kind, key)
        assert ours[f'{kind}_apl'] is None and stats[5] == -1  # no large object: COCO's -1 is None here
    assert 0 < ours['mask_ap'] < 100


# ------------------------------------------------------------------------------------------------- predictions

def test_predict_writes_overlays_and_coco_results_pycocotools_loads(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from visionmix.engine.tasks.instance import Instance, coco_results

    preds, _ = _hand_built_case()
    det = dict(preds[0], masks=preds[0]['masks'].bool())
    for r, mask in zip(coco_results(det, 1), det['masks']):  # RLE decodes back to the very mask
        assert np.array_equal(mask_utils.decode(dict(r['segmentation'], counts=r['segmentation']['counts']
                                                     .encode())).astype(bool), mask.numpy())
    torch.manual_seed(0)
    model = create_model('maskrcnn:spach_ms_xxs_patch4_224_conv', num_classes=3, img_size=64,
                         box_score_thresh=0.0).eval()
    rng = np.random.default_rng(0)
    images = [(tmp_path / f'in{i}.png', Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 64, 3), dtype=np.uint8)))
              for i in range(2)]
    out = tmp_path / 'pred'
    results = Instance.predict_images(model, dict(classes=['a', 'b']), images, out)
    assert [r['image_id'] for r in results] == [1, 2] and all(Path(r['overlay']).is_file() for r in results)
    everything = Instance.predict_images(model, dict(classes=['a', 'b']), images, tmp_path / 'all', min_score=0.0)
    assert all(i['score'] >= 0.5 for r in results for i in r['instances'])  # the default floor
    listed = sum(len(r['instances']) for r in everything)
    assert listed == len(json.loads((tmp_path / 'all' / 'coco_results.json').read_text())) > 0  # min 0: all
    assert Image.open(results[1]['overlay']).size == (64, 48)
    dets = json.loads((out / 'coco_results.json').read_text())
    assert dets and {d['image_id'] for d in dets} <= {1, 2}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / 'coco_images.json'))
        res = coco.loadRes(str(out / 'coco_results.json'))
    assert len(res.anns) == len(dets) and coco.loadCats([1, 2])[1]['name'] == 'b'
    first = res.anns[1]
    assert res.annToMask(first).shape == (40, 64)


def test_output_check_and_task_wiring():
    from visionmix.engine.config import load_config
    from visionmix.engine.tasks import get_task, resolve_task
    from visionmix.data import DatasetInfo

    task_cls = resolve_task('maskrcnn:resnet18', 'shapes-inst:8')
    assert task_cls is get_task('instance')
    task = task_cls(load_config(overrides=dict(model='maskrcnn:resnet18', dataset='shapes-inst:8')),
                    DatasetInfo('shapes-inst:8', ['a', 'b'], 8, 2, task='instance'))
    assert task.model_kwargs() == dict(num_classes=3)
    from visionmix.engine.building import input_error

    assert input_error(create_model('maskrcnn:resnet18', num_classes=3, img_size=64), 64, task.output_error) is None
    error = input_error(torch.nn.Identity(), 64, task.output_error)  # what the pre-training check says otherwise
    assert 'not one detection dict with masks' in error and '\n' not in error
    with pytest.raises(TrainError, match='classification dataset'):
        resolve_task('maskrcnn:resnet18', 'digits')


# ------------------------------------------------------------------------------------------------- a real run

RUN = dict(model='maskrcnn:spach_ms_xxs_patch4_224_conv', dataset='shapes-inst:8', img_size=64, batch_size=4,
           epochs=2, lr=1e-3, warmup_epochs=1, threads=1, auto_augment=None, reprob=0.0, smoothing=0.0, hflip=0.5,
           model_ema=True, model_ema_decay=0.9, clip_grad=5.0, model_kwargs=dict(mask_classifier=True))


def test_train_resume_eval_predict(tmp_path, capsys):
    """A short run through the one loop: resumes exactly (RoI sampling, flips and EMA included), then eval.json and
    predictions from the run directory."""
    from visionmix.engine.config import load_config
    from visionmix.engine.evaluate import EvalError, predict, run_eval
    from visionmix.engine.train import train

    full = train(load_config(overrides=dict(RUN, output=str(tmp_path / 'full'))), progress=False)
    assert full.finished and full.metric == 'mask_ap' and 'val_mask_ap50' in full.history[0]
    part = train(load_config(overrides=dict(RUN, output=str(tmp_path / 'part'))), progress=False, stop_after=1)
    resumed = train(resume=tmp_path / 'part', progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ('img_s', 'epoch_seconds')} for r in h]  # noqa: E731
    assert not part.finished and strip(resumed.history) == strip(full.history)
    a, b = (load_file(str(tmp_path / run / 'last.safetensors')) for run in ('full', 'part'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    res = run_eval(tmp_path / 'full', output=tmp_path / 'eval')
    saved = json.loads((tmp_path / 'eval' / 'eval.json').read_text())
    assert saved['task'] == 'instance' and saved['num_images'] == 2 and set(saved['mask']) >= {'ap', 'ap50', 'aps'}
    assert res['mask_ap'] == pytest.approx(full.best_score, abs=1e-6) and set(saved['per_class']) == {
        'disc', 'ellipse', 'rectangle', 'polygon'}
    img = tmp_path / 'shape.png'
    Image.fromarray(build_datasets('shapes-inst:8', img_size=64)[1].sample(0)['image']).save(img)
    out = predict(tmp_path / 'full', [img], output=tmp_path / 'pred')
    assert Path(out[0]['overlay']).is_file() and (tmp_path / 'pred' / 'coco_results.json').is_file()
    capsys.readouterr()
    from visionmix.cli import main
    assert main(['predict', '--checkpoint', str(tmp_path / 'full'), str(img), '--output', str(tmp_path / 'p2'),
                 '--min-score', '0']) == 0
    assert 'instance(s)' in capsys.readouterr().out  # the command line prints one line per image for this task too
    with pytest.raises(EvalError, match='min-score must be in'):
        predict(tmp_path / 'full', [img], output=tmp_path / 'p3', min_score=1.5)
    low = predict(tmp_path / 'full', [img], output=tmp_path / 'p4', min_score=0.0)
    assert len(low[0]['instances']) == len(json.loads((tmp_path / 'p4' / 'coco_results.json').read_text()))


def test_backbone_widths_follow_backbone_kwargs_and_the_instance_study_is_cost_matched():
    from visionmix.engine.compare import STUDIES
    from visionmix.profile import count_params

    entries, recipe = STUDIES['instance']
    assert recipe['dataset'].startswith('shapes-inst') and len({e.spatial for e in entries}) >= 3
    params = []
    for entry in entries:  # the FPN reads the widths of the backbone built with these kwargs, not the default's
        model = create_model(entry.model, num_classes=5, **entry.kwargs).eval()
        with torch.no_grad():
            out = model([torch.rand(3, 64, 80)])
        assert out[0]['masks'].shape[-2:] == (64, 80)
        params.append(count_params(model))
    assert max(params) / min(params) < 1.25, params  # a conv, an attention and an MLP mixer of similar cost
