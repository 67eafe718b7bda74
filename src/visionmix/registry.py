"""One registry for every model visionmix offers, built on timm's.

visionmix's own families register into timm's registry (so ``timm.create_model('hire_mlp_tiny')`` works after
``import visionmix``) through :func:`register_visionmix_model`, which also records the family and the model card.
Classic architectures that timm or torchvision already implement well are *not* rewritten: they are listed here
as pass-through entries with a card, and :func:`create_model` builds them with their own library.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import timm
import torch
import torch.nn as nn
from timm.models import is_model as timm_is_model

__all__ = [
    'FAMILIES', 'MACS_COUNTER', 'ModelCard', 'register_visionmix_model', 'register_passthrough', 'create_model',
    'list_models', 'model_card', 'is_native', 'model_source', 'UnknownModelError', 'card_to_pretrained_fields',
]

FAMILIES = ('mlp', 'transformer', 'conv', 'hybrid', 'segmentation')
MACS_COUNTER = 'torch.utils.flop_counter.FlopCounterMode / 2, attention through the math SDPA path'
Source = Literal['visionmix', 'timm', 'torchvision']


@dataclass(frozen=True)
class ModelCard:
    """What we know, and what we proved, about one registered model.

    Attributes:
        name: Registry name.
        family: One of :data:`FAMILIES`.
        paper: Paper title.
        arxiv: arXiv id of the paper.
        code_url: Official code repository.
        code_commit: Commit of the official code the architecture and numbers were checked against.
        params: Parameter count at ``num_classes=1000`` (exact).
        gmacs: Multiply-accumulates (x 1e9) at ``input_size``, counted with ``macs_counter``.
        input_size: (C, H, W) the numbers refer to.
        top1: Published ImageNet-1k top-1 accuracy (%), ``None`` where none is published.
        top1_source: Where ``top1`` comes from.
        mean: Normalisation mean the weights expect.
        std: Normalisation std the weights expect.
        license: License of the official code / weights.
        verified: What our tests proved, e.g. ``"params exact, MACs -0.3%"``.
        source: Which library implements it: visionmix itself, timm or torchvision.
        paper_gmacs: GMACs printed in the paper's table, where it differs in kind from our counter.
        macs_counter: The counter behind ``gmacs``.
        notes: Anything a user must know (missing constructors, deviations, fixes over the official code).
    """

    name: str
    family: str
    paper: str
    arxiv: str | None
    code_url: str | None
    code_commit: str | None
    params: int
    gmacs: float | None
    input_size: tuple[int, int, int] = (3, 224, 224)
    top1: float | None = None
    top1_source: str = ''
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    license: str = ''
    verified: str = ''
    source: Source = 'visionmix'
    paper_gmacs: float | None = None
    macs_counter: str = MACS_COUNTER
    notes: str = ''

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f'card {self.name!r}: family {self.family!r} is not one of {FAMILIES}')

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UnknownModelError(ValueError):
    """Raised for a model name visionmix cannot build; the message lists the closest names."""


@dataclass
class _Entry:
    card: ModelCard
    builder: Callable[..., nn.Module] | None = None  # only for torchvision pass-throughs


_ENTRIES: dict[str, _Entry] = {}


def card_to_pretrained_fields(card: ModelCard) -> dict[str, Any]:
    """The card's facts that timm's ``PretrainedCfg`` has fields for, so ``model.pretrained_cfg`` carries them."""
    notes = [f'params={card.params}', f'gmacs={card.gmacs} ({card.macs_counter})', f'verified: {card.verified}']
    if card.top1 is not None:
        notes.append(f'top1={card.top1} ({card.top1_source})')
    if card.notes:
        notes.append(card.notes)
    return dict(
        paper_name=card.paper, paper_ids=f'arXiv:{card.arxiv}' if card.arxiv else None, origin_url=card.code_url,
        license=card.license or None, notes=tuple(notes), input_size=card.input_size, mean=card.mean, std=card.std,
    )


def register_visionmix_model(card: ModelCard) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator for a visionmix entry point: registers it in timm (never over a timm name) and records its card.

    Use it in place of timm's ``@register_model``; the entry point's name must equal ``card.name``.
    """

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name != card.name:
            raise ValueError(f'entry point {name!r} carries the card of {card.name!r}')
        if name in _ENTRIES:
            raise ValueError(f'{name!r} is already registered in visionmix')
        if timm_is_model(name):
            raise ValueError(f'{name!r} is already a timm model; visionmix never overwrites timm names')
        timm.models.register_model(fn)
        _ENTRIES[name] = _Entry(card=card)
        return fn

    return decorate


def register_passthrough(card: ModelCard, builder: Callable[..., nn.Module] | None = None) -> None:
    """Record a model implemented by timm (``builder=None``) or torchvision (``builder`` given)."""
    if card.name in _ENTRIES:
        raise ValueError(f'{card.name!r} is already registered in visionmix')
    if builder is None and not timm_is_model(card.name):
        raise ValueError(f'{card.name!r} is not a timm model (this timm version lacks it?)')
    _ENTRIES[card.name] = _Entry(card=card, builder=builder)


