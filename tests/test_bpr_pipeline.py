"""The BPR pipeline around visionmix.bpr: the ``bpr:BACKBONE`` refiner, ``bpr-patches:DIR``, the refinement task and
``visionmix bpr coarse / extract / refine / report``.

The fixtures (tests/fixtures/bpr, made by make_fixtures.py there) are a two-image COCO set with non-sequential image
and category ids, its coarse results and one broken copy per bad input.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from pycocotools import mask as mask_utils
from safetensors.torch import save_file

from visionmix import bpr, create_model, model_card
from visionmix.analysis import bpr_tools
from visionmix.cli import main
from visionmix.data import build_datasets
from visionmix.data.bpr_patches import atomic_directory, read_patch_index
from visionmix.engine.tasks.refinement import PatchTransform, evaluate_refinement
from visionmix.errors import CheckpointError, DataError, VisionmixError
from visionmix.registry import ModelArgumentError, UnknownModelError

FIXTURES = Path(__file__).parent / 'fixtures' / 'bpr'
COCO_SPEC = f'coco:{FIXTURES / "images"}:{FIXTURES / "annotations.json"}'
SHAPES = 'shapes-inst:8'  # 8 train / 2 val images


def _decode(entry: dict) -> np.ndarray:
    segm = entry['segmentation']
    return mask_utils.decode(dict(size=segm['size'], counts=segm['counts'].encode())).astype(bool)


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    out = capsys.readouterr().out.strip()
    assert code == 2 and out.startswith('error:') and '\n' not in out, (argv, out)
    return out


class EchoRefiner(nn.Module):
    """Predicts the mask it is given: foreground logit +20 where the mask channel is +1, -20 where it is -1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 3]
        return torch.stack([-m, m], dim=1) * self.scale


@pytest.fixture
def echo_refiner(monkeypatch):
    """`bpr refine --checkpoint anything` runs the echo refiner (out_size 128, the official geometry 64 / 0)."""
    import visionmix.engine.evaluate as evaluate

    trained = dict(task='refinement', model='bpr:echo', img_size=128, dataset='bpr-patches:/nonexistent',
                   checkpoint='echo')
    monkeypatch.setattr(evaluate, 'load_trained', lambda path: (EchoRefiner().eval(), dict(trained)))


# ------------------------------------------------------------------------------------------------ the refiner

def test_default_refiner_is_the_official_hrnet18s_with_a_4_channel_stem():
    card = model_card('bpr:')
    assert card.name == 'bpr:hrnet_w18_small_v2' and card.task == 'refinement'
    model = create_model('bpr:').eval()
    # mmseg's hrnetv2_w18_small: branches of 18 / 36 / 72 / 144 channels, 270 in the 1x1 head conv
    assert model.head.fuse[0].weight.shape == (270, 270, 1, 1)
    assert model.head.classifier.weight.shape == (2, 270, 1, 1)
    # the mask enters through conv1: a 4-channel 3x3 stride-2 conv == conv1(img) + conv_mask(mask)
    conv1 = model.backbone.conv1
    assert conv1.weight.shape == (64, 4, 3, 3) and conv1.stride == (2, 2) and conv1.bias is None
    x = torch.randn(2, 4, 32, 32)
    split = nn.functional.conv2d(x[:, :3], conv1.weight[:, :3], stride=2, padding=1) + \
        nn.functional.conv2d(x[:, 3:], conv1.weight[:, 3:], stride=2, padding=1)
    torch.testing.assert_close(conv1(x), split)
    with torch.no_grad():
        assert model(torch.randn(2, 4, 64, 64)).shape == (2, 2, 64, 64)
    with pytest.raises(VisionmixError, match=r'expected \(B, 4, H, W\)') as e:
        model(torch.randn(1, 3, 64, 64))
    assert '\n' not in str(e.value)


def test_any_backbone_serves_and_bad_specs_are_one_line():
    model = create_model('bpr:resnet18', img_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 32, 32)).shape == (1, 2, 32, 32)
    assert model.levels == (1, 2, 3, 4)  # strides 4..32; the stride-2 stem map stays out of the head
    for name, error in (('bpr:no_such_net', UnknownModelError), ('bpr:tv:resnet18', UnknownModelError),
                        ('bpr:maskrcnn:resnet18', UnknownModelError)):
        with pytest.raises(error) as e:
            create_model(name)
        assert '\n' not in str(e.value) and name.split(':', 1)[1] in str(e.value)
    with pytest.raises(ModelArgumentError, match='num_classes must be 2'):
        create_model('bpr:resnet18', num_classes=3)


