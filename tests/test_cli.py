import json
import subprocess
import sys
from pathlib import Path

import pytest

from visionmix.cli import main


def test_models_table(capsys):
    assert main(['models']) == 0
    out = capsys.readouterr().out
    for name in ('resnet50', 'vit_small_patch16_224', 'googlenet', 'mixer_b16_224'):
        assert name in out
    assert 'verified' in out and 'GMACs' in out


def test_models_filters_and_json(capsys):
    assert main(['models', 'mixer_*', '--json']) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [c['name'] for c in cards] == ['mixer_b16_224', 'mixer_l16_224', 'mixer_s16_224']
    assert all(c['family'] == 'mlp' for c in cards)
    assert main(['models', '--family', 'conv', '--json']) == 0
    assert {c['family'] for c in json.loads(capsys.readouterr().out)} == {'conv'}


def test_models_no_match(capsys):
    assert main(['models', 'no_such_thing']) == 1
    assert 'no model matches' in capsys.readouterr().out


def test_card(capsys):
    assert main(['card', 'swin_tiny_patch4_window7_224', '--json']) == 0
    card = json.loads(capsys.readouterr().out)
    assert card['arxiv'] == '2103.14030' and card['params'] == 28_288_354


def test_unknown_card_is_one_line_error(capsys):
    assert main(['card', 'resnet05']) == 2
    out = capsys.readouterr().out
    assert 'resnet50' in out and 'Traceback' not in out


@pytest.mark.parametrize('args', [['--help'], ['models', '--help'], ['card', '--help']])
def test_help_is_complete(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert 'usage: visionmix' in out
    if args == ['--help']:
        assert 'models' in out and 'card' in out
    else:
        assert '--json' in out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / 'visionmix'  # the venv's bin, whether or not it is activated
    out = subprocess.run([str(script), '--version'], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith('visionmix ')


def test_bad_family_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['models', '--family', 'mlpp'])
    assert exit_info.value.code == 2 and 'invalid choice' in capsys.readouterr().err


def test_any_timm_name_works_in_every_command(tmp_path, capsys):
    """The issue's new-user commands: profile resnet18, train --model convnext_atto, compare two timm CNNs."""
    assert main(['profile', 'resnet18', '--img-size', '32', '--batch-size', '2', '--iters', '1', '--warmup', '0',
                 '--no-memory', '--mode', 'infer', '--format', 'json']) == 0
    assert json.loads(capsys.readouterr().out)[0]['model'] == 'resnet18'
    assert main(['train', '--model', 'convnext_atto', '--dataset', 'synthetic:8', '--epochs', '1', '--img-size', '32',
                 '--batch-size', '4', '--threads', '1', '--output', str(tmp_path / 'run')]) == 0
    assert (tmp_path / 'run' / 'last.safetensors').is_file()
    assert main(['compare', '--models', 'efficientnet_b0', 'regnety_002', '--dataset', 'synthetic:8', '--epochs', '1',
                 '--img-size', '32', '--no-profile', '--set', 'batch_size=4', '--set', 'threads=1', '--output',
                 str(tmp_path / 'cmp')]) == 0
    report = (tmp_path / 'cmp' / 'report.md').read_text()
    assert 'efficientnet_b0' in report and 'regnety_002' in report
    capsys.readouterr()
    assert main(['models', '--all', 'convnext_at']) == 0
    assert 'convnext_atto' in capsys.readouterr().out
    assert main(['card', 'tv:resnet18', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['source'] == 'torchvision'
