"""train / eval / predict: short real runs on a digits subset with tiny models."""
import csv
import importlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from visionmix.cli import build_parser, main
from visionmix.engine import ConfigError, TrainError, load_config
from visionmix.engine.train import train
from visionmix.engine.evaluate import EvalError, predict, run_eval
from visionmix.engine.train import CHECKPOINT_DIR, STATE_FILE
from visionmix.engine.trainer import tensorboard_tag

engine_train = importlib.import_module('visionmix.engine.trainer')  # where the loop builds its model

TINY = dict(model='spach_ms', model_kwargs={'net_arch': [['pass', 1], ['pass', 1]], 'embed_dim': 16},
            dataset='digits', img_size=16, limit_train=512, batch_size=32, lr=5e-3, warmup_epochs=0,
            auto_augment=None, reprob=0.0, hflip=0.0, scale=[0.7, 1.0], threads=1)


def tiny(tmp_path: Path, name: str = 'run', **changes) -> object:
    return load_config(overrides=dict(TINY, output=str(tmp_path / name), **changes))


def test_learns_digits_above_chance_and_writes_run_dir(tmp_path):
    result = train(tiny(tmp_path, epochs=3), progress=False)
    assert result.finished and result.epochs_done == 3
    assert result.top1 > 40  # chance is 10%
    run = tmp_path / 'run'
    for name in ('config.yaml', 'metrics.csv', 'curves.png', 'last.safetensors', 'best.safetensors',
                 'summary.json', f'{CHECKPOINT_DIR}/{STATE_FILE}'):
        assert (run / name).is_file(), name
    lines = (run / 'metrics.csv').read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith('epoch,lr,train_loss')
    import yaml
    record = yaml.safe_load((run / 'config.yaml').read_text())
    assert record['config']['model'] == 'spach_ms' and 'torch' in record['environment']
    assert 'git_revision' in record['environment']

    # eval: top-1 / top-5, per-class, confusion matrix PNG, JSON
    res = run_eval(run, output=tmp_path / 'eval')
    assert (tmp_path / 'eval' / 'eval.json').is_file() and (tmp_path / 'eval' / 'confusion.png').is_file()
    assert res['num_images'] == 360 and len(res['per_class']) == 10
    assert sum(map(sum, res['confusion'])) == 360
    assert abs(res['top1'] - result.best_top1) < 1e-3  # best.safetensors is the best epoch's weights

    # predict: a digit image from the val split, classes from the checkpoint
    from visionmix.data import build_datasets
    _, val, _ = build_datasets('digits', img_size=16)
    img = tmp_path / 'digit.png'
    val.load(0).save(img)
    out = predict(run / 'last.safetensors', [img], topk=3)
    assert len(out[0]['top']) == 3 and out[0]['top'][0]['label'] in [str(i) for i in range(10)]
    assert sum(t['prob'] for t in out[0]['top']) <= 1 + 1e-6
    assert out[0]['top'][0]['prob'] >= out[0]['top'][1]['prob']
    with pytest.raises(EvalError, match='does not exist'):
        predict(run, [tmp_path / 'missing.png'])


RESUME_RECIPES = {
    # the full classification recipe: RandAugment, erasing, mixup/cutmix, EMA, drop path, clipping
    'classification': dict(epochs=2, auto_augment='rand-m9-mstd0.5-inc1-mmax9', reprob=0.25, mixup=0.8, cutmix=1.0,
                           model_ema=True, model_ema_decay=0.9, drop_path=0.1, clip_grad=1.0, warmup_epochs=1,
                           model_kwargs={'net_arch': [['pass', 1], ['attn', 1]], 'embed_dim': 8, 'num_heads': 1},
                           limit_train=128),
    # segmentation: joint crop / flip of image and mask, BCE + Dice, Dice-picked best, EMA, drop path, clipping
    'segmentation': dict(epochs=2, model='unext_s', model_kwargs={}, dataset='synthetic-seg:48', img_size=32,
                         batch_size=8, auto_augment=None, reprob=0.0, smoothing=0.0, hflip=0.5, scale=[0.5, 1.0],
                         model_ema=True, model_ema_decay=0.9, drop_path=0.1, clip_grad=1.0, warmup_epochs=1),
}


