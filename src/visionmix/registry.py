"""One registry for every model visionmix offers, built on timm's.

Four kinds of names resolve here, in this order:

* visionmix's own families, registered into timm's registry (so ``timm.create_model('hire_mlp_tiny')`` works after
  ``import visionmix``) through :func:`register_visionmix_model`, with a curated card;
* curated pass-throughs: classic architectures that timm or torchvision implement well, with a curated card
  (:func:`register_passthrough`);
* composite specs ``PREFIX:REST`` (``tv:googlenet``, ``fpn:hire_mlp_tiny``, ``maskrcnn:resnet50``...): each prefix is
  registered by the module that builds it (:func:`register_composite`), so this module never imports them;
* any other timm name, with a generic card (params measured, paper and url from timm's pretrained_cfg);
* presets: a name for a model with fixed builder arguments (``SPACH-Conv``, the default study's models), registered
  with :func:`register_preset` and looked up case-insensitively.

:func:`list_models` lists the curated set; ``list_models(include_all=True)`` every timm and torchvision name too.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, Literal

import timm
import torch
import torch.nn as nn
from timm.models import is_model as timm_is_model

from . import checkpoint
from .errors import CheckpointError, UnknownModelError, VisionmixError

__all__ = [
    'FAMILIES', 'MACS_COUNTER', 'ModelCard', 'ModelArgumentError', 'UnknownModelError', 'Composite',
    'register_visionmix_model', 'register_passthrough', 'register_composite', 'create_model', 'list_models',
    'model_card', 'card_to_pretrained_fields', 'checkpoint_filter_for', 'load_checkpoint', 'takes_img_size',
    'composite_prefixes', 'register_preset', 'list_presets', 'register_timm_option',
]

# 'other': a timm / torchvision name whose family visionmix has not classified (generic cards only)
FAMILIES = ('mlp', 'transformer', 'conv', 'hybrid', 'segmentation', 'detection', 'other')
MACS_COUNTER = 'torch.utils.flop_counter.FlopCounterMode / 2, attention through the math SDPA path'
_FAMILY_TASKS = {'segmentation': 'segmentation', 'detection': 'instance'}
Source = Literal['visionmix', 'timm', 'torchvision']
SOURCES = ('visionmix', 'timm', 'torchvision')


class ModelArgumentError(VisionmixError, TypeError):
    """A keyword argument a model does not take, or takes with another type (a ``TypeError`` too, as Python's)."""


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
        curated: False for the generic cards of timm / torchvision names visionmix has not reviewed.
        task: What the model is trained for (``'classification'``, ``'segmentation'``, ``'instance'``, ...); by
            default the family's: segmentation models segment, detection models find instances, the rest classify.
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
    curated: bool = True
    task: str = ''

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f'card {self.name!r}: family {self.family!r} is not one of {FAMILIES}')
        if not self.task:  # frozen: set through object.__setattr__, once, at construction
            object.__setattr__(self, 'task', _FAMILY_TASKS.get(self.family, 'classification'))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Entry:
    card: ModelCard
    builder: Callable[..., nn.Module] | None = None  # None: timm.create_model(card.name)
    module: ModuleType | None = None  # a native family's module, whose checkpoint_filter_fn maps official layouts
    composite_filter: checkpoint.FilterFn | None = None
    check_input: bool = True  # a pre-hook rejects wrong channel counts / ranks (off for detectors' image lists)
    preset: tuple[str, dict[str, Any]] | None = None  # (model, kwargs) this name stands for
    # a preset's parameter count, filled in on the first card lookup: counting builds the model, which would make
    # every `import visionmix` pay for all presets
    count_params: Callable[[], int] | None = None

    @property
    def filter_fn(self) -> checkpoint.FilterFn | None:
        if self.module is not None:
            return getattr(self.module, 'checkpoint_filter_fn', None)
        return self.composite_filter