def _lookup(name: str) -> _Entry:
    entry = _ENTRIES.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_ENTRIES), n=5, cutoff=0.5)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise UnknownModelError(f'unknown model {name!r}.{hint} `visionmix models` lists all {len(_ENTRIES)} models.')
    return entry


def model_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of a registered model (raises :class:`UnknownModelError` with suggestions)."""
    return _lookup(name).card


def model_source(name: str) -> Source:
    return _lookup(name).card.source


def is_native(name: str) -> bool:
    """True for models that visionmix itself implements."""
    return model_source(name) == 'visionmix'


def list_models(pattern: str | None = None, family: str | None = None, source: Source | None = None) -> list[str]:
    """Sorted names of registered models.

    Args:
        pattern: Shell-style wildcard (``'hire_*'``); a plain word matches as a substring.
        family: Keep one family (``'mlp'``, ``'transformer'``, ``'conv'``, ``'hybrid'``, ``'segmentation'``).
        source: Keep models implemented by ``'visionmix'``, ``'timm'`` or ``'torchvision'``.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f'unknown family {family!r}; choose from {", ".join(FAMILIES)}')
    if source is not None and source not in ('visionmix', 'timm', 'torchvision'):
        raise ValueError(f'unknown source {source!r}; choose from visionmix, timm, torchvision')
    if pattern and not any(ch in pattern for ch in '*?['):
        pattern = f'*{pattern}*'
    names = []
    for name, entry in _ENTRIES.items():
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        if family and entry.card.family != family:
            continue
        if source and entry.card.source != source:
            continue
        names.append(name)
    return sorted(names)


def _check_kwargs(name: str, fn: Callable[..., nn.Module], kwargs: dict[str, Any], allowed: set[str]) -> None:
    """Reject kwargs a builder would silently swallow (timm entry points take ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = set(kwargs) - set(params) - allowed
    if unknown:
        raise TypeError(f'{name}: unexpected argument(s) {sorted(unknown)}; it accepts {sorted(set(params))}')


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build any registered model.

    Args:
        name: Registry name (see :func:`list_models`).
        pretrained: Load the official weights named in the model's ``pretrained_cfg``. Offline, pass
            ``pretrained_cfg_overlay=dict(file='weights.pth')`` to load the same weights from a local file.
        checkpoint_path: A local checkpoint (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) in our or the official
            key layout, loaded strictly after the model is built (see :func:`visionmix.load_checkpoint`).
        **kwargs: Passed to the builder (``num_classes``, ``in_chans``, ``drop_path_rate``, ``features_only``, ...).

    Raises:
        UnknownModelError: ``name`` is not registered; the message lists the closest names.
        TypeError: An argument the model does not take.
        RuntimeError: Pretrained weights could not be fetched or do not fit.
    """
    from .checkpoint import load_checkpoint, pretrained_error, safe_load_context  # checkpoint imports this module

    entry = _lookup(name)
    if entry.builder is not None:  # torchvision pass-through
        if pretrained:
            raise RuntimeError(f'{name}: use torchvision weights API or checkpoint_path= for torchvision models')
        _check_kwargs(name, entry.builder, kwargs, set())
        model = entry.builder(**kwargs)
    else:
        for key, value in kwargs.items():
            if key in ('num_classes', 'in_chans') and (not isinstance(value, int) or value < 0):
                raise ValueError(f'{name}: {key} must be a non-negative int, got {value!r}')
        try:
            with safe_load_context():  # timm reads pretrained files with weights_only=True too
                model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as e:
            raise TypeError(f'{name}: bad argument: {e}') from None
        except (OSError, ConnectionError) as e:
            raise pretrained_error(name, e) from None
        except RuntimeError as e:
            if pretrained and ('download' in str(e).lower() or 'url' in str(e).lower()):
                raise pretrained_error(name, e) from None
            raise
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, strict=True, filter_fn=checkpoint_filter_for(name))
    model.register_forward_pre_hook(functools.partial(_check_input, name, kwargs.get('in_chans', 3)))
    return model


def _check_input(name: str, in_chans: int, module: nn.Module, args: tuple) -> None:
    """Reject inputs of the wrong rank or channel count with one clear line, before any layer sees them."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name}: expected an image tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}')
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f'{name}: expected input of shape (B, {in_chans}, H, W), got {tuple(x.shape)}'
                         + (' (build the model with in_chans=... for other channel counts)' if x.ndim == 4 else ''))


def checkpoint_filter_for(name: str) -> Callable[[dict, nn.Module], dict] | None:
    """The per-family ``checkpoint_filter_fn`` that maps official key layouts to ours, if the family has one."""
    entry = _lookup(name)
    if entry.card.source != 'visionmix':
        return None
    module = inspect.getmodule(timm.models.model_entrypoint(name))
    return getattr(module, 'checkpoint_filter_fn', None)

