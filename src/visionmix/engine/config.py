"""Training recipe: a named recipe chosen by the dataset, YAML files and ``key=value`` overrides.

Every dataset kind names the recipe that suits its data (:data:`RECIPES`): small embedded images are not trained
with the ImageNet recipe (RandAugment, flips and random erasing turn an 8x8 digit into another symbol). Precedence,
later wins: :class:`TrainConfig` defaults < the recipe (the dataset's, or ``recipe: NAME``) < programmatic base
values < the YAML file < ``--set`` overrides. The run's ``config.yaml`` records which recipe was used and why.
"""
from __future__ import annotations

import dataclasses
import platform
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..data import parse_spec
from ..errors import ConfigError
from ..sizes import Size, check_size, parse_size

__all__ = ['ConfigError', 'TrainConfig', 'load_config', 'parse_overrides', 'environment_info']


@dataclass
class TrainConfig:
    """One training run. Every field can be set in YAML or with ``--set key=value``.

    The class defaults are the ``imagenet`` recipe: DeiT / SPACH parts (AdamW, wd 0.05, cosine, RandAugment m9,
    random erasing 0.25, label smoothing 0.1, flips) at a learning rate and warm-up for a short CPU run; a dataset
    kind's own recipe (:data:`RECIPES`) replaces what it needs to.
    """

    model: str = 'spach_ms'
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = 'digits'
    img_size: Size = 32  # N or [H, W]
    limit_train: int | None = None
    skip_corrupt: bool = False
    epochs: int = 30
    batch_size: int = 64
    # optimizer / schedule
    opt: str = 'adamw'
    lr: float = 1e-3
    weight_decay: float = 0.05
    sched: str = 'cosine'
    warmup_epochs: int = 2
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: float | None = None
    clip_mode: str = 'norm'
    # regularisation / augmentation
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    auto_augment: str | None = 'rand-m9-mstd0.5-inc1-mmax9'  # mmax9: Pillow>=10 refuses posterize to 0 bits (m10)
    reprob: float = 0.25
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    interpolation: str = 'bicubic'
    drop_path: float = 0.0
    model_ema: bool = False
    model_ema_decay: float = 0.999
    # BatchNorm statistics recomputed after each epoch over this many training images (0: off). Short runs need
    # it: running averages lag weights that still move fast (Mobile-Former's head BN after 2 epochs: 12% top-1
    # with them, 83% with batch statistics), and the recomputed ones are exact for the weights at hand
    precise_bn: int = 0
    # machinery
    seed: int = 0
    threads: int | None = None
    workers: int = 0
    channels_last: bool = False
    compile: bool | str = False  # True: torch.compile's default backend (inductor); or a backend name
    amp: bool = False
    output: str = 'runs/train'
    save_best: bool = True
    # validate after every N-th epoch and after the last one; the epochs in between record NaN val metrics, and
    # best.safetensors is the best validated epoch. Detection evaluation can cost a third of a short CPU run
    eval_every: int = 1
    recipe: str = ''  # the named recipe under the explicit values (default: the dataset's); set by load_config
    init_checkpoint: str | None = None  # fine-tune: start from these weights (a file or a run dir), head adapted
    pretrained: bool = False  # fine-tune: start from the model's published weights

    def validate(self) -> 'TrainConfig':
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(isinstance(self.model, str) and self.model != '', f'model must be a registered name, got {self.model!r}')
        need(isinstance(self.model_kwargs, dict), f'model_kwargs must be a mapping, got {self.model_kwargs!r}')
        self.img_size = check_size(self.img_size)
        for name in ('epochs', 'batch_size', 'eval_every'):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f'{name} must be a positive integer, '
                 f'got {v!r}')
        for name in ('warmup_epochs', 'workers', 'seed', 'precise_bn'):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f'{name} must be an integer >= 0, '
                 f'got {v!r}')
        for name in ('lr', 'weight_decay', 'warmup_lr', 'min_lr', 'smoothing', 'mixup', 'cutmix', 'reprob',
                     'drop_path', 'hflip', 'mixup_prob', 'model_ema_decay'):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                 f'{name} must be a number >= 0, got {v!r}')
        need(self.lr > 0, f'lr must be > 0, got {self.lr!r}')
        need(self.smoothing < 1, f'smoothing must be < 1, got {self.smoothing!r}')
        for name in ('hflip', 'reprob', 'mixup_prob', 'model_ema_decay'):
            need(getattr(self, name) <= 1, f'{name} must be <= 1, got {getattr(self, name)!r}')
        need(self.clip_grad is None or (isinstance(self.clip_grad, (int, float)) and self.clip_grad > 0),
             f'clip_grad must be > 0 or null, got {self.clip_grad!r}')
        need(self.threads is None or (isinstance(self.threads, int) and self.threads > 0),
             f'threads must be a positive integer or null, got {self.threads!r}')
        need(self.limit_train is None or (isinstance(self.limit_train, int) and self.limit_train > 0),
             f'limit_train must be a positive integer or null, got {self.limit_train!r}')
        for name in ('scale', 'ratio'):
            v = getattr(self, name)
            need(isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
                 and 0 < v[0] <= v[1], f'{name} must be [low, high] with 0 < low <= high, got {v!r}')
            setattr(self, name, tuple(float(x) for x in v))
        need(self.sched in ('cosine', 'step', 'multistep', 'plateau', 'tanh', 'poly', 'none'),
             f'unknown sched {self.sched!r}')
        need(isinstance(self.compile, (bool, str)),
             f'compile must be true, false or a torch.compile backend name, got {self.compile!r}')
        if isinstance(self.compile, str):
            backends = compile_backends()
            need(self.compile in backends,
                 f'unknown compile backend {self.compile!r}; torch.compile knows {", ".join(backends)}')
        parse_spec(self.dataset)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['scale'], d['ratio'] = list(self.scale), list(self.ratio)
        if isinstance(self.img_size, tuple):
            d['img_size'] = list(self.img_size)
        return d