@dataclass(frozen=True)
class Composite:
    """A family of names ``PREFIX:REST`` built by one module (``tv:`` torchvision, ``fpn:`` decoders, ...).

    Attributes:
        prefix: The part before the first ``:``.
        resolve: ``resolve(rest) -> (card, builder)``; raises :class:`UnknownModelError` for a ``rest`` it cannot
            build (naming what works). ``builder(**kwargs)`` builds the model.
        help: One line for ``visionmix models`` and error messages, e.g. ``'fpn:BACKBONE (SMP FPN decoder)'``.
        check_input: Whether the built model takes one (B, C, H, W) tensor (a pre-hook checks it).
        filter_fn: Maps foreign checkpoint layouts to the built model's (optional).
        names: Lists every ``REST`` when the family is finite (``tv:``), for ``list_models(include_all=True)``.
        source: The library that implements the built models.
    """

    prefix: str
    resolve: Callable[[str], tuple[ModelCard, Callable[..., nn.Module]]]
    help: str
    check_input: bool = True
    filter_fn: checkpoint.FilterFn | None = None
    names: Callable[[], list[str]] | None = None
    source: Source = 'visionmix'


_ENTRIES: dict[str, _Entry] = {}
_COMPOSITES: dict[str, Composite] = {}
_PRESETS: dict[str, str] = {}  # lower-case name -> registered name
# keyword -> apply(model, value, other kwargs): options visionmix adds to timm-built models (timm would refuse them)
_TIMM_OPTIONS: dict[str, Callable[[nn.Module, Any, dict[str, Any]], nn.Module]] = {}


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

    Use it in place of timm's ``@register_model``; the entry point's name must equal ``card.name``. The family's
    ``checkpoint_filter_fn`` (a module-level function of the entry point's module) maps official layouts.
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
        _ENTRIES[name] = _Entry(card=card, module=inspect.getmodule(fn))
        return fn

    return decorate


def register_passthrough(card: ModelCard, builder: Callable[..., nn.Module] | None = None) -> None:
    """Record a curated model implemented by timm (``builder=None``) or torchvision (``builder`` given)."""
    if card.name in _ENTRIES:
        raise ValueError(f'{card.name!r} is already registered in visionmix')
    if builder is None and not timm_is_model(card.name):
        raise ValueError(f'{card.name!r} is not a timm model (this timm version lacks it?)')
    _ENTRIES[card.name] = _Entry(card=card, builder=builder)


def register_composite(composite: Composite) -> None:
    """Make ``composite.prefix + ':' + REST`` names resolvable everywhere a model name is accepted."""
    if composite.prefix in _COMPOSITES:
        raise ValueError(f'composite prefix {composite.prefix!r} is already registered')
    if ':' in composite.prefix or not composite.prefix:
        raise ValueError(f'bad composite prefix {composite.prefix!r}')
    _COMPOSITES[composite.prefix] = composite


def register_preset(name: str, model: str, kwargs: dict[str, Any], description: str = '',
                    family: str | None = None) -> None:
    """A name for ``model`` built with ``kwargs`` (the caller's arguments win), usable wherever a model name is.

    Presets are visionmix-only (not registered in timm); their card is the base model's with the preset's name, and
    its params / GMACs are cleared unless measured for the preset itself.
    """
    if name.lower() in _PRESETS or name in _ENTRIES or timm_is_model(name):
        raise ValueError(f'{name!r} is already a model name')
    base = _lookup(model).card
    notes = f'preset: {model} with {kwargs}' + (f'; {description}' if description else '')
    card = dataclasses.replace(base, name=name, family=family or base.family, params=None, gmacs=None,
                               paper_gmacs=None, top1=None, top1_source='not measured for the preset', notes=notes)
    _ENTRIES[name] = _Entry(card=card, preset=(model, dict(kwargs)),
                            count_params=lambda: count_parameters(lambda: create_model(model, **kwargs)))
    _PRESETS[name.lower()] = name


def list_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """Preset name -> (model, kwargs)."""
    return {name: _ENTRIES[name].preset for name in _PRESETS.values()}


def register_timm_option(name: str, apply: Callable[[nn.Module, Any, dict[str, Any]], nn.Module]) -> None:
    """Accept ``name=`` for timm-built models (pass-throughs and generic timm names): timm builds the model without
    it, then ``apply(model, value, kwargs)`` returns the model with the option applied (e.g. ``dilation='hdc'``)."""
    if name in _TIMM_OPTIONS:
        raise ValueError(f'timm option {name!r} is already registered')
    _TIMM_OPTIONS[name] = apply


def composite_prefixes() -> dict[str, str]:
    """Registered composite prefixes and their one-line help."""
    return {p: c.help for p, c in sorted(_COMPOSITES.items())}


# ------------------------------------------------------------------------------------------- generic timm cards

# timm module -> family for the families that are not convolutional; every other timm module is conv unless listed
# in _OTHER_MODULES. A generic card says the family was inferred.
_TIMM_FAMILIES = {
    'transformer': ('beit', 'cait', 'crossvit', 'deepseek_vit', 'deit', 'eva', 'gemma4_vit', 'hiera', 'hieradet_sam2',
                    'mvitv2', 'naflexvit', 'nest', 'pit', 'qwen3_vit', 'swin_transformer', 'swin_transformer_v2',
                    'swin_transformer_v2_cr', 'tnt', 'twins', 'vision_transformer', 'vision_transformer_relpos',
                    'vision_transformer_sam', 'volo', 'xcit'),
    'mlp': ('mlp_mixer',),
    'hybrid': ('coat', 'convit', 'davit', 'edgenext', 'efficientformer', 'efficientformer_v2', 'efficientvit_mit',
               'efficientvit_msra', 'fastvit', 'gcvit', 'iformer', 'levit', 'lowformer', 'maxxvit', 'metaformer',
               'mobilevit', 'nextvit', 'shvit', 'swiftformer', 'tiny_vit', 'vision_transformer_hybrid', 'visformer',
               'vitamin'),
}
_OTHER_MODULES = ('mambaout', 'efficientvim', 'sequencer', 'csatv2')
_MODULE_FAMILY = {m: family for family, modules in _TIMM_FAMILIES.items() for m in modules}


def _timm_family(name: str) -> str:
    module = timm.models.model_entrypoint(name).__module__.rsplit('.', 1)[-1]
    return 'other' if module in _OTHER_MODULES else _MODULE_FAMILY.get(module, 'conv')


def count_parameters(build: Callable[[], nn.Module]) -> int:
    """Parameters of ``build()``, built on the meta device (no memory, no init cost) where the model allows."""
    try:
        with torch.device('meta'):
            model = build()
    except (NotImplementedError, RuntimeError):  # an init that reads values (e.g. .item()) cannot run on meta
        model = build()
    return sum(p.numel() for p in model.parameters())


def _pretrained_facts(cfg: Any) -> dict[str, Any]:
    get = (lambda k: getattr(cfg, k, None)) if cfg is not None else (lambda k: None)
    ids = get('paper_ids') or ''
    arxiv = next((part.split(':', 1)[1] for part in str(ids).split(',') if part.strip().startswith('arXiv:')), None)
    size = tuple(get('input_size') or (3, 224, 224))
    return dict(paper=get('paper_name') or (f'see {ids}' if ids else 'not recorded by timm'), arxiv=arxiv,
                code_url=get('origin_url') or 'https://github.com/huggingface/pytorch-image-models',
                input_size=size if len(size) == 3 else (3, 224, 224), license=get('license') or 'see timm',
                mean=tuple(get('mean') or (0.485, 0.456, 0.406)), std=tuple(get('std') or (0.229, 0.224, 0.225)))


@functools.lru_cache(maxsize=None)
def _timm_entry(name: str) -> _Entry:
    facts = _pretrained_facts(timm.models.get_pretrained_cfg(name))
    card = ModelCard(
        name=name, family=_timm_family(name), code_commit=f'timm {timm.__version__}',
        params=count_parameters(lambda: timm.create_model(name)), gmacs=None, top1_source='not recorded',
        verified='generic card: params measured (meta device), nothing else checked by visionmix', source='timm',
        notes='timm model not curated by visionmix; family inferred from its timm module', curated=False, **facts)
    return _Entry(card=card)


# ------------------------------------------------------------------------------------------------------- lookup

def _suggestions(name: str) -> str:
    curated = difflib.get_close_matches(name, list(_ENTRIES), n=5, cutoff=0.5)
    if len(curated) < 5:  # then the rest of timm, curated names first
        curated += [n for n in difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
                    if n not in curated][:5 - len(curated)]
    return f' Did you mean: {", ".join(curated)}?' if curated else ''


def _lookup(name: str) -> _Entry:
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f'a model name must be a non-empty string, got {name!r}')
    entry = _ENTRIES.get(name) or _ENTRIES.get(_PRESETS.get(name.lower(), ''))
    if entry is not None:
        return entry
    prefix, sep, rest = name.partition(':')
    if prefix in _COMPOSITES:  # a bare prefix ('bpr') is the composite's default: 'bpr:'
        return _composite_entry(f'{prefix}:{rest}')
    if timm_is_model(name):
        return _timm_entry(name)
    specs = ', '.join(f'{p}:NAME' for p in sorted(_COMPOSITES))
    raise UnknownModelError(f'unknown model {name!r}.{_suggestions(name)} `visionmix models` lists the curated '
                            f'models, `visionmix models --all` every timm / torchvision name'
                            + (f'; composite specs: {specs}' if specs else '') + '.')


