"""The command line a researcher expects: recipes that suit the data, fine-tuning, one size syntax, shareable runs,
any weights file a run wrote, forgiving predict, a clean Ctrl-C, errors that name the real cause, readable files."""
from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from visionmix.cli import main
from visionmix.engine.compare import scatter_figure
from visionmix.engine.config import load_config

TINY = ['--model', 'SPACH-Conv', '--dataset', 'synthetic:16', '--epochs', '1', '--batch-size', '8', '--threads',
        '1']


def _train(tmp_path: Path, *extra: str, name: str = 'run') -> Path:
    assert main(['train', *TINY, *extra, '--output', str(tmp_path / name)]) == 0
    return tmp_path / name


def test_the_dataset_picks_a_recipe_that_suits_it_and_the_run_says_which(tmp_path):
    digits = load_config(overrides=dict(dataset='digits'))
    assert digits.recipe == 'small-images'
    assert digits.auto_augment is None and digits.hflip == 0 and digits.reprob == 0 and digits.scale[0] >= 0.5
    assert load_config(overrides=dict(dataset='folder:/data')).recipe == 'imagenet'
    assert load_config(overrides=dict(dataset='cifar10:/data')).hflip == 0.5  # photos may be mirrored
    explicit = load_config(overrides=dict(dataset='digits', hflip=0.25, recipe='imagenet'))
    assert explicit.hflip == 0.25 and explicit.auto_augment  # what the user sets wins, recipe=NAME picks another
    run = _train(tmp_path)
    record = yaml.safe_load((run / 'config.yaml').read_text())
    assert record['recipe']['name'] == 'small-images' and 'mirrored digit' in record['recipe']['why']
    assert record['config']['recipe'] == 'small-images'


def test_train_help_names_the_recipes(capsys):
    with pytest.raises(SystemExit):
        main(['train', '--help'])
    out = capsys.readouterr().out
    assert 'small-images' in out and 'digits' in out and '--checkpoint' in out and '--pretrained' in out


def test_fine_tuning_starts_from_a_run_with_the_head_adapted(tmp_path):
    source = _train(tmp_path, name='source')  # 6 classes
    assert main(['train', '--model', 'SPACH-Conv', '--dataset', 'digits', '--epochs', '1', '--batch-size', '32',
                 '--threads', '1', '--set', 'limit_train=64', '--checkpoint', str(source), '--output',
                 str(tmp_path / 'tuned')]) == 0
    from safetensors.torch import load_file

    before, after = load_file(str(source / 'last.safetensors')), load_file(str(tmp_path / 'tuned' / 'last.safetensors'))
    assert before['head.fc.weight'].shape[0] == 6 and after['head.fc.weight'].shape[0] == 10
    # the trunk started from the source weights: one epoch of fine-tuning moves it only a little
    stem = 'stem.proj.weight'
    moved = (after[stem] - before[stem]).norm() / before[stem].norm()
    fresh = (after[stem] - __import__('visionmix').create_model('SPACH-Conv').state_dict()[stem]).norm()
    assert moved < 0.5 and fresh > (after[stem] - before[stem]).norm()


def test_pretrained_offline_names_the_download_not_the_size(tmp_path, capsys):
    for extra in (['--pretrained'], ['--set', 'model_kwargs={pretrained: true}']):
        code = main(['train', '--model', 'resnet18', '--dataset', 'synthetic:8', '--epochs', '1', *extra,
                     '--output', str(tmp_path / 'run')])
        out = capsys.readouterr().out.strip()
        assert code == 2 and 'could not fetch the pretrained weights' in out and 'cannot take' not in out, out