_SMALL_IMAGES = dict(
    epochs=10, batch_size=64, lr=3e-3, warmup_epochs=1, min_lr=1e-5, smoothing=0.1, mixup=0.0, cutmix=0.0,
    auto_augment=None, reprob=0.0, scale=[0.6, 1.0], ratio=[0.9, 1.1], hflip=0.0, drop_path=0.0, precise_bn=512)
# name -> (why, values). The values are TrainConfig keys; 'imagenet' is the class defaults themselves.
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    'imagenet': ('photos at ImageNet-like sizes: the DeiT / SPACH augmentation (RandAugment, flips, random erasing)',
                 {}),
    'small-images': ('small embedded images (digits, shapes): no RandAugment, flips or erasing (a mirrored digit is '
                     'another symbol), a mild random crop, lr 3e-3 with a 1-epoch warm-up', _SMALL_IMAGES),
    'small-photos': ('32x32 photos (CIFAR): the small-image recipe with horizontal flips',
                     dict(_SMALL_IMAGES, hflip=0.5)),
    'instance': ('detection data: batch 4 (a detector learns per update), horizontal flip of image, boxes and masks '
                 'together, AdamW lr 1e-3, no label smoothing, 128 px images',
                 dict(epochs=12, batch_size=4, lr=1e-3, warmup_epochs=1, img_size=128, smoothing=0.0,
                      auto_augment=None, reprob=0.0, hflip=0.5, mixup=0.0, cutmix=0.0)),
    'refinement': ('BPR boundary patches: flips and photometric jitter of the patch, 64 px input, no label smoothing',
                   dict(epochs=8, batch_size=16, lr=2e-3, warmup_epochs=1, img_size=64, smoothing=0.0,
                        auto_augment=None, reprob=0.0, hflip=0.5, mixup=0.0, cutmix=0.0, precise_bn=256)),
    'segmentation': ('masks: random resized crop and flip of image and mask together; no label smoothing',
                     dict(epochs=10, batch_size=16, lr=2e-3, warmup_epochs=1, smoothing=0.0, auto_augment=None,
                          reprob=0.0, scale=[0.5, 1.0], ratio=[0.75, 1.333], hflip=0.5, mixup=0.0, cutmix=0.0,
                          precise_bn=256)),
}


