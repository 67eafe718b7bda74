"""Small fused steps for eager CPU inference and training: fewer passes over the activation maps.

Each function computes exactly what its plain formulation computes (up to float rounding of a reordered sum) and is
an fx leaf, because it chooses its path at run time (in place only when no gradient is recorded, a fused GEMM only
on contiguous operands):

* :func:`linear_residual`: ``res + linear(x)``, the residual accumulated by the GEMM itself (``addmm`` with
  ``beta = 1``) instead of a bias broadcast into the output, a GEMM, and a separate add.
* :func:`residual_add`: ``x + branch``, in place into the fresh ``branch`` in inference.
* :func:`gelu_fast`: exact GELU, in place on a fresh tensor in inference.
* :func:`mlp_residual`: ``x + mlp(y)`` for timm's ``Mlp``: GELU in place, the residual added by fc2's GEMM.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ['linear_residual', 'residual_add', 'gelu_fast', 'mlp_residual']


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
    if out.requires_grad:
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


def _inactive(drop: nn.Module) -> bool:
    return isinstance(drop, nn.Identity) or (isinstance(drop, nn.Dropout) and (drop.p == 0 or not drop.training))


def mlp_residual(mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + mlp(x)`` for a timm ``Mlp`` (fc1, act, drop1, norm, fc2, drop2) of ``nn.Linear`` layers.

    With exact GELU, no norm and no active dropout, the GELU runs in place in inference and fc2's GEMM accumulates
    onto the residual (:func:`linear_residual`); any other configuration runs the module as it is.
    """
    fused = isinstance(mlp.fc1, nn.Linear) and isinstance(mlp.fc2, nn.Linear) and type(mlp.act) is nn.GELU \
        and mlp.act.approximate == 'none' and isinstance(mlp.norm, nn.Identity) and _inactive(mlp.drop1) \
        and _inactive(mlp.drop2)
    if not fused:
        return residual + mlp(x)
    h = gelu_fast(F.linear(x, mlp.fc1.weight, mlp.fc1.bias))
    return linear_residual(residual, h, mlp.fc2.weight, mlp.fc2.bias)


# fx: mlp_residual is called from module forwards elsewhere; timm's autowrap only scans the globals of those
# forwards, so the leaves it calls here are wrapped by name in this module for every symbolic trace
for _fn in ('linear_residual', 'gelu_fast'):
    torch.fx.wrap(_fn)
