"""Small fused steps for eager CPU inference and training: fewer passes over the activation maps.

Each function computes exactly what its plain formulation computes (up to float rounding of a reordered sum) and is
an fx leaf, because it chooses its path at run time (in place only when no gradient is recorded, a fused GEMM only
on contiguous operands):

* :func:`linear_residual`: ``res + linear(x)``, the residual accumulated by the GEMM itself (``addmm`` with
  ``beta = 1``) instead of a bias broadcast into the output, a GEMM, and a separate add.
* :func:`residual_add`: ``x + branch``, in place into the fresh ``branch`` in inference.
* :func:`gelu_fast` / :func:`relu_fast`: exact GELU / ReLU, in place on a fresh tensor in inference;
  :func:`activate` runs an activation module that way when it is one of them.
* :func:`mlp_residual`: ``x + mlp(y)`` for timm's ``Mlp``: GELU in place, the residual added by fc2's GEMM.
* :func:`linear_scratch`: a linear layer whose output, a temporary the caller consumes before it returns, goes into
  a reused buffer in inference (:mod:`visionmix.layers.scratch`).
* :func:`gelu_mlp_residual`: ``res + fc2(gelu(fc1(x)))``; in inference by blocks of rows whose hidden map stays in
  the CPU cache between fc1, the GELU and fc2, accumulated into ``res`` itself when the caller hands it over.
* :func:`shortcut_plus_bias`: the shortcut plus an output bias, written where a GEMM then accumulates (possibly into
  the shortcut itself).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .scratch import has_hooks, scratch, scratch_active

__all__ = ['linear_residual', 'residual_add', 'gelu_fast', 'relu_fast', 'is_exact_gelu', 'activate', 'mlp_fusable',
           'mlp_residual', 'inactive_dropout', 'linear_scratch', 'gelu_mlp_residual', 'shortcut_plus_bias']

# row blocks of gelu_mlp_residual: 2048 rows, whose hidden map the GELU and fc2 then read from the cache. Measured on
# a 2-thread Zen 3 (32 MB L3), batch 8: the whole MLP of the first two stages of Swin-MLP and Hire-MLP runs 4-37%
# faster than with 8 MB hidden blocks (1.4-8k rows; MKL's GEMMs with few channels prefer 1-2k rows), the later
# stages the same; wide hidden layers take fewer rows, keeping the block under MLP_BLOCK_NUMBERS (16 MB in fp32)
MLP_BLOCK_ROWS = 2048
MLP_BLOCK_NUMBERS = 2 ** 22


@register_notrace_function  # reason: picks the fused path from the operands' layout at run time
def linear_residual(res: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """``res + F.linear(x, weight, bias)`` for ``res`` (..., N) and ``x`` (..., K) with the same leading dims.

    ``out = res + bias`` is formed once and the GEMM accumulates into it (``addmm_``, beta 1): one pass over the
    output instead of the bias copy that ``addmm`` makes plus the residual add. Works under autograd (the GEMM's
    backward does not need its output).
    """
    n = weight.shape[0]
    if not (res.is_contiguous() and x.is_contiguous()) or res.shape[:-1] != x.shape[:-1] or res.shape[-1] != n:
        return res + F.linear(x, weight, bias)
    out = res.reshape(-1, n) + bias if bias is not None else res.reshape(-1, n).clone()
    x = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (out.requires_grad or x.requires_grad or weight.requires_grad):
        # in place on the fresh ``out``: autograd records it (an out= call refuses operands that need gradients)
        return out.addmm_(x, weight.t()).view(res.shape)
    # the out= form of the same call: FLOP counters see aten.addmm (they do not know addmm_)
    return torch.addmm(out, x, weight.t(), out=out).view(res.shape)


@register_notrace_function  # reason: picks in place vs out of place from requires_grad at run time
def residual_add(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``x + branch``, written into ``branch`` when no gradient is recorded (``branch`` must be a fresh tensor of
    the result's shape): inference then allocates no new map."""
    if x.requires_grad or branch.requires_grad or branch.shape != torch.broadcast_shapes(x.shape, branch.shape):
        return x + branch
    return branch.add_(x)


@register_notrace_function  # reason: picks in place vs out of place from requires_grad at run time
def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, in place when no gradient is recorded (``x`` must be a fresh tensor)."""
    if x.requires_grad:
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


@register_notrace_function  # reason: picks in place vs out of place from requires_grad at run time
def relu_fast(x: torch.Tensor) -> torch.Tensor:
    """ReLU, in place when no gradient is recorded (``x`` must be a fresh tensor)."""
    if x.requires_grad:
        return F.relu(x)
    return x.relu_()


def is_exact_gelu(act: nn.Module) -> bool:
    """True when ``act`` is ``nn.GELU`` with the exact (erf) formula, which :func:`gelu_fast` computes."""
    return type(act) is nn.GELU and act.approximate == 'none'


def activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)`` for a fresh ``x``, without calling ``act``: exact GELU through :func:`gelu_fast` and ``nn.ReLU``
    in place when no gradient is recorded for ``x``; any other activation as ``act(x)``."""
    if is_exact_gelu(act):
        return gelu_fast(x)
    if type(act) is nn.ReLU:
        return relu_fast(x)
    return act(x)


