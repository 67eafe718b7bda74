"""Every documented bad input gives ``error: <one line>`` and exit 2; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from visionmix import cli
from visionmix.cli import main
from visionmix.errors import CheckpointError, DataError, VisionmixError


def _bad_inputs(tmp: str) -> list[list[str]]:
    run = ['--epochs', '1', '--output', f'{tmp}/run']
    return [
        # unknown names, suggested where close
        ['card', 'resnet05'], ['profile', 'resnet05'], ['train', '--model', 'resnet05', *run],
        ['compare', '--models', 'resnet05', '--output', f'{tmp}/cmp'], ['card', 'tv:resnt18'], ['card', 'fpnn:x'],
        # sizes, counts and recipe values
        ['profile', 'resnet18', '--img-size', '0', '--no-memory', '--iters', '1', '--warmup', '0'],
        ['profile', 'resnet18', '--format', 'xml'], ['profile', 'resnet18', '--img-size', '32y48'],
        ['train', '--model', 'resnet18', '--img-size', '-3', *run], ['models', '--family', 'mlpp'],
        ['train', '--model', 'resnet18', '--dataset', 'synthetic:0', *run],
        ['train', '--model', 'resnet18', '--dataset', 'synthetic:-5', *run],
        ['train', '--model', 'resnet18', '--dataset', 'digits:5', *run],
        ['train', '--model', 'resnet18', '--dataset', 'nope', *run],
        ['train', '--model', 'resnet18', '--dataset', f'folder:{tmp}/missing', *run],
        ['train', '--model', 'resnet18', '--set', 'lr=-1', *run],
        ['train', '--model', 'resnet18', '--set', 'no_such_key=1', *run],
        ['train', '--model', 'resnet18', '--set', 'mixup=-1', *run],
        ['train', '--model', 'spach_ms', '--dataset', 'synthetic:8', '--img-size', '32', '--set',
         'model_kwargs={net_arch: [[[window_mlp, 1, {window_sise: 4}]]]}', *run],
        ['train', '--model', 'resnet18', '--set', 'model_kwargs={bogus: 1}', '--dataset', 'synthetic:8', *run],
        ['train', '--resume', f'{tmp}/no_run'],
        ['train', '--resume', f'{tmp}/no_run', '--epochs', '3'],
        # files
        ['eval', f'{tmp}/missing.safetensors'], ['eval', f'{tmp}/corrupt.safetensors'],
        ['predict', '--checkpoint', f'{tmp}/missing', f'{tmp}/img.png'],
        ['profile', 'resnet18', '--output', f'{tmp}/no_dir/out.json'],
    ]


def test_every_documented_bad_input_is_one_error_line(tmp_path, capsys):
    (tmp_path / 'corrupt.safetensors').write_bytes(b'not a safetensors file')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'img.png')
    for argv in _bad_inputs(str(tmp_path)):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own checks (a size that is not N or HxW) exit the same way
            code = e.code
        captured = capsys.readouterr()
        out = (captured.out + captured.err).strip()
        assert code == 2, (argv, out)
        assert out.startswith('error: ') and '\n' not in out and 'Traceback' not in out, (argv, out)
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'cmp').exists()  # nothing half-started


def test_suggestions_and_causes_are_named(capsys):
    assert main(['card', 'resnet05']) == 2
    assert 'resnet50' in capsys.readouterr().out
    assert main(['train', '--model', 'resnet18', '--dataset', 'synthetic:0']) == 2
    assert 'positive integer' in capsys.readouterr().out


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only VisionmixError is a user error: a bug inside a command (here a KeyError, and a plain ValueError from deep
    inside a library) is not turned into a polite line."""
    def broken(args, console):
        return {}['missing']

    monkeypatch.setattr(cli, 'build_parser', _parser_with({'card': broken}))
    with pytest.raises(KeyError):
        main(['card', 'resnet50'])

    def numpy_failure(args, console):
        np.zeros(3).reshape(7)  # ValueError, not a VisionmixError

    monkeypatch.setattr(cli, 'build_parser', _parser_with({'card': numpy_failure}))
    with pytest.raises(ValueError, match='reshape'):
        main(['card', 'resnet50'])


def _parser_with(handlers):
    real = cli.build_parser

    def build():
        parser = real()
        for action in parser._subparsers._group_actions:
            for name, handler in handlers.items():
                action.choices[name].set_defaults(func=handler)
        return parser

    return build


def test_traceback_reaches_the_terminal_for_a_bug(tmp_path):
    """End to end: a bug prints Python's traceback and exits 1, not 'error:' and 2."""
    script = tmp_path / 'bug.py'
    script.write_text('import sys\nfrom visionmix import cli\n'
                      'cli.cmd_card = lambda args, console: [][1]\n'
                      'real = cli.build_parser\n'
                      'def build():\n'
                      '    p = real()\n'
                      '    p._subparsers._group_actions[0].choices["card"].set_defaults(func=cli.cmd_card)\n'
                      '    return p\n'
                      'cli.build_parser = build\n'
                      'sys.exit(cli.main(["card", "resnet50"]))\n')
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and 'Traceback' in out.stderr and 'IndexError' in out.stderr
    assert 'error:' not in out.stdout


def test_error_types_share_one_base():
    from visionmix.engine.building import TrainError
    from visionmix.engine.compare import CompareError
    from visionmix.engine.evaluate import EvalError
    from visionmix.profile.core import ProfileError
    from visionmix.registry import ModelArgumentError, UnknownModelError

    for error in (CheckpointError, DataError, TrainError, CompareError, EvalError, ProfileError, UnknownModelError,
                  ModelArgumentError):
        assert issubclass(error, VisionmixError) and issubclass(error, ValueError), error
    assert issubclass(ModelArgumentError, TypeError)  # what Python raises for a bad keyword, too
