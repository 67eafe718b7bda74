"""Every example command in the README runs, so the README cannot drift from the program.

The examples are the lines of the README's ```console blocks (``\\`` continues a line). They run through
``visionmix.cli.main`` with tiny budgets: one epoch on a few images, one timing iteration, a quick study. The options
they show are kept as written. An example that reads what an earlier one wrote (a run folder, exported images) runs
after it in the same scratch folder; examples that share nothing are separate tests, so the workers share them out.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

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


def _outputs(argv: list[str]) -> set[str]:
    return {argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ('--output', '--export')}


def _reads(argv: list[str], path: str) -> bool:
    """Whether an argument names ``path`` (as is, as a folder prefix, or after a dataset spec's ``:``)."""
    return any(arg == path or arg.startswith(path + '/') or arg.endswith(':' + path) for arg in argv)


def example_chains(commands: list[str]) -> list[list[str]]:
    """The commands grouped so that each group holds every earlier command whose output it reads, in README order."""
    chain_of: list[int] = []  # command index -> chain id
    owner: dict[str, int] = {}  # output path -> the command that wrote it
    for i, command in enumerate(commands):
        argv = shlex.split(command)[1:]
        joined = {chain_of[owner[path]] for path in owner if _reads(argv, path)}
        chain = min(joined, default=i)
        chain_of = [chain if c in joined else c for c in chain_of] + [chain]  # merge every chain it reads from
        owner.update({path: i for path in _outputs(argv)})
    return [[c for c, k in zip(commands, chain_of) if k == chain] for chain in sorted(set(chain_of))]


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


def _small_data(argv: list[str]) -> list[str]:
    """An embedded dataset given without a size gets a few images (``textures-seg`` -> ``textures-seg:24``)."""
    from visionmix.data import parse_spec
    from visionmix.engine.compare import STUDIES

    argv = list(argv)
    if argv[0] == 'compare' and '--dataset' not in argv and '--models' not in argv:  # a task's default study
        task = argv[argv.index('--task') + 1] if '--task' in argv else 'classification'
        argv += ['--dataset', STUDIES[task][1]['dataset'].partition(':')[0]]
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
        if command == 'compare':  # in this process: spawned workers would each pay the imports again
            argv += ['--no-profile', '--jobs', '1']
    elif command == 'study':
        argv = [*argv, '--quick', '--set', 'limit_train=24', '--set', 'threads=1', '--epochs', '1', '--seeds', '1',
                '--jobs', '1']
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


CHAINS = example_chains(console_commands(README.read_text()))


def test_chains_keep_every_example_once_and_in_order():
    commands = console_commands(README.read_text())
    assert sorted(c for chain in CHAINS for c in chain) == sorted(commands)
    assert all(chain == sorted(chain, key=commands.index) for chain in CHAINS)


def test_an_example_joins_every_chain_it_reads_from():
    train_a, train_b = 'visionmix train --output runs/a', 'visionmix train --output runs/b'
    export, eval_a = 'visionmix datasets x --export imgs', 'visionmix eval runs/a'
    predict = 'visionmix predict --checkpoint runs/b imgs'  # reads two chains: they merge
    patches = 'visionmix train --dataset bpr-patches:imgs --output runs/c'  # a path after a dataset spec's ':'
    other = 'visionmix eval runs/ab'  # not runs/a: a path is a whole argument or a folder prefix
    assert example_chains([train_a, train_b, export, eval_a, predict, patches, other]) == [
        [train_a, eval_a], [train_b, export, predict, patches], [other]]


@pytest.mark.parametrize('chain', CHAINS, ids=[f'{i:02d}-{shlex.split(c[0])[1]}' for i, c in enumerate(CHAINS)])
def test_every_readme_example_runs(chain, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in chain:
        argv = tiny(shlex.split(command)[1:])
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, (command, argv, out.out[-1500:], out.err[-1500:])