@register_notrace_function  # reason: picks a scratch buffer or a new tensor at run time
def linear_scratch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slot: str) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, written into the scratch buffer ``slot`` when no gradient is recorded.

    The result is then overwritten by the next user of ``slot``: the caller consumes it before returning.
    """
    if not scratch_active(x):
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    out = scratch(slot, (x2.shape[0], weight.shape[0]), x)
    if bias is None:
        torch.mm(x2, weight.t(), out=out)
    else:
        torch.addmm(bias, x2, weight.t(), out=out)
    return out.view(*x.shape[:-1], weight.shape[0])


@register_notrace_function  # reason: picks row blocks and scratch buffers at run time
def gelu_mlp_residual(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                      b2: torch.Tensor | None, residual: torch.Tensor, owns_residual: bool = False) -> torch.Tensor:
    """``residual + F.linear(gelu(F.linear(x, w1, b1)), w2, b2)`` (exact GELU) for ``x`` (..., K), ``residual``
    (..., N) with the same leading dims.

    In inference the rows go through in blocks of :data:`MLP_BLOCK_ROWS` (at most :data:`MLP_BLOCK_NUMBERS` hidden
    numbers): fc1 writes a block's hidden map into a scratch buffer, the GELU runs on it in place, and the block's
    shortcut plus fc2's bias, then fc2's GEMM, land in the output while it is still in the cache. Otherwise the
    hidden map is a whole tensor (:func:`linear_residual` adds the shortcut in fc2's GEMM).

    Args:
        owns_residual: The caller hands ``residual`` over (a fresh tensor nothing else sees, e.g. the block's own
            intermediate sum): in inference the result is accumulated into it, and no new map is allocated. ``x``
            may be ``residual`` itself: each row block is read by fc1 before its output rows are written.
    """
    n, hidden = w2.shape[0], w1.shape[0]
    if not (scratch_active(x) and residual.is_contiguous()) or residual.shape[:-1] != x.shape[:-1] \
            or residual.shape[-1] != n:
        return linear_residual(residual, gelu_fast(F.linear(x, w1, b1)), w2, b2)
    rows = x.reshape(-1, x.shape[-1])
    shortcut = residual.reshape(-1, n)
    out = shortcut if owns_residual else torch.empty_like(shortcut)
    total = rows.shape[0]
    block = min(total, max(256, min(MLP_BLOCK_ROWS, MLP_BLOCK_NUMBERS // hidden)))
    # the loop runs 1-30 times per call: its per-block Python and dispatch work is kept to the GEMMs and passes
    hidden_block, w1t, w2t = scratch('mlp.hidden', (block, hidden), x), w1.t(), w2.t()
    for start in range(0, total, block):
        stop = min(start + block, total)
        h = hidden_block if stop - start == block else hidden_block[:stop - start]
        if b1 is None:
            torch.mm(rows[start:stop], w1t, out=h)
        else:
            torch.addmm(b1, rows[start:stop], w1t, out=h)
        torch.ops.aten.gelu_(h)
        part = shortcut_plus_bias(shortcut[start:stop], b2, out[start:stop])
        torch.addmm(part, h, w2t, out=part)
    return out.view(residual.shape)


def shortcut_plus_bias(shortcut: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``out = shortcut + bias`` (``bias`` broadcast, or None), the start of an output a GEMM then accumulates onto;
    ``out`` may be ``shortcut`` itself (handed over by the caller), which then only gets the bias."""
    if bias is not None:
        return torch.add(shortcut, bias, out=out)
    return out if out is shortcut else out.copy_(shortcut)


def inactive_dropout(drop: nn.Module) -> bool:
    """True when ``drop`` is an identity or a dropout that does nothing now (p = 0 or eval mode)."""
    return isinstance(drop, nn.Identity) or (isinstance(drop, nn.Dropout) and (drop.p == 0 or not drop.training))


def mlp_fusable(mlp: nn.Module) -> bool:
    """True when :func:`mlp_residual` computes timm ``Mlp`` ``mlp`` with its own steps (and calls none of its
    modules): ``nn.Linear`` layers, exact GELU, no norm, no active dropout, no hooks on the module."""
    return isinstance(mlp.fc1, nn.Linear) and isinstance(mlp.fc2, nn.Linear) and is_exact_gelu(mlp.act) \
        and isinstance(mlp.norm, nn.Identity) and inactive_dropout(mlp.drop1) and inactive_dropout(mlp.drop2) \
        and not has_hooks(mlp)


def mlp_residual(mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor, owns_residual: bool = False) -> torch.Tensor:
    """``residual + mlp(x)`` for a timm ``Mlp`` (fc1, act, drop1, norm, fc2, drop2) of ``nn.Linear`` layers.

    When :func:`mlp_fusable` it runs as :func:`gelu_mlp_residual` (``owns_residual``: see there); any other
    configuration runs the module as it is.
    """
    if not mlp_fusable(mlp):
        return residual + mlp(x)
    return gelu_mlp_residual(x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias, residual, owns_residual)


# fx: mlp_residual is called from module forwards elsewhere; timm's autowrap only scans the globals of those
# forwards, so the leaves it calls here are wrapped by name in this module for every symbolic trace
for _fn in ('linear_residual', 'gelu_fast', 'relu_fast', 'linear_scratch', 'gelu_mlp_residual'):
    torch.fx.wrap(_fn)