@functools.lru_cache(maxsize=256)
def _composite_entry(name: str) -> _Entry:
    composite = _COMPOSITES[name.partition(':')[0]]
    card, builder = composite.resolve(name.partition(':')[2])
    return _Entry(card=card, builder=builder, composite_filter=composite.filter_fn, check_input=composite.check_input)


def model_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of a model name (raises :class:`UnknownModelError` with suggestions)."""
    entry = _lookup(name)
    if entry.count_params is not None:
        entry.card = dataclasses.replace(entry.card, params=entry.count_params())
        entry.count_params = None
    return entry.card


def list_models(pattern: str | None = None, family: str | None = None, source: Source | None = None,
                include_all: bool = False) -> list[str]:
    """Sorted model names: the curated set, or with ``include_all`` every timm name and ``tv:`` torchvision name.

    Args:
        pattern: Shell-style wildcard (``'hire_*'``); a plain word matches as a substring.
        family: Keep one family (``'mlp'``, ``'transformer'``, ``'conv'``, ``'hybrid'``, ``'segmentation'``, ...).
        source: Keep models implemented by ``'visionmix'``, ``'timm'`` or ``'torchvision'``.
        include_all: Add every name timm and torchvision know (their families inferred, cards built on demand).
    """
    if family is not None and family not in FAMILIES:
        raise VisionmixError(f'unknown family {family!r}; choose from {", ".join(FAMILIES)}')
    if source is not None and source not in SOURCES:
        raise VisionmixError(f'unknown source {source!r}; choose from {", ".join(SOURCES)}')
    if pattern and not any(ch in pattern for ch in '*?['):
        pattern = f'*{pattern}*'
    found = {name: (e.card.family, e.card.source) for name, e in _ENTRIES.items() if e.preset is None}
    if include_all:
        for name in timm.list_models():
            found.setdefault(name, (None, 'timm'))
        for prefix, composite in _COMPOSITES.items():
            for rest in composite.names() if composite.names else ():
                found.setdefault(f'{prefix}:{rest}', (None, composite.source))
    names = []
    for name, (fam, src) in found.items():
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        if source and src != source:
            continue
        if family and (fam or model_family(name)) != family:
            continue
        names.append(name)
    return sorted(names)


def model_family(name: str) -> str:
    """The family of any name, without building a generic card (for filtering long lists)."""
    if name in _ENTRIES:
        return _ENTRIES[name].card.family
    if timm_is_model(name) and ':' not in name:
        return _timm_family(name)
    return model_card(name).family


# --------------------------------------------------------------------------------------------------- building

def _check_kwargs(name: str, fn: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Reject kwargs a builder would silently swallow (timm entry points take ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = set(kwargs) - set(params)
    if unknown:
        raise ModelArgumentError(f'{name}: unexpected argument(s) {sorted(unknown)}; it accepts {sorted(params)}')


def _build_timm(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(name)
        overlay = kwargs.get('pretrained_cfg_overlay') or {}
        if not any(getattr(cfg, k, None) or overlay.get(k) for k in ('url', 'hf_hub_id', 'file', 'state_dict')):
            raise CheckpointError(f'{name}: no pretrained weights are published for it; build it with '
                                  f'pretrained=False or give checkpoint_path=')
    try:
        with checkpoint.safe_load_context():  # timm reads pretrained files with weights_only=True too
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise ModelArgumentError(f'{name}: bad argument: {e}') from None
    except OSError as e:  # a failed download: URLError, huggingface_hub's LocalEntryNotFoundError, ...
        raise checkpoint.pretrained_error(name, e) from None


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build any model name: ours, a curated pass-through, a composite spec, or any timm name.

    Args:
        name: A name from :func:`list_models` (``include_all=True`` for every one), or a composite spec such as
            ``tv:resnet18``.
        pretrained: Load the official weights named in the model's ``pretrained_cfg``. Offline, pass
            ``pretrained_cfg_overlay=dict(file='weights.pth')`` to load the same weights from a local file.
        checkpoint_path: A local checkpoint (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) in our or the official
            key layout, loaded strictly after the model is built; a checkpoint with another ``num_classes`` or
            ``in_chans`` is adapted (fresh head, first conv as timm adapts it), which is what fine-tuning asks for.
        **kwargs: Passed to the builder (``num_classes``, ``in_chans``, ``drop_path_rate``, ``features_only``, ...).

    Raises:
        UnknownModelError: ``name`` is not known; the message lists the closest names.
        ModelArgumentError: An argument the model does not take (also a ``TypeError``).
        CheckpointError: Weights that could not be fetched, read or fitted.
    """
    entry = _lookup(name)
    if entry.preset is not None:
        model, preset_kwargs = entry.preset
        return create_model(model, pretrained, checkpoint_path, **{**preset_kwargs, **kwargs})
    for key in ('num_classes', 'in_chans'):
        value = kwargs.get(key)
        if key in kwargs and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ModelArgumentError(f'{name}: {key} must be a non-negative int, got {value!r}')
    if entry.builder is not None:
        if pretrained:
            raise CheckpointError(f'{name}: pretrained=True is not supported for it; give checkpoint_path= instead')
        _check_kwargs(name, entry.builder, kwargs)
        try:
            model = entry.builder(**kwargs)
        except TypeError as e:
            raise ModelArgumentError(f'{name}: bad argument: {e}') from None
    else:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _TIMM_OPTIONS and entry.module is None}
        model = _build_timm(name, pretrained, kwargs)
        for key, value in options.items():
            model = _TIMM_OPTIONS[key](model, value, kwargs)
    if checkpoint_path is not None:
        checkpoint.load_checkpoint(model, checkpoint_path, strict=True, filter_fn=entry.filter_fn, adapt=True)
    if entry.check_input:
        model.register_forward_pre_hook(functools.partial(_check_input, name, kwargs.get('in_chans', 3)))
    return model


