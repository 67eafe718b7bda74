"""Every example command in the README runs, so the README cannot drift from the program.

The examples are the lines of the README's ```console blocks (``\\`` continues a line). They run in order, in one
scratch folder (later examples use the runs earlier ones wrote), through ``visionmix.cli.main`` with tiny budgets:
one epoch on a few images, one timing iteration, a quick study. The options they show are kept as written.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from visionmix.cli import main

README = Path(__file__).resolve().parents[1] / 'README.md'
TINY_TRAIN = ['--set', 'limit_train=24', '--set', 'threads=1']


def console_commands(text: str) -> list[str]:
    """The ``visionmix ...`` lines of the README's console blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r'^```console\n(.*?)^```', text, flags=re.M | re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.strip().removeprefix('$ ')
            if line.startswith('visionmix '):
                commands.append(line)
    return commands


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


def _small_data(argv: list[str]) -> list[str]:
    """An embedded dataset given without a size gets a few images (``textures-seg`` -> ``textures-seg:24``)."""
    from visionmix.data import parse_spec

    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == '--dataset' and ':' not in argv[i + 1] and parse_spec(argv[i + 1])[0].arg == 'N':
            argv[i + 1] += ':24'
    return argv


def tiny(argv: list[str]) -> list[str]:
    """The same command on a budget a test can afford."""
    argv = _small_data(argv)
    command = argv[0]
    if command in ('train', 'compare') and '--resume' not in argv:
        argv = _set(argv, '--epochs', '1') + TINY_TRAIN
        if command == 'compare':
            argv.append('--no-profile')
    elif command == 'study':
        argv = [*argv, '--quick', '--set', 'limit_train=24', '--set', 'threads=1', '--epochs', '1', '--seeds', '1']
    elif command == 'profile':
        argv = _set(_set(_set(argv, '--iters', '1'), '--warmup', '0'), '--batch-size', '2')
        argv += [] if '--backend' in argv else ['--no-memory']
    elif command == 'rf' and '--erf' in argv:
        argv = _set(argv, '--samples', '2')
    return argv


def test_the_readme_states_no_placeholder():
    assert 'TBD' not in README.read_text()


def test_the_readme_has_examples_for_every_command():
    commands = {shlex.split(c)[1] for c in console_commands(README.read_text())}
    assert {'models', 'card', 'datasets', 'train', 'eval', 'predict', 'compare', 'profile', 'export', 'rf'} <= commands


def test_every_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in console_commands(README.read_text()):
        argv = tiny(shlex.split(command)[1:])
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, (command, argv, out.out[-1500:], out.err[-1500:])
