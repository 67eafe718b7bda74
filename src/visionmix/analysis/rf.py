"""Receptive fields you can look at: exact coverage of dilated stacks and empirical effective receptive fields.

* :func:`coverage_report` / :func:`plot_coverage`: how often each input pixel feeds the centre output of stacked
  dilated convolutions (:mod:`visionmix.dilation`), with the HDC verdict.
* :func:`effective_receptive_field` / :func:`erf_report` / :func:`plot_erfs`: the empirical effective receptive
  field (ERF) of Luo et al., NeurIPS 2016, "Understanding the Effective Receptive Field in Deep Convolutional
  Neural Networks": the mean absolute input gradient of the centre unit of a model's last feature map.

Functions return plain data (dicts, lists, numpy arrays) and write plots, so a command line can print or save them.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..dilation import coverage, hdc_check, holes
from ..errors import ConfigError, VisionmixError, first_line
from ..registry import create_model, takes_img_size
from ..reporting import pyplot

__all__ = [
    'coverage_report', 'plot_coverage', 'last_feature_map', 'effective_receptive_field', 'feature_center',
    'erf_stats', 'erf_report', 'to_json', 'plot_erfs', 'NoSpatialMapError',
]

_NUMBERS_MAX_SIDE = 41  # beyond this the digits in the cells become unreadable: draw a heat map instead
_CHUNK = 4  # images per backward pass: keeps activation memory small for big models
_REL_THRESHOLD = 1e-6


def coverage_report(rates: Sequence[int], kernel_size: int = 3) -> dict[str, Any]:
    """The HDC verdict and the exact coverage map of stacked dilated ``k x k`` convolutions, as JSON-ready data.

    Args:
        rates: Dilation rates, bottom layer first, e.g. ``[1, 2, 5]``.
        kernel_size: Odd kernel side.

    Returns:
        ``rates``, ``kernel_size``, ``m`` (``M_1 .. M_n``, see :class:`visionmix.dilation.HDCCheck`), ``m_paper``,
        ``common_factor``, ``ok``, ``reason``, ``receptive_field``, ``holes`` and ``coverage`` (nested lists of
        ints, side = receptive field).

    Raises:
        ConfigError: Bad rates or kernel size, or a field too large to draw.
    """
    check = hdc_check(rates, kernel_size)
    cov = coverage(check.rates, check.kernel_size)
    return dict(
        rates=list(check.rates), kernel_size=check.kernel_size, m=list(check.m), m_paper=list(check.m_paper),
        common_factor=check.common_factor, ok=check.ok, reason=check.reason, receptive_field=check.receptive_field,
        holes=holes(cov), coverage=cov.tolist(),
    )


def _plot_path(path: str | os.PathLike) -> Path:
    """The plot path, with its folder created; its suffix must be an image format matplotlib writes."""
    pyplot()  # the Agg backend: files only, never a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if path.suffix.lower().lstrip('.') not in formats:
        raise ConfigError(f'cannot write a plot to {str(path)!r}: use a file ending in .png, .pdf or .svg')
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def plot_coverage(cov: np.ndarray, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw a coverage map: the count in every cell up to 41 x 41, a heat map with a colour bar beyond.

    Cells no path reaches (holes, and any padding) are white, so gridding shows as a white lattice.

    Args:
        cov: A 2-D coverage map, e.g. from :func:`visionmix.dilation.coverage`.
        path: Image file to write (``.png``, ``.pdf``, ``.svg``, ...).
        title: Figure title; ``None`` states the side and the number of holes.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``cov`` is not 2-D or ``path`` is not an image file name.
    """
    cov = np.asarray(cov)
    if cov.ndim != 2:
        raise ConfigError(f'plot_coverage needs a 2-D coverage map, got an array of shape {cov.shape}')
    path = _plot_path(path)
    plt = pyplot()

    side = max(cov.shape)
    numbers = side <= _NUMBERS_MAX_SIDE
    inches = min(16.0, max(4.0, 0.32 * side)) if numbers else 8.0
    fig, ax = plt.subplots(figsize=(inches + (0 if numbers else 1.5), inches))
    try:
        cmap = plt.get_cmap('viridis').with_extremes(bad='white')  # masked zeros: holes stand out
        image = ax.imshow(np.ma.masked_equal(cov, 0), cmap=cmap, interpolation='nearest')
        if numbers:
            digits = len(str(int(cov.max()))) if cov.size else 1
            cell_pt = inches * 72 / side  # a digit is about 0.6 em wide: fit the widest count in its cell
            size = max(3.0, min(11.0, 0.7 * cell_pt / (0.6 * max(digits, 2))))
            top = cov.max() if cov.size else 0
            for (y, x), value in np.ndenumerate(cov):
                color = 'black' if value > 0.6 * top else 'white'
                ax.text(x, y, str(int(value)), ha='center', va='center', fontsize=size,
                        color='lightgray' if value == 0 else color)
        else:
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='paths to the centre output')
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title if title is not None else f'coverage {cov.shape[0]}x{cov.shape[1]}, {holes(cov)} holes')
        fig.savefig(path, dpi=120, bbox_inches='tight')
    finally:
        plt.close(fig)
    return path