def _check_input(name: str, in_chans: int, module: nn.Module, args: tuple) -> None:
    """Reject inputs of the wrong rank or channel count with one clear line, before any layer sees them."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        raise ModelArgumentError(f'{name}: expected an image tensor of shape (B, {in_chans}, H, W), got '
                                 f'{type(x).__name__}')
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise VisionmixError(f'{name}: expected input of shape (B, {in_chans}, H, W), got {tuple(x.shape)}'
                             + (' (build the model with in_chans=... for other channel counts)' if x.ndim == 4
                                else ''))


@functools.lru_cache(maxsize=None)
def takes_img_size(name: str) -> bool:
    """Whether ``create_model(name, img_size=...)`` is accepted: models sized at build time (ViT, token MLPs, ...).

    Decided by building on the meta device (cheap): a model that rejects the keyword raises a TypeError there.
    """
    entry = _lookup(name)
    if entry.preset is not None:
        return takes_img_size(entry.preset[0])
    if entry.builder is not None:
        params = inspect.signature(entry.builder).parameters
        return 'img_size' in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    try:
        with torch.device('meta'):
            timm.create_model(name, img_size=224)
    except TypeError:
        return False
    except (NotImplementedError, RuntimeError):  # meta cannot run this init: assume the usual timm contract
        return 'img_size' in inspect.signature(type(timm.create_model(name)).__init__).parameters
    return True


# ------------------------------------------------------------------------------------------------ checkpoints

def checkpoint_filter_for(name: str) -> checkpoint.FilterFn | None:
    """The filter that maps official key layouts to the model ``name`` builds, if its family has one."""
    entry = _lookup(name)
    return checkpoint_filter_for(entry.preset[0]) if entry.preset is not None else entry.filter_fn


def load_checkpoint(model: nn.Module, path: Any, strict: bool = True, use_ema: bool = True,
                    adapt: bool = False) -> nn.Module:
    """:func:`visionmix.checkpoint.load_checkpoint` with the model family's official-layout filter.

    The family is found through ``model.pretrained_cfg['architecture']`` (set by every registered model).
    ``strict`` means strict: a head or first conv of another shape is an error unless ``adapt=True``.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture') if isinstance(cfg, Mapping) else None
    entry = _ENTRIES.get(arch) if arch else None
    return checkpoint.load_checkpoint(model, path, strict=strict, filter_fn=entry.filter_fn if entry else None,
                                      use_ema=use_ema, adapt=adapt)
