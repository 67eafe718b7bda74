"""Counting parameters and MACs the same way for every model.

MACs are ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2. Fused ``scaled_dot_product_attention`` kernels are
not counted by it on CPU, so attention is forced through the math path while counting.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..layers.scratch import scratch_disabled

__all__ = ['count_params', 'count_macs']


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image, at ``input_size`` (C, H, W).

    The model is run in eval mode on zeros; its training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device('cpu')
        x = torch.zeros(batch_size, *input_size, device=device)
        counter = FlopCounterMode(display=False)
        # the plain formulation: the architecture's multiply-adds, not those of inference-only shortcuts
        with scratch_disabled(), sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
        return counter.get_total_flops() // 2 // batch_size
    finally:
        model.train(was_training)
