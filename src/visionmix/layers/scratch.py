"""Scratch buffers: temporaries that never leave a module, reused across calls in eager CPU inference.

Why: PyTorch's CPU allocator does not cache. A map of a few MB comes from the kernel fresh on every call (glibc
serves large blocks with ``mmap`` and gives them back on free), and the first write to each of its pages faults.
For the hidden map of an MLP block that costs about as much as the GELU over it: with the allocator told to keep its
memory (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``) Swin-MLP-Tiny ran 11% faster and Hire-MLP-Tiny 7%
(batch 8, 2 threads). A process-wide allocator setting is the user's call, not a library's; so the blocks write
their internal temporaries (hidden activations, rearranged and padded copies) into buffers kept here and
allocate only what they return.

Rules that make this safe:

* Buffers are handed out only while no gradient is recorded (autograd would save them for backward), nothing traces
  the model (:func:`visionmix.layers.fold.is_tracing`: a traced graph must allocate its own tensors), and on the CPU
  (CUDA's caching allocator already reuses memory).
* They are kept per thread, so models running in several threads never share one.
* A scratch tensor is never returned and never passed to or from a module call that someone observes: where a
  module or one inside it has forward hooks, or global hooks exist (:func:`has_hooks`), the code around it
  allocates as usual.
* A slot holds one live temporary: a caller consumes what it wrote into a slot before it returns, never returns it,
  and never calls code that uses the same slot while it still needs it. Slots are named by their user
  (``'mlp.hidden'``, ``'hire.*'``, ``'window.*'``, ``'token.hidden'``).
* A slot's buffer grows to the largest size asked for and is then kept: the memory of the largest temporary of each
  slot stays with the thread (:func:`scratch_bytes`: 29 MB for Hire-MLP-Tiny at batch 8 and 224 px, 58 MB for
  Swin-MLP-Tiny at 256 px, 3 MB for SPACH-MS-XXS-Conv). :func:`release_scratch` frees the calling thread's buffers.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
from torch.nn.modules import module as _module

from .fold import is_tracing

__all__ = ['scratch_active', 'scratch_disabled', 'has_hooks', 'scratch', 'release_scratch', 'scratch_bytes']

_local = threading.local()


def _buffers() -> dict[tuple[str, torch.dtype], torch.Tensor]:
    buffers = getattr(_local, 'buffers', None)
    if buffers is None:
        buffers = _local.buffers = {}
    return buffers


def scratch_active(like: torch.Tensor) -> bool:
    """True when a temporary shaped after ``like`` may live in a scratch buffer (see the module rules)."""
    # tracing first: under fx, ``like`` is a proxy whose attributes cannot be branched on
    return not is_tracing() and not torch.is_grad_enabled() and like.device.type == 'cpu' \
        and not getattr(_local, 'disabled', False)


@contextlib.contextmanager
def scratch_disabled() -> Iterator[None]:
    """Run without scratch buffers in this thread, hence without the inference-only steps built on them: models
    compute their plain formulation, as under autograd. :func:`visionmix.profile.count_macs` counts that arithmetic
    (the architecture's), not the fewer multiply-adds some inference steps need (e.g. Hire-MLP's projection folded
    into per-sample branch weights)."""
    previous = getattr(_local, 'disabled', False)
    _local.disabled = True
    try:
        yield
    finally:
        _local.disabled = previous


def has_hooks(module: nn.Module) -> bool:
    """True when a forward hook (global, or of ``module`` or a module inside it) would see what a call of ``module``
    takes or returns: such a call must not receive or return a scratch tensor, which the next call overwrites."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def scratch(slot: str, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` (``like``'s dtype) in this thread's buffer for ``slot``.

    Only call it when :func:`scratch_active` is true; the contents are overwritten by the next user of the slot.
    """
    numel = math.prod(int(size) for size in shape)
    key = (slot, like.dtype)
    buffers = _buffers()
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        del buffer  # drop the old block before allocating the larger one
        buffers.pop(key, None)
        # a normal tensor, not an inference tensor: it is also written to under no_grad outside inference_mode
        with torch.inference_mode(False):
            buffer = torch.empty(numel, dtype=like.dtype)
        buffers[key] = buffer
    return buffer[:numel].view(shape)


def release_scratch() -> None:
    """Free the calling thread's scratch buffers (they are allocated again when next needed)."""
    _buffers().clear()


def scratch_bytes() -> int:
    """Bytes held in the calling thread's scratch buffers."""
    return sum(b.numel() * b.element_size() for b in _buffers().values())