class NoSpatialMapError(VisionmixError):
    """The model exposes no (B, C, H, W) feature map to measure a receptive field on."""


def last_feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's last spatial feature map for images ``x``, as NCHW.

    Uses ``forward_intermediates(x, indices=1, intermediates_only=True)`` (visionmix models and most timm models,
    ViTs included, return NCHW maps there even when they run channels-last inside), else ``forward_features`` when
    it returns a 4-D map (permuted from NHWC when the model declares ``output_fmt == 'NHWC'``).

    Args:
        model: Any image model.
        x: Images ``(B, C, H, W)``.

    Returns:
        A ``(B, C', h, w)`` tensor.

    Raises:
        NoSpatialMapError: The model exposes no spatial feature map.
    """
    if callable(getattr(model, 'forward_intermediates', None)):
        try:
            feats = model.forward_intermediates(x, indices=1, intermediates_only=True)
        except NotImplementedError:  # timm stubs for models that cannot give intermediates
            feats = None
        if isinstance(feats, (list, tuple)) and feats and isinstance(feats[-1], torch.Tensor) \
                and feats[-1].ndim == 4:
            return feats[-1]
    out = model.forward_features(x) if callable(getattr(model, 'forward_features', None)) else None
    if isinstance(out, torch.Tensor) and out.ndim == 4:
        return out.permute(0, 3, 1, 2) if getattr(model, 'output_fmt', 'NCHW') == 'NHWC' else out
    got = f'forward_features returns shape {tuple(out.shape)}' if isinstance(out, torch.Tensor) \
        else 'it has no forward_features'
    raise NoSpatialMapError(f'{type(model).__name__} exposes no spatial feature map ({got}, no usable '
                         f'forward_intermediates); the ERF needs a model with a (B, C, H, W) feature map')


def _as_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) and not isinstance(img_size, bool) else img_size
    if not isinstance(size, Sequence) or len(size) != 2 \
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ConfigError(f'img_size must be a positive int or (H, W), got {img_size!r}')
    return int(size[0]), int(size[1])


def _in_chans(model: nn.Module) -> int:
    """Input channels: the model's ``in_chans`` if it states one, else the first conv's, else 3."""
    chans = getattr(model, 'in_chans', None)
    if isinstance(chans, int):
        return chans
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _erf(model: nn.Module, size: tuple[int, int], samples: int, seed: int,
         device: str | torch.device) -> tuple[np.ndarray, tuple[int, int, int]]:
    """ERF map and the ``(C, h, w)`` shape of the feature map it was taken from (see effective_receptive_field)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f'samples must be an int >= 1, got {samples!r}')
    gen = torch.Generator().manual_seed(seed)
    chans, total, shape = _in_chans(model), torch.zeros(size, dtype=torch.float64), (0, 0, 0)
    was_training = model.training
    model.to(device).eval()  # BatchNorm with running stats: every sample sees the same function
    try:
        for start in range(0, samples, _CHUNK):
            x = torch.randn(min(_CHUNK, samples - start), chans, *size, generator=gen).to(device).requires_grad_()
            try:
                feat = last_feature_map(model, x)
            except NoSpatialMapError:
                raise
            except (AssertionError, RuntimeError, ValueError) as e:  # a model built for another size, mostly (our
                # own VisionmixErrors from inside the model are ValueErrors too: they gain the size asked for)
                raise VisionmixError(f'{type(model).__name__} cannot run at {size[0]}x{size[1]}: {first_line(e)}; '
                                     f'build it for this size (img_size=...) or choose another size') from e
            shape = tuple(feat.shape[1:])
            unit = feat[:, :, feat.shape[2] // 2, feat.shape[3] // 2].sum()
            (grad,) = torch.autograd.grad(unit, x)  # only the input gradient: parameters' .grad stay untouched
            total += grad.abs().sum(dim=(0, 1)).double().cpu()
    finally:
        model.train(was_training)
    return (total / samples).numpy(), shape


def effective_receptive_field(model: nn.Module, img_size: int | Sequence[int] = (64, 64), samples: int = 16,
                              seed: int = 0, device: str | torch.device = 'cpu') -> np.ndarray:
    """Empirical effective receptive field (Luo et al. 2016) of the centre unit of a model's last feature map.

    For ``samples`` standard-normal images (run a few at a time), backpropagates the sum over channels of the
    centre position ``(h // 2, w // 2)`` of :func:`last_feature_map` to the input, and averages ``|grad|`` summed
    over input channels. The model runs in eval mode (restored afterwards) and is moved to ``device``; random
    initialisation is the usual subject, a trained model works the same.

    Args:
        model: Any image model with a spatial feature map.
        img_size: Input size, an int or ``(H, W)``. An odd last map (``h = H / stride``) puts the centre unit on the
            image centre; with an even one it sits half a stride below-right (see :func:`feature_center`).
        samples: Number of random images.
        seed: Seed of the random images.
        device: Where to run.

    Returns:
        A float64 ``(H, W)`` array.

    Raises:
        ConfigError: Bad ``img_size`` or ``samples``.
        VisionmixError: The model has no spatial map or cannot run at ``img_size``.
    """
    return _erf(model, _as_size(img_size), samples, seed, device)[0]


def feature_center(img_size: int | Sequence[int], feature_hw: Sequence[int]) -> tuple[float, float]:
    """Input-pixel centre ``(y, x)`` of feature unit ``(h // 2, w // 2)``, assuming the map tiles the image evenly.

    ``(H - 1) / 2`` for an odd ``h``; half a stride further for an even one (e.g. 39.5 for a 4 x 4 map of 64 px).
    """
    size = _as_size(img_size)
    return tuple((n // 2 + 0.5) * (s / n) - 0.5 for s, n in zip(size, feature_hw))


def erf_stats(erf: np.ndarray, center: Sequence[float] | None = None) -> dict[str, float]:
    """Radii holding 50% / 90% of an ERF's gradient mass, and the share of pixels it reaches.

    Radii are Euclidean, in input pixels, from ``center``: a circle is what a rotation-symmetric field (a Gaussian,
    as Luo et al. find) fills, so the radius does not depend on the direction. ``r50`` / ``r90`` are the smallest
    pixel distances whose disc holds 50% / 90% of the total mass: 0 for a delta, about ``R / sqrt(2)`` for a uniform
    disc of radius ``R``. ``nonzero_share`` is the fraction of pixels whose value exceeds ``1e-6 x`` the maximum:
    pixels outside the theoretical receptive field get exactly 0 (no path), and float32 gradients resolve about
    1e-7 of the values summed into them, so below a millionth of the peak a value cannot be told from round-off.
    Genuine but faint influence can fall under it too (a token mixer muted by a 1e-4 layer scale at init).
    :func:`erf_report` passes the centre unit's pixel (:func:`feature_center`) as ``center``.

    Args:
        erf: A non-negative 2-D map.
        center: ``(y, x)`` in pixels; ``None`` is the image centre ``((H - 1) / 2, (W - 1) / 2)``.

    Returns:
        ``r50``, ``r90`` (NaN for an all-zero map) and ``nonzero_share``.

    Raises:
        ConfigError: ``erf`` is not 2-D.
    """
    erf = np.asarray(erf, dtype=np.float64)
    if erf.ndim != 2:
        raise ConfigError(f'erf_stats needs a 2-D map, got an array of shape {erf.shape}')
    cy, cx = ((erf.shape[0] - 1) / 2, (erf.shape[1] - 1) / 2) if center is None else center
    mass, peak = np.abs(erf), float(np.abs(erf).max()) if erf.size else 0.0
    if peak == 0.0:
        return dict(r50=math.nan, r90=math.nan, nonzero_share=0.0)
    ys, xs = np.indices(erf.shape)
    dist = np.hypot(ys - cy, xs - cx).ravel()
    order = np.argsort(dist, kind='stable')
    cum = np.cumsum(mass.ravel()[order]) / mass.sum()
    radius = {q: float(dist[order][min(np.searchsorted(cum, q - 1e-12), dist.size - 1)]) for q in (0.5, 0.9)}
    return dict(r50=radius[0.5], r90=radius[0.9], nonzero_share=float((mass > _REL_THRESHOLD * peak).mean()))


def _build(name: str, size: tuple[int, int], checkpoint: str | os.PathLike | None) -> nn.Module:
    """``create_model(name)`` at ``size`` when the builder takes ``img_size`` (token MLPs, ViTs), else as it comes."""
    kwargs: dict[str, Any] = {} if checkpoint is None else dict(checkpoint_path=os.fspath(checkpoint))
    if takes_img_size(name):
        kwargs['img_size'] = size[0] if size[0] == size[1] else size
    return create_model(name, **kwargs)


def erf_report(names_or_models: str | nn.Module | Sequence[str | nn.Module], img_size: int | Sequence[int] = 64,
               samples: int = 16, checkpoint: str | os.PathLike | Sequence[str | os.PathLike | None] | None = None,
               seed: int = 0, device: str | torch.device = 'cpu') -> list[dict[str, Any]]:
    """ERF and its statistics for each model, built by name (or given as modules) at one input size.

    Args:
        names_or_models: Registry names and / or ``nn.Module`` objects (one or a list).
        img_size: Input size, an int or ``(H, W)``; names are built with ``img_size=`` when their builder takes it.
        samples: Random images per model.
        checkpoint: Weights to load: one path for a single model, or one path (or ``None``) per model. ``None``
            keeps the random initialisation.
        seed: Seed of the random images (the same images for every model).
        device: Where to run.

    Returns:
        One dict per model: ``name``, ``img_size`` ``[H, W]``, ``feature_shape`` ``[C, h, w]``, ``center``
        ``[y, x]`` (the centre unit's pixel, see :func:`feature_center`), ``samples``, ``r50``, ``r90``,
        ``nonzero_share`` and ``erf`` (the ``(H, W)`` array; :func:`to_json` drops it).

    Raises:
        ConfigError: Bad sizes, counts or a checkpoint list of the wrong length.
        VisionmixError: A model without a spatial map or that cannot run at ``img_size`` (and the registry's and
            checkpoint loader's own errors for unknown names and unfit weights).
    """
    items = [names_or_models] if isinstance(names_or_models, (str, nn.Module)) else list(names_or_models)
    if not items:
        raise ConfigError('erf_report needs at least one model name or module')
    size = _as_size(img_size)
    ckpts = [checkpoint] * len(items) if checkpoint is None else \
        [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    if len(ckpts) != len(items):
        raise ConfigError(f'got {len(ckpts)} checkpoint(s) for {len(items)} model(s): pass one per model '
                          f'(None keeps random weights)')
    reports = []
    for item, ckpt in zip(items, ckpts):
        if isinstance(item, str):
            name, model = item, _build(item, size, ckpt)
        else:
            cfg = getattr(item, 'pretrained_cfg', None)
            name, model = (cfg.get('architecture') if isinstance(cfg, dict) else None) or type(item).__name__, item
            if ckpt is not None:
                from ..checkpoint import load_checkpoint
                load_checkpoint(model, ckpt)
        erf, shape = _erf(model, size, samples, seed, device)
        center = feature_center(size, shape[1:])
        reports.append(dict(name=name, img_size=list(size), feature_shape=list(shape), center=list(center),
                            samples=samples, **erf_stats(erf, center), erf=erf))
    return reports


def to_json(report: dict[str, Any] | Sequence[dict[str, Any]], indent: int | None = 2) -> str:
    """JSON text of a :func:`coverage_report` dict or an :func:`erf_report` list, without the ``erf`` arrays."""
    def clean(d: dict[str, Any]) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items() if k != 'erf'}

    data = clean(report) if isinstance(report, dict) else [clean(d) for d in report]
    return json.dumps(data, indent=indent)


def plot_erfs(reports: Sequence[dict[str, Any]], path: str | os.PathLike, title: str | None = None) -> Path:
    """ERF heat maps side by side on one colour scale, titled with each model's name, r50 and r90.

    Each map is divided by its own total (it then sums to 1, so the colour is the share of that model's gradient
    mass per pixel) and all maps share one ``vmax``: a concentrated field shows as a bright spot, a global one as a
    dim, even wash. Dashed circles mark r50 and r90 around the centre unit.

    Args:
        reports: Dicts from :func:`erf_report` (``name``, ``erf``, ``r50``, ``r90``, optionally ``center``).
        path: Image file to write.
        title: Figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: No reports, a report without an ``erf`` map, or a path that is not an image file name.
    """
    if not reports or any(not isinstance(r, dict) or np.asarray(r.get('erf')).ndim != 2 for r in reports):
        raise ConfigError('plot_erfs needs a non-empty list of erf_report dicts, each with its 2-D "erf" map')
    path = _plot_path(path)
    plt = pyplot()
    from matplotlib.patches import Circle

    maps = [np.asarray(r['erf'], dtype=np.float64) for r in reports]
    maps = [m / m.sum() if m.sum() > 0 else m for m in maps]
    vmax = max(float(m.max()) for m in maps) or 1.0
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps) + 1.2, 3.9), squeeze=False)
    try:
        for ax, rep, m in zip(axes[0], reports, maps):
            image = ax.imshow(m, cmap='inferno', vmin=0.0, vmax=vmax, interpolation='nearest')
            cy, cx = rep.get('center') or ((m.shape[0] - 1) / 2, (m.shape[1] - 1) / 2)
            for key, style in (('r50', '--'), ('r90', ':')):
                if rep.get(key) is not None and math.isfinite(rep[key]):
                    ax.add_patch(Circle((cx, cy), rep[key], fill=False, color='cyan', linestyle=style, lw=1))
            ax.set_title(f"{rep.get('name', '?')}\nr50 {rep.get('r50', math.nan):.1f}  "
                         f"r90 {rep.get('r90', math.nan):.1f} px", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=list(axes[0]), fraction=0.03, pad=0.02,
                     label='share of gradient mass per pixel (each map sums to 1; one scale)')
        if title:
            fig.suptitle(title)
        fig.savefig(path, dpi=100, bbox_inches='tight')
    finally:
        plt.close(fig)
    return path
