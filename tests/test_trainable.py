"""Every registered model trains through ``visionmix train``: a real one-epoch run per name, at the smallest input side
the model takes (derived with the engine's own search, never from a table), then the checkpoint is read back the way
``eval`` / ``predict`` read it.

Parametrisation comes from the registry, so a model that lands gets this test for free. Building and stepping the
big variants is the slow part: the default run keeps a subset that covers every source (timm, torchvision, visionmix),
every family and every native model family (DEFAULT_RUN, each measured at under ~3 s); ``-m slow`` runs the rest.
"""
from __future__ import annotations

import importlib
import math

import pytest
import timm
import torch
from safetensors.torch import load_file

import visionmix
from visionmix.cli import main
from visionmix.engine import TrainError, load_config
from visionmix.engine.train import train
from visionmix.engine.evaluate import load_trained
from visionmix.data import DatasetInfo
from visionmix.engine.tasks import Classification, model_task
from visionmix.engine.train import build_model, smallest_input_size

engine_train = importlib.import_module('visionmix.engine.trainer')  # where the loop builds its model

ALL = visionmix.list_models()
# The search starts here, not at 1 px: below 16 px the synthetic shapes carry almost nothing, and the many models
# that take any side would train on a few pixels. Models that need more get the smallest side the search finds.
FLOOR = 16
DEFAULT_RUN = {
    'mobilenetv2_100',                   # timm, conv
    'googlenet',                         # torchvision, conv
    'hire_mlp_tiny',                     # Hire-MLP, mlp
    'swin_mlp_tiny_c24_patch4_window8_256',  # Swin-MLP, mlp
    'spach_ms_xxs_patch4_224_attn',      # SPACH, transformer; needs 32 px: the size search runs in the default run
    'spach_xxs_patch16_224_mlp',         # SPACH token-MLP: built for the run's img_size
    'mobile_former_26m',                 # Mobile-Former, hybrid
    'unext_s',                           # UNeXt, segmentation
}


def _cases() -> list:
    return [pytest.param(name, id=name, marks=() if name in DEFAULT_RUN else pytest.mark.slow) for name in ALL]


def test_default_run_covers_every_source_and_family():
    # Guards the subset against drift: a renamed model or a new family / source must be reflected here.
    assert DEFAULT_RUN <= set(ALL)
    cards = [visionmix.model_card(n) for n in DEFAULT_RUN]
    assert {c.source for c in cards} == {visionmix.model_card(n).source for n in ALL}
    assert {c.family for c in cards} == {visionmix.model_card(n).family for n in ALL}
    native_families = {_module_of(n) for n in visionmix.list_models(source='visionmix')}  # one module per family
    assert {_module_of(n) for n in DEFAULT_RUN if visionmix.model_card(n).source == 'visionmix'} == native_families


def _module_of(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__


def _smallest_side(name: str, num_classes: int) -> int:
    """The smallest side >= FLOOR the model is built for and runs on: the engine's search, which ``train`` uses to
    say which ``--img-size`` works."""
    side = smallest_input_size(lambda s: build_model(name, num_classes, s), FLOOR,
                               max(visionmix.model_card(name).input_size[1:]))
    assert side is not None, f'{name} runs at no side up to its card input size'
    return side


@pytest.mark.parametrize('name', _cases())
def test_every_registered_model_trains(name, tmp_path, monkeypatch):
    segmentation = model_task(name) == 'segmentation'
    dataset, num_classes = ('synthetic-seg:8', 1) if segmentation else ('synthetic:8', 6)
    side = _smallest_side(name, num_classes)

    initial: dict[str, torch.Tensor] = {}
    params: list[str] = []
    real_build = engine_train.build_model

    def recording_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        if not initial:  # the model train() trains (size searches only run when the check fails)
            initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            params.extend(k for k, _ in model.named_parameters())
        return model

    monkeypatch.setattr(engine_train, 'build_model', recording_build)
    cfg = load_config(overrides=dict(
        model=name, dataset=dataset, img_size=side, limit_train=4, batch_size=2, epochs=1, lr=1e-3, warmup_epochs=0,
        auto_augment=None, reprob=0.0, smoothing=0.0, scale=[0.8, 1.0], threads=1, save_best=False,
        output=str(tmp_path / 'run')))
    result = train(cfg, progress=False)

    assert result.finished and result.epochs_done == 1
    row = result.history[0]
    assert math.isfinite(row['train_loss']) and math.isfinite(row['val_loss']), row
    last = tmp_path / 'run' / 'last.safetensors'
    assert last.is_file()
    trained = load_file(str(last))
    assert trained.keys() == initial.keys()
    changed = [k for k in params if not torch.equal(trained[k], initial[k])]
    # not all: at these tiny sides a few get an exactly-zero gradient (e.g. MobileNet-v2 BatchNorm biases on 1x1 maps)
    assert len(changed) >= 0.9 * len(params), f'only {len(changed)}/{len(params)} parameter tensors changed'

    model, info = load_trained(last)  # rebuilt from the metadata alone, loaded strictly
    assert info['img_size'] == side and info['task'] == model_task(name)
    state = model.state_dict()
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, side, side))
    assert out.shape == ((1, 1, side, side) if segmentation else (1, num_classes)) and torch.isfinite(out).all()