def recipe_for(dataset: str, name: str = '') -> tuple[str, str, dict[str, Any]]:
    """(name, why, values) of the recipe ``name``, or of the dataset kind's recipe when ``name`` is empty."""
    if not name:
        name = parse_spec(dataset)[0].recipe
    if name not in RECIPES:
        raise ConfigError(f'unknown recipe {name!r}; choose from {", ".join(RECIPES)}')
    why, values = RECIPES[name]
    return name, why, dict(values)


def compile_backends() -> list[str]:
    """Backend names ``torch.compile(backend=...)`` accepts here, debug ones included ('eager', 'aot_eager')."""
    import torch._dynamo  # slow to import: only when a backend is named

    return [b for b in torch._dynamo.list_backends(exclude_tags=()) if 'TESTING_ONLY' not in b]


_FIELDS = {f.name for f in fields(TrainConfig)}


def _check_keys(data: dict[str, Any], where: str) -> None:
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f'{where}: unknown key(s) {unknown}; known keys: {", ".join(sorted(_FIELDS))}')


def _coerce(key: str, value: Any) -> Any:
    """YAML gives ints for '1e-3'-free literals; accept ints where floats are expected."""
    default = TrainConfig.__dataclass_fields__[key].default
    if key == 'img_size' and isinstance(value, str):
        return parse_size(value)  # 'img_size: 32x48' in YAML, or --set img_size=32x48
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):
        try:
            return float(value)  # yaml.safe_load reads '1e-3' (no dot) as a string
        except ValueError:
            pass
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f'cannot read config {path}: {e.strerror or e}') from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f'config {path} is not valid YAML: {str(e).splitlines()[0]}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'config {path} must be a mapping of key: value, got {type(data).__name__}')
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``['lr=1e-3', 'model_kwargs={embed_dim: 16}']`` -> dict, values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'override {item!r} must look like key=value')
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f'override {item!r}: value is not valid YAML ({str(e).splitlines()[0]})') from None
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, **base: Any) -> TrainConfig:
    """Defaults < the recipe < ``base`` < YAML file < ``overrides`` (later wins), validated.

    The recipe is ``recipe`` if one of the sources names it, else the dataset kind's (see :data:`RECIPES`).
    """
    data: dict[str, Any] = dict(base)
    if path is not None:
        file_data = read_yaml(path)
        _check_keys(file_data, str(path))
        data.update(file_data)
    if overrides:
        _check_keys(overrides, 'override')
        data.update(overrides)
    _check_keys(data, 'config')
    name, _, values = recipe_for(data.get('dataset', TrainConfig.dataset), data.get('recipe') or '')
    data = {**values, **data, 'recipe': name}
    try:
        cfg = TrainConfig(**{k: _coerce(k, v) for k, v in data.items()})
    except TypeError as e:
        raise ConfigError(f'bad config: {e}') from None
    return cfg.validate()


def environment_info() -> dict[str, Any]:
    """Git revision of the visionmix checkout (when there is one) and library versions, for the run record."""
    import numpy
    import timm
    import torch
    import torchvision

    from .. import __version__

    rev = None
    try:
        repo = Path(__file__).resolve().parents[3]
        out = subprocess.run(['git', '-C', str(repo), 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            rev = out.stdout.strip()
            dirty = subprocess.run(['git', '-C', str(repo), 'status', '--porcelain', '-uno'], capture_output=True,
                                   text=True, timeout=5)
            if dirty.returncode == 0 and dirty.stdout.strip():
                rev += '-dirty'
    except (OSError, subprocess.SubprocessError):
        pass
    info = dict(git_revision=rev, visionmix=__version__, torch=torch.__version__, timm=timm.__version__,
                torchvision=torchvision.__version__, numpy=numpy.__version__, python=platform.python_version(),
                platform=platform.platform())
    return {k: None if v is None else str(v) for k, v in info.items()}