def test_backbone_checkpoint_loads_rgb_weights_and_keeps_a_fresh_mask_channel(tmp_path):
    source = timm.create_model('resnet18')
    save_file(source.state_dict(), str(tmp_path / 'r18.safetensors'))
    torch.manual_seed(1)
    fresh = create_model('bpr:resnet18', img_size=32)
    torch.manual_seed(1)
    model = create_model('bpr:resnet18', img_size=32, backbone_checkpoint=str(tmp_path / 'r18.safetensors'))
    conv = model.backbone.conv1.weight
    torch.testing.assert_close(conv[:, :3], source.conv1.weight)
    torch.testing.assert_close(conv[:, 3:], fresh.backbone.conv1.weight[:, 3:])
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    save_file(timm.create_model('resnet10t').state_dict(), str(tmp_path / 'other.safetensors'))
    with pytest.raises(CheckpointError, match='does not fit the backbone') as e:
        create_model('bpr:resnet18', backbone_checkpoint=str(tmp_path / 'other.safetensors'))
    assert '\n' not in str(e.value)


# ------------------------------------------------------------------------------------------ task and patches

def test_patch_transform_is_the_inference_preprocessing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    coarse, gt = rng.random((16, 16)) > 0.5, rng.random((16, 16)) > 0.5
    x, target = PatchTransform(32)((image, coarse, gt))
    img_p, mask_p = bpr.extract_patches(image, coarse, [[0, 0, 16, 16]], 32)
    torch.testing.assert_close(x, torch.cat([img_p[0], mask_p[0]]))
    assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(gt).repeat_interleave(2, 0)
                                                       .repeat_interleave(2, 1).long())
    flipped, flipped_target = PatchTransform(16, hflip=1.0, photometric=True)((image, coarse, gt))
    # the flip moves image, mask and target together; the jitter touches the image only
    assert torch.equal(flipped[3] > 0, torch.from_numpy(coarse[:, ::-1].copy()))
    assert torch.equal(flipped_target, torch.from_numpy(gt[:, ::-1].copy()).long())


def test_evaluate_refinement_counts_pixels():
    inputs = torch.zeros(1, 4, 2, 2)
    inputs[0, 3] = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])  # coarse: 1 pixel
    targets = torch.tensor([[[1, 1], [0, 0]]])  # truth: 2 pixels, 1 shared with the coarse mask

    class Perfect(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([1 - targets.float(), targets.float()], 1)

    m = evaluate_refinement(Perfect(), [(inputs, targets)])
    assert (m['iou'], m['coarse_iou'], m['pixel_acc'], m['num_patches']) == (100.0, 50.0, 100.0, 1)


def test_patch_index_is_json_checked_field_by_field(tmp_path):
    (tmp_path / 'index.json').write_text('{"format": "visionmix-bpr-patches", "version": 1')
    with pytest.raises(DataError, match='not valid JSON'):
        read_patch_index(tmp_path)
    good = dict(format='visionmix-bpr-patches', version=1, patch_size=64, padding=0,
                splits=dict(train=[dict(image_id=1, instance=0, category_id=1, box=[0, 0, 64, 64], coarse_iou=0.9)],
                            val=[]))
    (tmp_path / 'index.json').write_text(json.dumps(good))
    assert read_patch_index(tmp_path)['splits']['train'][0]['box'] == [0, 0, 64, 64]
    good['splits']['train'][0]['box'] = '__import__("os").system("true")'
    (tmp_path / 'index.json').write_text(json.dumps(good))
    with pytest.raises(DataError, match="field 'box' must be list"):
        read_patch_index(tmp_path)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / 'out') as tmp:
            (tmp / 'half.png').write_bytes(b'x')
            raise RuntimeError('killed')
    assert list(tmp_path.iterdir()) == []
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'old.txt').write_text('old')
    with pytest.raises(DataError, match='already exists'):
        with atomic_directory(tmp_path / 'out'):
            pass
    with atomic_directory(tmp_path / 'out', overwrite=True) as tmp:
        (tmp / 'new.txt').write_text('new')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['new.txt']


# --------------------------------------------------------------------------------------- coarse and report

