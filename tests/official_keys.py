"""Official state-dict key layouts, copied into tests/fixtures/official_keys/ from the reference facts.

Each file: a header ``# name: params=N, state_dict keys=K``, then ``key<TAB>[shape]`` lines.
"""
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / 'fixtures' / 'official_keys'


def read_official_keys(name: str) -> tuple[int, dict[str, torch.Size]]:
    """(official parameter count, {key: shape}) of the official model ``name``."""
    lines = (FIXTURES / f'{name}.txt').read_text().splitlines()
    params = int(lines[0].split('params=')[1].split(',')[0])
    shapes = {}
    for line in lines[1:]:
        if line.strip() and not line.startswith('#'):
            key, shape = line.split('\t')
            shapes[key] = torch.Size(int(s) for s in shape.strip('[]').split(',') if s.strip())
    return params, shapes