def test_one_size_syntax_everywhere(tmp_path, capsys):
    run = _train(tmp_path, '--img-size', '32x48')
    capsys.readouterr()
    assert yaml.safe_load((run / 'config.yaml').read_text())['config']['img_size'] == [32, 48]
    assert main(['eval', str(run), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['num_images'] > 0
    image = tmp_path / 'a.png'
    Image.fromarray(np.full((40, 70, 3), 200, np.uint8)).save(image)
    assert main(['predict', '--checkpoint', str(run), str(image), '--json']) == 0
    assert json.loads(capsys.readouterr().out)[0]['image'] == str(image)
    # profile and compare take the same syntax; size-tied models are built for the size asked
    assert main(['profile', 'spach_ms_xxs_patch4_224_mlp', '--img-size', '64', '--iters', '1', '--warmup', '0',
                 '--batch-size', '1', '--no-memory', '--mode', 'infer', '--format', 'json']) == 0
    assert json.loads(capsys.readouterr().out)[0]['input_size'] == [3, 64, 64]
    assert main(['train', '--model', 'SPACH-MLP', '--dataset', 'synthetic:8', '--img-size', '48', '--epochs', '1',
                 '--batch-size', '8', '--threads', '1', '--output', str(tmp_path / 'mlp')]) == 0


def test_run_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = _train(tmp_path)
    finally:
        os.umask(old)
    files = [p for p in run.rglob('*') if p.is_file()]
    assert {'config.yaml', 'metrics.csv', 'summary.json', 'last.safetensors', 'best.safetensors', 'state.pt',
            'curves.png'} <= {p.name for p in files}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert all(mode == 0o644 for mode in modes.values()), modes


def test_eval_takes_any_weights_file_the_run_wrote(tmp_path, capsys):
    run = _train(tmp_path)
    capsys.readouterr()
    snapshot = run / 'checkpoints' / 'model_e1.safetensors'
    assert snapshot.is_file()
    assert main(['eval', str(snapshot), '--json', '--output', str(tmp_path / 'ev')]) == 0
    assert json.loads(capsys.readouterr().out)['top1'] >= 0


def test_predict_takes_folders_and_globs_and_skips_unreadable_images(tmp_path, capsys):
    run = _train(tmp_path)
    capsys.readouterr()
    folder = tmp_path / 'images'
    (folder / 'sub').mkdir(parents=True)
    for name in ('a.png', 'sub/b.png', 'c.jpg'):
        Image.fromarray(np.full((24, 24, 3), 120, np.uint8)).save(folder / name)
    (folder / 'broken.png').write_bytes(b'not an image')
    assert main(['predict', '--checkpoint', str(run), str(folder), '--json']) == 0
    captured = capsys.readouterr()
    assert sorted(Path(r['image']).name for r in json.loads(captured.out)) == ['a.png', 'b.png', 'c.jpg']
    assert 'skipped 1 unreadable image(s) of 4' in captured.err and 'broken.png' in captured.err
    assert main(['predict', '--checkpoint', str(run), str(folder / '*.png'), '--json']) == 0
    assert sorted(Path(r['image']).name for r in json.loads(capsys.readouterr().out)) == ['a.png']
    assert main(['predict', '--checkpoint', str(run), str(folder), '--strict']) == 2
    assert 'cannot read image' in capsys.readouterr().out


def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(tmp_path):
    run = tmp_path / 'run'
    # epochs of a few seconds: the interrupt must land while the run still has epochs to go (at 256 images an epoch
    # took 0.4 s on a quiet machine and the run sometimes finished before the signal arrived)
    cmd = [sys.executable, '-m', 'visionmix', 'train', '--model', 'SPACH-Conv', '--dataset', 'synthetic:2048',
           '--epochs', '3', '--batch-size', '8', '--threads', '1', '--output', str(run)]
    # a pytest-xdist worker may ignore SIGINT, and an ignored signal stays ignored in its children (Python then
    # installs no KeyboardInterrupt handler): give the run the default disposition a terminal would
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE='1'),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (run / 'checkpoints' / 'state.pt').is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, 'the run ended before it could be interrupted'
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-500:], err[-2000:])
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-2000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith('interrupted after epoch ') and f'visionmix train --resume {run}' in last, last
    done = int(last.split()[3].rstrip(';'))
    assert 1 <= done < 3
    assert main(['train', '--resume', str(run)]) == 0  # the checkpoint is intact: the run goes on from it
    summary = json.loads((run / 'summary.json').read_text())
    assert summary['finished'] and summary['epochs_done'] == 3


def test_plots_and_files_are_readable(tmp_path):
    run = _train(tmp_path)
    with open(run / 'metrics.csv') as f:
        row = next(csv.DictReader(f))
    for key in ('train_loss', 'val_loss', 'lr', 'img_s'):
        digits = row[key].replace('.', '').replace('-', '').lstrip('0').split('e')[0]
        assert len(digits) <= 6, (key, row[key])  # rounded for people, not 10.000000149011612
    rows = [dict(label='a', gmacs=0.0012, top1_mean=90.0, top1_std=None, metric='top1'),
            dict(label='b', gmacs=0.0030, top1_mean=95.0, top1_std=1.0, metric='top1')]
    fig = scatter_figure(rows, 'gmacs', 'MMACs per image (log)', False, scale=1e3, title='digits, 32px, 5 epochs')
    ax = fig.axes[0]
    assert ax.get_xlabel() == 'MMACs per image (log)' and 'digits' in ax.get_title()
    assert [round(c.lines[0].get_xdata()[0], 3) for c in ax.containers] == [1.2, 3.0]  # in the table's unit