def test_degraded_ground_truth_and_the_report(tmp_path, capsys):
    source = bpr_tools.dataset_source(SHAPES, 'val')
    assert main(['bpr', 'coarse', '--dataset', SHAPES, '--degrade', '4', '--output', str(tmp_path / 'c4.json')]) == 0
    bpr_tools.coarse_from_gt(source, tmp_path / 'gt.json', factor=1)  # factor 1: the ground truth itself
    capsys.readouterr()
    assert main(['bpr', 'report', '--dataset', SHAPES, str(tmp_path / 'gt.json'), str(tmp_path / 'c4.json'),
                 '--output', str(tmp_path / 'report.json'), '--json']) == 0
    rep = json.loads((tmp_path / 'report.json').read_text())
    gt, c4 = rep['results']['gt'], rep['results']['c4']
    assert gt['mask_ap'] == gt['boundary_ap'] == gt['boundary_iou'] == gt['mask_iou'] == 100.0
    assert gt['pairs'] == c4['pairs'] == sum(len(source.load(i).gt_labels) for i in source.ids)
    assert c4['boundary_iou'] < c4['mask_iou'] < 100 and c4['boundary_ap'] < c4['mask_ap'] < 100
    assert rep['gain']['boundary_iou'] == pytest.approx(c4['boundary_iou'] - 100, abs=1e-3)


def test_degrade_mask():
    mask = np.zeros((64, 64), bool)
    mask[10:50, 12:40] = True
    assert np.array_equal(bpr_tools.degrade_mask(mask, 1), mask)
    coarse = bpr_tools.degrade_mask(mask, 4)
    assert 0.8 < bpr.mask_iou(coarse, mask) < 1  # aligned to 4-px cells, the rectangle survives nearly whole


# ----------------------------------------------------------------------------------------------- refinement

def test_refine_with_an_echo_refiner_changes_nothing(tmp_path, capsys, echo_refiner):
    out = tmp_path / 'refined'
    assert main(['bpr', 'refine', '--dataset', COCO_SPEC, '--coarse', str(FIXTURES / 'coarse.json'),
                 '--checkpoint', 'echo', '--output', str(out)]) == 0
    source = bpr_tools.dataset_source(COCO_SPEC, 'val')
    coarse = [e for e in json.loads((FIXTURES / 'coarse.json').read_text()) if e['image_id'] in source.sizes]
    refined = json.loads((out / bpr_tools.RESULTS_FILE).read_text())
    assert len(refined) == len(coarse) == 2  # the other split's entries are skipped
    for before, after in zip(coarse, refined):
        assert np.array_equal(_decode(before), _decode(after))
        assert {k: v for k, v in before.items() if k != 'segmentation'} == \
            {k: v for k, v in after.items() if k != 'segmentation'}
    rep = json.loads((out / bpr_tools.REPORT_FILE).read_text())
    assert rep['results']['coarse'] == rep['results']['refined'] and rep['gain']['boundary_iou'] == 0
    assert [p.name for p in (out / bpr_tools.OVERLAY_DIR).iterdir()] == [f'{Path(_name(source)).stem}_bpr.png']
    assert 'Boundary IoU' in capsys.readouterr().out


def _name(source: bpr_tools.SceneSource) -> str:
    return source.load(source.ids[0]).name


def test_refine_image_files_numbered_like_predict(tmp_path, echo_refiner):
    entries = json.loads((FIXTURES / 'coarse.json').read_text())
    ids = {11: 1, 42: 2}  # scene_a.png, scene_b.png: sorted folder order
    coarse = [dict(e, image_id=ids[e['image_id']]) for e in entries]
    (tmp_path / 'coarse.json').write_text(json.dumps(coarse))
    assert main(['bpr', 'refine', str(FIXTURES / 'images'), '--coarse', str(tmp_path / 'coarse.json'),
                 '--checkpoint', 'echo', '--output', str(tmp_path / 'out'), '--no-overlays']) == 0
    refined = json.loads((tmp_path / 'out' / bpr_tools.RESULTS_FILE).read_text())
    assert [_decode(e).sum() for e in refined] == [_decode(e).sum() for e in coarse]
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [bpr_tools.RESULTS_FILE]  # no ground truth


@pytest.mark.parametrize('fixture, message', [
    ('coarse_unknown_image.json', 'image_id 99 is not one of the images'),
    ('coarse_wrong_size.json', 'the mask is 40x48 (H x W) but the image is 80x96'),
    ('coarse_empty.json', 'the instance mask is empty'),
    ('coarse_bad_category.json', 'category_id 7 is not 1..2'),
    ('coarse_not_a_list.json', 'not a COCO results file'),
])
def test_bad_coarse_results_are_one_line_and_write_nothing(tmp_path, capsys, fixture, message):
    for step in ('refine', 'extract'):
        argv = ['bpr', step, '--dataset', COCO_SPEC, '--split', 'val' if step == 'refine' else 'train',
                '--coarse', str(FIXTURES / fixture), '--output', str(tmp_path / 'out')]
        out = _one_line_error(capsys, argv + (['--checkpoint', 'no-such-run'] if step == 'refine' else []))
        assert message in out or step == 'extract' and 'is not one of' in message, out
        assert list(tmp_path.iterdir()) == []  # no output, no temp folder