COMMON = dict(dataset='synthetic:8', epochs=1, batch_size=2, threads=1)


@pytest.mark.slow  # ~5 s: the search builds Inception v3 about ten times
def test_inception_v3_at_32_px_names_75(tmp_path):
    """The issue's example: the size check runs before training and names the side the search finds."""
    with pytest.raises(TrainError, match=r'^inception_v3 cannot take 32x32 input \(needs >= 75x75\): use '
                                         r'--img-size 75$'):
        train(load_config(overrides=dict(COMMON, model='inception_v3', img_size=32, output=str(tmp_path / 'run'))),
              progress=False)
    assert not (tmp_path / 'run').exists()  # nothing written, nothing trained


def test_too_small_input_is_one_line_train_error(tmp_path, capsys):
    common = dict(COMMON, output=str(tmp_path / 'run'))
    # the model is not tied to a size: another image size is not the fix, and the message says what went wrong
    with pytest.raises(TrainError, match=r'cannot train on 32x32 input: mobilenetv2_100: expected input of shape '
                                         r'\(B, 1, H, W\)'):
        train(load_config(overrides=dict(common, model='mobilenetv2_100', img_size=32, model_kwargs={'in_chans': 1})),
              progress=False)
    # SPACH-MS has four stages (reduction 32); the token-MLP variant cannot even be built for 16 px (zero tokens)
    for name in ('spach_ms_xxs_patch4_224_conv', 'spach_ms_xxs_patch4_224_mlp'):
        code = main(['train', '--model', name, '--img-size', '16', '--dataset', 'synthetic:8', '--epochs', '1',
                     '--output', str(tmp_path / 'cli')])
        out = capsys.readouterr().out.strip()
        assert code == 2 and out == f'error: {name} cannot take 16x16 input (needs >= 32x32): use --img-size 32', out
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'cli').exists()
    # a model whose training-mode output is not one logits tensor stops at its first step, in one line
    with pytest.raises(TrainError, match=r'in training mode the model returns GoogLeNetOutputs, not one logits'):
        train(load_config(overrides=dict(common, model='googlenet', img_size=32, model_kwargs={'aux_logits': True})),
              progress=False)


def test_wrong_output_shape_is_not_blamed_on_the_size():
    class Fixed(torch.nn.Module):  # runs on any side but never gives (1, 6)
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 1000)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    with pytest.raises(TrainError, match=r'^resnet50 cannot train on 32x32 input: it returns \(1, 1000\) for one '
                                         r'image, expected \(1, 6\)$'):
        task = Classification(load_config(), DatasetInfo('synthetic', [str(i) for i in range(6)], 8, 8))
        engine_train.build_for_input('resnet50', 32, lambda side: Fixed(), task.output_error)


def test_size_search_finds_the_boundary():
    # a model that works from 75 up: trying 10, doubling 20 -> 40 -> 80, then bisecting 40..80
    class Needs75(torch.nn.Module):
        def forward(self, x):
            if x.shape[-1] < 75:
                raise RuntimeError('Kernel size can\'t be greater than actual input size')
            return x.mean((2, 3))

    builds = []
    assert smallest_input_size(lambda s: builds.append(s) or Needs75(), 10, 299) == 75
    assert builds[:4] == [10, 20, 40, 80] and len(builds) <= 4 + 6
    assert smallest_input_size(lambda s: Needs75(), 10, 60) is None  # nothing up to the limit works
    assert smallest_input_size(lambda s: Needs75(), 75, 80) == 75

    def unbuildable(side: int) -> torch.nn.Module:  # e.g. a token MLP built for zero tokens below 32
        if side < 32:
            raise ZeroDivisionError('float division by zero')
        return Needs75()

    assert smallest_input_size(unbuildable, 16, 299) == 75