@pytest.mark.parametrize('task', list(RESUME_RECIPES))
def test_resume_equals_uninterrupted(tmp_path, task):
    """Stop after epoch 1, resume: the same history and the same weights as one uninterrupted run."""
    recipe = RESUME_RECIPES[task]
    full = train(tiny(tmp_path, 'full', **recipe), progress=False)
    part = train(tiny(tmp_path, 'part', **recipe), progress=False, stop_after=1)
    assert not part.finished and part.epochs_done == 1
    with pytest.raises(TrainError, match='--resume'):
        train(tiny(tmp_path, 'part', **recipe), progress=False)
    resumed = train(resume=tmp_path / 'part', progress=False)
    assert resumed.finished
    strip = lambda h: [{k: v for k, v in r.items() if k not in ('img_s', 'epoch_seconds')} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert full.metric == ('dice' if task == 'segmentation' else 'top1') and f'val_{full.metric}' in full.history[0]
    assert (resumed.best_score, resumed.best_epoch) == (full.best_score, full.best_epoch)
    a = load_file(str(tmp_path / 'full' / 'last.safetensors'))
    b = load_file(str(tmp_path / 'part' / 'last.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_config_cases(tmp_path, capsys):
    with pytest.raises(ConfigError, match='unknown key'):
        load_config(overrides=dict(learning_rate=1))
    with pytest.raises(ConfigError, match='epochs must be a positive integer'):
        load_config(overrides=dict(epochs=0))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('lr: [1, 2\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(bad)
    with pytest.raises(TrainError, match='no checkpoint'):
        train(resume=tmp_path)
    for argv in (['train', '--config', str(bad)], ['train', '--set', 'bogus=1'], ['train', '--set', 'lr'],
                 ['train', '--model', 'no_such_model'], ['train', '--epochs', '-1'],
                 ['eval', str(tmp_path / 'nothing.safetensors')]):
        code = main(argv)
        out = capsys.readouterr().out.strip()
        assert code == 2 and out.startswith('error:') and '\n' not in out, (argv, out)


def test_example_recipe_loads():
    cfg = load_config(Path(__file__).parents[1] / 'configs' / 'digits.yaml')
    assert cfg.dataset == 'digits' and cfg.img_size == 32


def _cli(*args: str) -> list[str]:
    return [sys.executable, '-m', 'visionmix', *args]


@pytest.mark.slow  # ~50 s of subprocess training; exact resume is checked fast by test_resume_equals_uninterrupted
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    sets = ['--set', 'threads=1', '--set', 'limit_train=384', '--set', 'img_size=16', '--set', 'auto_augment=null',
            '--set', 'model_kwargs={net_arch: [[pass, 1]], embed_dim: 8}', '--set', 'mixup=0.8',
            '--set', 'model_ema=true', '--epochs', '3', '--batch-size', '32', '--model', 'spach_ms']
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    subprocess.run(_cli('train', *sets, '--output', str(tmp_path / 'full')), check=True, env=env,
                   capture_output=True)
    full = json.loads((tmp_path / 'full' / 'summary.json').read_text())
    epoch_seconds = full['history'][1]['epoch_seconds']
    proc = subprocess.Popen(_cli('train', *sets, '--output', str(tmp_path / 'killed')), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / 'killed' / CHECKPOINT_DIR / STATE_FILE
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(epoch_seconds / 2)  # mid-way through epoch 2, by the uninterrupted run's clock
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(state, weights_only=True)['epoch']
    assert 1 <= done < 3
    subprocess.run(_cli('train', '--resume', str(tmp_path / 'killed')), check=True, env=env, capture_output=True)
    resumed = json.loads((tmp_path / 'killed' / 'summary.json').read_text())
    assert [r['val_top1'] for r in full['history']] == [r['val_top1'] for r in resumed['history']]
    assert [r['train_loss'] for r in full['history']] == [r['train_loss'] for r in resumed['history']]
    a = load_file(str(tmp_path / 'full' / 'last.safetensors'))
    b = load_file(str(tmp_path / 'killed' / 'last.safetensors'))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ~40 s: torchrun and two gloo processes
def test_ddp_two_processes_on_cpu(tmp_path):
    """torchrun with 2 gloo processes: the run completes, only rank 0 writes, and the val top-1 it reports (reduced
    across ranks by torchmetrics) equals a single-process evaluation of the saved weights."""
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m',
           'visionmix', 'train', '--model', 'spach_ms', '--epochs', '2', '--batch-size', '32', '--output', str(out),
           '--set', 'threads=1', '--set', 'limit_train=256', '--set', 'img_size=16', '--set', 'auto_augment=null',
           '--set', 'model_kwargs={net_arch: [[pass, 1], [pass, 1]], embed_dim: 16}']
    proc = subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE='1'), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr  # whole: each rank's own error comes before torchrun's summary
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['finished'] and len(summary['history']) == 2
    assert proc.stdout.count('epoch 2/2') == 1  # rank 0 prints, rank 1 does not
    import yaml
    assert yaml.safe_load((out / 'config.yaml').read_text())['world_size'] == 2
    res = run_eval(out / 'last.safetensors', output=tmp_path / 'eval')
    assert res['top1'] == pytest.approx(summary['history'][-1]['val_top1'], abs=1e-3)


def test_tensorboard_event_files_hold_every_epoch_scalar(tmp_path):
    """Per-epoch scalars equal metrics.csv, across a resume (a second event file); the writers are closed, also when
    the run raises."""
    pytest.importorskip('tensorboard', reason='tensorboard is not installed (pip install tensorboard)')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    def writer_threads() -> set:
        return {t for t in threading.enumerate() if isinstance(t, _AsyncWriterThread)}

    before = writer_threads()
    train(tiny(tmp_path, epochs=3, limit_train=128), progress=False, stop_after=2)
    train(resume=tmp_path / 'run', progress=False)
    assert writer_threads() <= before  # closed
    tb = tmp_path / 'run' / 'tensorboard'
    assert len(list(tb.glob('events.out.tfevents.*'))) == 2  # one per process
    with open(tmp_path / 'run' / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    columns = [c for c in rows[0] if c != 'epoch']
    assert sorted(acc.Tags()['scalars']) == sorted(tensorboard_tag(c) for c in columns)
    assert {'train/loss', 'train/top1', 'val/loss', 'val/top1', 'val/top5', 'lr', 'img_s'} <= set(
        acc.Tags()['scalars'])
    for column in columns:
        # file order within one second is name order, and the names end in a per-process counter ('10' < '9'):
        # order by step, as TensorBoard plots them
        events = sorted(acc.Scalars(tensorboard_tag(column)), key=lambda e: e.step)
        assert [e.step for e in events] == [1, 2, 3], column
        # metrics.csv is written for people (6 significant digits); the events keep float32
        assert [e.value for e in events] == pytest.approx([float(r[column]) for r in rows], rel=1e-5), column

    with pytest.raises(TrainError, match='loss is'):
        train(tiny(tmp_path, 'diverges', lr=1e30, sched='none', limit_train=64), progress=False)
    assert writer_threads() <= before  # the failed run closed its writer too
    assert list((tmp_path / 'diverges' / 'tensorboard').glob('events.out.tfevents.*'))


def test_channels_last_cli_run_reloads_to_the_reported_top1(tmp_path, monkeypatch):
    built = []
    real_build = engine_train.build_model
    monkeypatch.setattr(engine_train, 'build_model', lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    sets = ['--set', 'threads=1', '--set', 'limit_train=256', '--set', 'img_size=16', '--set', 'auto_augment=null',
            '--set', 'reprob=0', '--set', 'warmup_epochs=0', '--set', 'hflip=0', '--set', 'scale=[0.7, 1.0]',
            '--set', 'model_kwargs={net_arch: [[pass, 1], [pass, 1]], embed_dim: 16}']
    run = tmp_path / 'cl'
    assert main(['train', '--model', 'spach_ms', '--epochs', '1', '--batch-size', '32', '--lr', '5e-3',
                 '--channels-last', '--output', str(run), *sets]) == 0
    # the trained model really was channels-last (depthwise / 1x1 weights are contiguous in both layouts)
    convs = [p for p in built[0].parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)
    summary = json.loads((run / 'summary.json').read_text())
    res = run_eval(run / 'last.safetensors', output=tmp_path / 'eval')  # a fresh, default-layout model
    assert res['top1'] == pytest.approx(summary['top1'], abs=1e-3)
    plain = train(tiny(tmp_path, 'plain', epochs=1, limit_train=256, hflip=0.0), progress=False)
    assert summary['history'][0]['train_loss'] == pytest.approx(plain.history[0]['train_loss'], rel=1e-3)
    assert summary['top1'] == pytest.approx(plain.top1, abs=1.0)  # same math in another memory layout


@pytest.mark.parametrize('backend', ['aot_eager', pytest.param(True, marks=pytest.mark.slow, id='inductor')])
def test_compiled_run_saves_plain_keys_and_resumes(tmp_path, backend, monkeypatch):
    calls = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda m, **k: calls.append(k) or real_compile(m, **k))
    recipe = dict(epochs=2, limit_train=128)  # 4 equal batches of 32: one graph, no recompile for a short tail
    # the same model class already compiled at other image sizes in this process: dynamo would then make the size
    # symbolic, which inductor cannot compile for this model (torch 2.14); train compiles with static shapes
    other = real_compile(engine_train.build_model('spach_ms', 10, 16, TINY['model_kwargs']), backend='eager')
    for side in (32, 24):
        other(torch.randn(2, 3, side, side))
    part = train(tiny(tmp_path, 'part', compile=backend, **recipe), progress=False, stop_after=1)
    expected = dict(dynamic=False) if backend is True else dict(dynamic=False, backend=backend)
    assert part.epochs_done == 1 and calls == [expected]
    import yaml
    assert yaml.safe_load((tmp_path / 'part' / 'config.yaml').read_text())['config']['compile'] == backend
    fresh = set(engine_train.build_model('spach_ms', 10, 16, TINY['model_kwargs']).state_dict())
    for name in ('last.safetensors', 'best.safetensors', f'{CHECKPOINT_DIR}/model_e1.safetensors'):
        keys = set(load_file(str(tmp_path / 'part' / name)))
        assert keys == fresh and not any('_orig_mod' in k for k in keys), name
    resumed = train(resume=tmp_path / 'part', progress=False)
    assert resumed.finished and resumed.epochs_done == 2 and len(calls) == 2  # the resumed run compiles too
    eager = train(tiny(tmp_path, 'eager', **recipe), progress=False)
    for r, e in zip(resumed.history, eager.history, strict=True):
        assert r['train_loss'] == pytest.approx(e['train_loss'], rel=1e-4)
        assert r['val_loss'] == pytest.approx(e['val_loss'], rel=1e-4)
        assert r['val_top1'] == pytest.approx(e['val_top1'], abs=0.5)
    a = load_file(str(tmp_path / 'part' / 'last.safetensors'))
    b = load_file(str(tmp_path / 'eager' / 'last.safetensors'))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_compile_option_in_config_and_cli(tmp_path, capsys):
    assert load_config(overrides=dict(compile=True)).compile is True
    assert load_config(overrides=dict(compile='aot_eager')).compile == 'aot_eager'
    with pytest.raises(ConfigError, match=r"unknown compile backend 'nope'; torch.compile knows .*inductor"):
        load_config(overrides=dict(compile='nope'))
    with pytest.raises(ConfigError, match='compile must be true, false or a torch.compile backend name'):
        load_config(overrides=dict(compile=1))
    parser = build_parser()
    assert parser.parse_args(['train']).compile is False
    assert parser.parse_args(['train', '--compile']).compile is True
    assert parser.parse_args(['train', '--compile', '--epochs', '1']).compile is True
    assert parser.parse_args(['train', '--compile', 'aot_eager']).compile == 'aot_eager'
    code = main(['train', '--compile', 'nope', '--output', str(tmp_path / 'run')])
    out = capsys.readouterr().out.strip()
    assert code == 2 and out.startswith("error: unknown compile backend 'nope'") and '\n' not in out


def test_progress_bar_on_a_terminal_shows_loss_accuracy_lr_speed_and_eta(tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    train(tiny(tmp_path, epochs=1, limit_train=64), console=console, progress=True, label='bar')
    text = out.getvalue()
    assert '\u2501' in text  # the bar itself
    assert re.search(r'bar epoch 1/1 .*\d+/\d+ loss \d+\.\d{3} top-1 \d+\.\d% lr \d\.\de[-+]\d+ \d+ img/s', text)
    assert re.search(r'\d+:\d\d:\d\d|-:--:--', text)  # rich's time-remaining column
    quiet = io.StringIO()  # not a terminal (a log file, CI): only the per-epoch lines
    train(tiny(tmp_path, 'quiet', epochs=1, limit_train=64), console=Console(file=quiet), progress=True)
    assert '\u2501' not in quiet.getvalue() and 'epoch 1/1' in quiet.getvalue()


def test_device_for_rank_gives_each_rank_its_gpu(monkeypatch):
    """torchrun's LOCAL_RANK picks the GPU (rank 0 included: cuda:0, never 'no device'); CPU without CUDA."""
    from visionmix.engine.trainer import device_for_rank

    assert device_for_rank(0, cuda=True) == torch.device('cuda', 0)
    assert device_for_rank(3, cuda=True) == torch.device('cuda', 3)
    assert device_for_rank(1, cuda=False) == torch.device('cpu')
    monkeypatch.setenv('LOCAL_RANK', '2')
    assert device_for_rank(cuda=True) == torch.device('cuda', 2)
    monkeypatch.delenv('LOCAL_RANK')
    assert device_for_rank(cuda=True).index == 0


def test_precise_bn_recomputes_the_statistics_the_eval_sees(tmp_path):
    """With precise_bn, every BatchNorm's running statistics come from one cumulative pass over the first N training
    images after the epoch (torch's update_bn), not from the lagging running average of the training steps."""
    from safetensors.torch import load_file

    common = dict(model='resnet18', dataset='synthetic:64', img_size=32, epochs=1, batch_size=8, threads=1,
                  model_kwargs={'num_classes': 6})
    train(load_config(overrides=dict(common, precise_bn=24, output=str(tmp_path / 'precise'))), progress=False)
    train(load_config(overrides=dict(common, precise_bn=0, output=str(tmp_path / 'plain'))), progress=False)
    precise = load_file(str(tmp_path / 'precise' / 'last.safetensors'))
    plain = load_file(str(tmp_path / 'plain' / 'last.safetensors'))
    counters = [k for k in precise if k.endswith('num_batches_tracked')]
    assert counters and all(precise[k].item() == 3 for k in counters)  # 24 images / batch 8
    assert all(plain[k].item() == 8 for k in counters)  # 64 images / batch 8: the training steps
    assert load_config(overrides=dict(dataset='digits')).precise_bn > 0  # on in the small-image recipe


def test_eval_every_validates_every_nth_and_the_last_epoch(tmp_path, monkeypatch):
    """eval_every=2 over 5 epochs evaluates after epochs 2, 4 and 5 only; the others record NaN and are never the best;
    a resume keeps the schedule; the CLI flag sets it and a bad value is one line."""
    calls = []
    evaluate = engine_train.Trainer.validate

    def counting(self):
        calls.append(len(self.history) + 1)
        return evaluate(self)

    monkeypatch.setattr(engine_train.Trainer, 'validate', counting)
    train(tiny(tmp_path, epochs=5, limit_train=128, eval_every=2), progress=False, stop_after=3)
    res = train(resume=tmp_path / 'run', progress=False)
    assert calls == [2, 4, 5]
    scores = [row['val_top1'] for row in res.history]
    assert [s == s for s in scores] == [False, True, False, True, True]  # NaN != NaN
    assert all(row['img_s'] > 0 for row in res.history)
    assert res.best_epoch in (2, 4, 5) and res.best_score == max(scores[1], scores[3], scores[4])
    assert res.score == scores[-1]
    with open(tmp_path / 'run' / 'metrics.csv') as f:
        assert [r['val_top1'] for r in csv.DictReader(f)][0] == 'nan'
    assert build_parser().parse_args(['train', '--eval-every', '3']).eval_every == 3
    with pytest.raises(ConfigError, match='eval_every must be a positive integer'):
        load_config(overrides=dict(eval_every=0))