def test_skip_empty_lets_an_empty_instance_through(tmp_path, echo_refiner):
    assert main(['bpr', 'refine', '--dataset', COCO_SPEC, '--coarse', str(FIXTURES / 'coarse_empty.json'),
                 '--checkpoint', 'echo', '--output', str(tmp_path / 'out'), '--skip-empty']) == 0


def test_extract_train_refine_report_end_to_end(tmp_path, capsys):
    """The measured pipeline in miniature, through the command line: degraded coarse masks -> patches -> a refiner
    trained one epoch -> refined results, overlays and report."""
    for split in ('train', 'val'):
        assert main(['bpr', 'coarse', '--dataset', SHAPES, '--split', split, '--degrade', '4',
                     '--output', str(tmp_path / f'{split}.json')]) == 0
    patches = tmp_path / 'patches'
    assert main(['bpr', 'extract', '--dataset', SHAPES, '--coarse', str(tmp_path / 'train.json'), '--output',
                 str(patches), '--patch-size', '32', '--val-fraction', '0.25']) == 0
    index = read_patch_index(patches)
    assert index['patch_size'] == 32 and index['stats']['pairs'] > 0
    train, val, info = build_datasets(f'bpr-patches:{patches}')
    assert info.task == 'refinement' and len(train) == len(index['splits']['train']) and len(val) > 0
    image, coarse, gt = train.sample(0)
    assert image.shape == (32, 32, 3) and coarse.dtype == bool and gt.shape == (32, 32)
    assert {r['image_id'] for r in index['splits']['train']}.isdisjoint(r['image_id'] for r in index['splits']['val'])
    run = tmp_path / 'run'
    assert main(['train', '--model', 'bpr:resnet18', '--dataset', f'bpr-patches:{patches}', '--img-size', '32',
                 '--epochs', '1', '--batch-size', '8', '--set', 'limit_train=16', '--output', str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / 'refined'
    assert main(['bpr', 'refine', '--dataset', SHAPES, '--coarse', str(tmp_path / 'val.json'), '--checkpoint',
                 str(run), '--output', str(out), '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['geometry'] == dict(patch_size=32, padding=0, out_size=32, from_index=True)
    rep = json.loads((out / bpr_tools.REPORT_FILE).read_text())
    assert rep == json.loads(json.dumps(res['report']))
    assert set(rep['results']) == {'coarse', 'refined'} and rep['results']['refined']['pairs'] > 0
    assert len(list((out / bpr_tools.OVERLAY_DIR).iterdir())) == 2
    refined = json.loads((out / bpr_tools.RESULTS_FILE).read_text())
    assert len(refined) == len(json.loads((tmp_path / 'val.json').read_text()))
    _one_line_error(capsys, ['predict', '--checkpoint', str(run), str(FIXTURES / 'images' / 'scene_a.png')])


def test_coarse_from_a_maskrcnn_run_keeps_ids_and_drops_empty_masks(tmp_path, monkeypatch):
    import visionmix.engine.evaluate as evaluate

    class FakeDetector(nn.Module):
        """Two detections per image: the left half (score 0.9) and an empty mask (score 0.2)."""

        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            out = []
            for img in images:
                h, w = img.shape[-2:]
                masks = torch.zeros(2, 1, h, w)
                masks[0, 0, :, :w // 2] = 0.9
                out.append(dict(boxes=torch.tensor([[0.0, 0.0, w / 2, h], [0.0, 0.0, 1.0, 1.0]]),
                                scores=torch.tensor([0.9, 0.2]), labels=torch.tensor([2, 1]), masks=masks))
            return out

    monkeypatch.setattr(evaluate, 'load_trained', lambda path: (FakeDetector(), dict(
        task='instance', model='maskrcnn:fake', checkpoint='fake')))
    source = bpr_tools.dataset_source(COCO_SPEC, 'train')
    res = bpr_tools.coarse_from_checkpoint(source, 'fake', tmp_path / 'c.json')
    assert (res['instances'], res['empty']) == (1, 1)
    [entry] = json.loads((tmp_path / 'c.json').read_text())
    assert entry['image_id'] in source.sizes and entry['category_id'] == 2 and entry['score'] == 0.9
    assert _decode(entry)[:, :48].all() and not _decode(entry)[:, 48:].any()
    assert bpr_tools.read_results(tmp_path / 'c.json', source)[entry['image_id']][0].category_id == 2
