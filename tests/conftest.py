"""Shared test setup: deterministic, one torch thread per xdist worker, never online."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # a pretrained=True test must fail fast, not retry DNS for a minute

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny tensors: extra threads cost more than they bring; xdist uses the cores


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
