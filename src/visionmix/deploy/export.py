"""Export a model to ONNX or a ``torch.export`` program, checked against eager before the file is written.

:func:`export_model` traces the model with ``torch.export`` (dynamic batch by default, dynamic H / W for models that
take any size), converts it to ONNX with the torch exporter (``torch.onnx.export(..., dynamo=True)``; the TorchScript
exporter only when that one fails) or saves the program (``.pt2``), then runs eager and the saved artefact on random
inputs (ONNX through onnxruntime, ``.pt2`` through ``torch.export.load``) and writes the file only if every output
agrees within ``rtol``. The file appears atomically: a temp file in the same folder is checked, then renamed.

What the exporter does with dynamic H / W (torch 2.14, measured):

* Models whose shapes only flow through convolutions, pooling, reshapes and attention (SPACH conv / attention,
  Mobile-Former, timm CNNs) export with ``Dim.DYNAMIC`` height and width and give the eager outputs at other sizes.
* Shape-dependent Python branches (padding to a window multiple, region partitions) make the exporter specialise:
  it records guards such as ``H % 32 == 0`` or ``H <= 71`` that the ONNX graph does not enforce, so another size
  silently computes something else. The check at a second size catches it and the export falls back to static H / W.
  Hire-MLP and Swin-MLP also take minutes to trace symbolically, so they export statically unless
  ``dynamic_size=True`` (see ``STATIC_SIZE_MODELS``).
* A feature map of size 1 at the trace size (e.g. a 32x32 input to a stride-32 CNN) is specialised too (0/1
  specialisation): trace at a size whose deepest map is at least 2.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from ..checkpoint import atomic_write
from ..errors import VisionmixError, first_line
from .onnxrt import OnnxRuntimeModel, require_onnx

__all__ = [
    'ExportError', 'ExportCheckError', 'ExportResult', 'export_model', 'max_rel_diff', 'require_onnx', 'FORMATS',
    'STATIC_SIZE_MODELS',
]

Format = Literal['onnx', 'pt2']
FORMATS = {'onnx': '.onnx', 'pt2': '.pt2'}
# Model classes the default export keeps at a static H / W: a symbolic trace takes minutes and its graph is valid
# only for some sizes (measured with torch 2.14; ``dynamic_size=True`` tries anyway).
STATIC_SIZE_MODELS = {
    'HireMlpNet': 'Hire-MLP region padding specialises H / W and takes minutes to trace symbolically',
    'SwinMlp': 'Swin-MLP window padding specialises H / W and takes minutes to trace symbolically',
    'UNeXt': 'UNeXt padding and axial shifts specialise H / W to the traced bottleneck size',
}
_TRACE_BATCH = 2  # a dynamic batch is traced at 2: a size-1 dimension would be specialised
_MAX_ONNX_BYTES = 2 ** 31 - 1  # protobuf limit: larger weights would need an external data file


class ExportError(VisionmixError):
    """A model that cannot be exported as asked (bad argument, unwritable output, exporter failure)."""


class ExportCheckError(ExportError):
    """The exported artefact's outputs differ from eager by more than the tolerance; no file was written."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how it was checked.

    Attributes:
        path: The written file.
        format: 'onnx' or 'pt2'.
        exporter: What produced it: 'torch.onnx dynamo', 'torch.onnx torchscript' or 'torch.export'.
        opset: ONNX opset of the file (``None`` for pt2).
        input_names: Graph input names.
        input_shapes: Input shapes; dynamic axes by name ('batch', 'height', 'width').
        output_names: Graph output names (one per tensor of the model output, flattened).
        dynamic_axes: Per input, the dynamic axes ``{axis: name}``.
        dynamic_batch: The batch axis is dynamic.
        dynamic_size: H and W are dynamic.
        check_shapes: Input shape of each check.
        max_rel_diff: Per check input, ``max|eager - exported| / max|eager|`` over all outputs.
        rtol: The tolerance the differences were held to.
        seconds: Wall time of the whole export, checks included.
        notes: Fallbacks taken and why (e.g. dynamic H / W dropped).
    """

    path: Path
    format: str
    exporter: str
    opset: int | None
    input_names: list[str]
    input_shapes: list[list[int | str]]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    dynamic_batch: bool
    dynamic_size: bool
    check_shapes: list[tuple[int, ...]]
    max_rel_diff: list[float]
    rtol: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d['path'] = str(self.path)
        return d


def _tensor_leaves(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output in the order exporters flatten it (dict values in insertion order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensor_leaves(item)]
    return []


def max_rel_diff(expected: Any, actual: Any) -> float:
    """``max|a - b| / max(max|a|, tiny)`` over every tensor of two outputs (inf on a structure or shape mismatch)."""
    a_leaves, b_leaves = _tensor_leaves(expected), _tensor_leaves(actual)
    if len(a_leaves) != len(b_leaves):
        return float('inf')
    worst = 0.0
    for a, b in zip(a_leaves, b_leaves):
        if a.shape != b.shape:
            return float('inf')
        if a.numel() == 0:
            continue
        a, b = a.detach().double(), b.detach().to(a.device).double()
        diff = ((a - b).abs().max() / a.abs().max().clamp_min(torch.finfo(torch.float32).tiny)).item()
        worst = max(worst, diff if diff == diff else float('inf'))  # NaN counts as a failure
    return worst


def _pair(img_size: int | Sequence[int]) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ExportError(f'image size must be a positive int or (H, W) of positive ints, got {img_size!r}')
    return size  # type: ignore[return-value]


def _check_args(output: str | os.PathLike, format: str, batch: int | str, check_inputs: int, rtol: float,
                in_chans: int) -> Path:
    """Validate the arguments a user can get wrong; returns the output path."""
    if format not in FORMATS:
        raise ExportError(f'unknown export format {format!r}; choose from {", ".join(FORMATS)}')
    path = Path(output)
    if path.suffix.lower() != FORMATS[format]:
        raise ExportError(f'output {str(path)!r} must end in {FORMATS[format]} for format {format}')
    if batch != 'dynamic' and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise ExportError(f"batch must be 'dynamic' or an integer >= 1, got {batch!r}")
    if not isinstance(check_inputs, int) or check_inputs < 1:
        raise ExportError(f'check_inputs must be an integer >= 1, got {check_inputs!r}')
    if not isinstance(rtol, (int, float)) or not rtol > 0:
        raise ExportError(f'rtol must be > 0, got {rtol!r}')
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ExportError(f'in_chans must be an integer >= 1, got {in_chans!r}')
    folder = path.parent
    if not folder.is_dir():
        raise ExportError(f'output folder {str(folder)!r} does not exist')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f'output folder {str(folder)!r} is not writable')
    if path.is_dir():
        raise ExportError(f'output {str(path)!r} is a folder')
    return path



@dataclass
class _Plan:
    """One export attempt: which axes are dynamic and the inputs to trace and check with."""

    dynamic_batch: bool
    dynamic_size: bool
    inputs: list[torch.Tensor]
    expected: list[Any]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        axes = {0: 'batch'} if self.dynamic_batch else {}
        return {**axes, **({2: 'height', 3: 'width'} if self.dynamic_size else {})}


def _eager(model: nn.Module, x: torch.Tensor) -> Any:
    with torch.inference_mode():
        return model(x)


def _make_plan(model: nn.Module, size: tuple[int, int], in_chans: int, batch: int | str, dynamic_size: bool,
               check_inputs: int) -> _Plan | None:
    """Check inputs for one attempt (``None`` when no other size runs eagerly, for a dynamic-size plan).

    The first input is at the trace size and batch; the others alternate another batch (when dynamic) and, for a
    dynamic size, the first non-square size above the trace size that eager accepts (H + 8, W + 16 if it can), so a
    graph specialised to the trace size, to a size range or to square inputs fails the check.
    """
    gen = torch.Generator().manual_seed(0)
    dynamic_batch = batch == 'dynamic'
    trace_batch = _TRACE_BATCH if dynamic_batch else batch
    (h, w), other = size, size
    if dynamic_size:
        for dh, dw in ((8, 16), (16, 32), (32, 64)):
            try:
                _eager(model, torch.zeros(1, in_chans, h + dh, w + dw))
            except Exception:  # noqa: BLE001 - any failure means the model does not take this size
                continue
            other = (h + dh, w + dw)
            break
        else:
            return None
    inputs, batches = [], [1, 3, trace_batch] if dynamic_batch else [trace_batch]
    for i in range(check_inputs):
        b = trace_batch if i == 0 else batches[(i - 1) % len(batches)]
        hw = other if i % 2 else size
        inputs.append(torch.randn(b, in_chans, *hw, generator=gen))
    expected = []
    for x in inputs:
        try:
            expected.append(_eager(model, x))
        except Exception as e:  # noqa: BLE001
            hint = '; a fixed batch avoids other batches' if x.shape[0] != trace_batch else ''
            raise ExportError(f'the model cannot take the check input {_shape_str(x)}: {first_line(e)}{hint}') from None
    return _Plan(dynamic_batch, dynamic_size, inputs, expected)


def _dims(plan: _Plan) -> tuple[dict[int, Any], ...]:
    return ({axis: torch.export.Dim.DYNAMIC for axis in plan.dynamic_axes},)


def _capture(model: nn.Module, plan: _Plan) -> torch.export.ExportedProgram:
    """``torch.export`` the model, non-strict first (the default), strict (TorchDynamo) if that fails."""
    try:
        return torch.export.export(model, (plan.inputs[0],), dynamic_shapes=_dims(plan), strict=False)
    except Exception as non_strict:  # noqa: BLE001
        if _is_constraint_violation(non_strict):
            raise  # the model specialises a dynamic axis: strict tracing would find the same
        try:
            return torch.export.export(model, (plan.inputs[0],), dynamic_shapes=_dims(plan), strict=True)
        except Exception:  # noqa: BLE001 - the non-strict error is the informative one
            raise non_strict from None


def _is_constraint_violation(e: BaseException) -> bool:
    """torch.export's error for a dimension marked dynamic that the model's code fixes (``UserError``)."""
    return type(e).__name__ == 'UserError' and 'Constraints violated' in str(e)


def _output_names(plan: _Plan) -> list[str]:
    n = len(_tensor_leaves(plan.expected[0]))
    return ['output'] if n == 1 else [f'output{i}' for i in range(n)]


def _export_onnx_dynamo(model: nn.Module, plan: _Plan, tmp: str, opset: int | None) -> int:
    """The torch exporter on a ``torch.export`` program; returns the opset."""
    program = _capture(model, plan)
    onnx_program = torch.onnx.export(
        program, (plan.inputs[0],), dynamo=True, verbose=False, opset_version=opset, input_names=['input'],
        output_names=_output_names(plan), dynamic_shapes=(plan.dynamic_axes,) if plan.dynamic_axes else None)
    onnx_program.save(tmp, external_data=False)
    return onnx_program.model.opset_imports.get('', opset)


def _export_onnx_torchscript(model: nn.Module, plan: _Plan, tmp: str, opset: int | None) -> int:
    """The TorchScript (tracing) exporter; every output axis is named dynamic so other sizes are declared right."""
    import onnx

    names = _output_names(plan)
    axes = {'input': plan.dynamic_axes}
    if plan.dynamic_axes:
        for name, leaf in zip(names, _tensor_leaves(plan.expected[0])):
            axes[name] = {i: 'batch' if i == 0 and plan.dynamic_batch else f'{name}_{i}' for i in range(leaf.ndim)}
    kwargs = {} if opset is None else {'opset_version': opset}
    with warnings.catch_warnings():  # it is deprecated, and only used when the dynamo exporter failed
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (plan.inputs[0],), tmp, dynamo=False, input_names=['input'], output_names=names,
                          dynamic_axes={k: v for k, v in axes.items() if v}, **kwargs)
    return next(o.version for o in onnx.load(tmp, load_external_data=False).opset_import if o.domain in ('', 'ai.onnx'))


def _run_checks(runner: Callable[[torch.Tensor], Any], plan: _Plan) -> tuple[list[float], str]:
    """Relative max difference to eager per check input (inf when the artefact cannot run an input) and the first
    such failure's one-line reason."""
    diffs, failure = [], ''
    for x, expected in zip(plan.inputs, plan.expected):
        try:
            with torch.inference_mode():
                diffs.append(max_rel_diff(expected, runner(x)))
        except Exception as e:  # noqa: BLE001 - e.g. a graph that cannot take the second size: a failed check
            diffs.append(float('inf'))
            failure = failure or first_line(e)
    return diffs, failure


def _write(model: nn.Module, plan: _Plan, tmp: str, format: str, opset: int | None) -> tuple[str, int | None, str]:
    """Export to ``tmp``; returns the exporter used, the ONNX opset and a note on a fallback ('' if none)."""
    if format == 'pt2':
        try:
            torch.export.save(_capture(model, plan), tmp)
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported in one line
            hint = '; a fixed batch or dynamic_size=False avoids it' if _is_constraint_violation(e) else ''
            raise ExportError(f'torch.export failed: {first_line(e)}{hint}') from e
        return 'torch.export', None, ''
    try:
        return 'torch.onnx dynamo', _export_onnx_dynamo(model, plan, tmp, opset), ''
    except Exception as dynamo_error:  # noqa: BLE001
        if _is_constraint_violation(dynamo_error):  # a static H / W attempt follows; tracing would not help
            raise ExportError(f'the model fixes an axis exported as dynamic ({first_line(dynamo_error)}); '
                              f'a fixed batch or dynamic_size=False avoids it') from None
        note = f'the dynamo exporter failed ({first_line(dynamo_error)}); used the TorchScript exporter'
        try:
            return 'torch.onnx torchscript', _export_onnx_torchscript(model, plan, tmp, opset), note
        except Exception as e:  # noqa: BLE001
            raise ExportError(f'both ONNX exporters failed: dynamo: {first_line(dynamo_error)}; '
                              f'torchscript: {first_line(e)}') from e


def _load(tmp: str, format: str) -> tuple[Callable[[torch.Tensor], Any], list[int | str] | None]:
    """The saved artefact as a callable, and its input shape as the file declares it (``None`` for pt2)."""
    try:
        if format == 'pt2':
            return torch.export.load(tmp).module(), None
        runner = OnnxRuntimeModel(tmp)
    except Exception as e:  # noqa: BLE001 - a file the exporter wrote but the runtime rejects
        raise ExportError(f'the exported {format} cannot be loaded: {first_line(e)}') from e
    return runner, list(runner.session.get_inputs()[0].shape)


def _shape_str(x: torch.Tensor) -> str:
    return 'x'.join(str(s) for s in x.shape)


def _check_message(format: str, plan: _Plan, diffs: list[float], failure: str, rtol: float) -> str:
    worst = max(range(len(diffs)), key=lambda i: diffs[i])
    shape = _shape_str(plan.inputs[worst])
    if diffs[worst] == float('inf'):
        return f'the exported {format} fails on input {shape}: {failure or "output structure or shape differs"}'
    return (f'the exported {format} differs from eager: relative max difference {diffs[worst]:.2e} > rtol {rtol:g} '
            f'on input {shape}')


def _size_modes(model: nn.Module, dynamic_size: bool | None, notes: list[str]) -> list[bool]:
    """The H / W modes to try in order: dynamic then static, or just one."""
    if dynamic_size is not None:
        return [bool(dynamic_size)]
    reason = STATIC_SIZE_MODELS.get(type(model).__name__)
    if reason:
        notes.append(f'static H / W: {reason} (dynamic_size=True tries anyway)')
        return [False]
    return [True, False]


def _attempts(model: nn.Module, tmp: str, format: str, modes: list[bool], spec: dict[str, Any],
              notes: list[str]) -> ExportResult:
    """Export and check each H / W mode in turn into ``tmp``; the first that passes gives the result."""
    for i, dyn in enumerate(modes):
        last = i == len(modes) - 1
        plan = _make_plan(model, spec['size'], spec['in_chans'], spec['batch'], dyn, spec['check_inputs'])
        if plan is None:
            if last:
                raise ExportError(f'the model runs at no size but {spec["size"][0]}x{spec["size"][1]}: '
                                  f'export with a static size (dynamic_size=False)')
            notes.append('static H / W: the model runs at no other size')
            continue
        try:
            exporter, opset, note = _write(model, plan, tmp, format, spec['opset'])
            runner, declared = _load(tmp, format)
            diffs, failure = _run_checks(runner, plan)
        except ExportError as e:
            if last:
                raise
            notes.append(f'dynamic H / W dropped: {e}')
            continue
        if max(diffs) > spec['rtol']:
            message = _check_message(format, plan, diffs, failure, spec['rtol'])
            if last:
                raise ExportCheckError(f'{message}; no file written')
            notes.append(f'dynamic H / W dropped: {message}')
            continue
        notes.extend([note] if note else [])
        if all(leaf.abs().max() == 0 for out in plan.expected for leaf in _tensor_leaves(out) if leaf.numel()):
            notes.append('every eager output is zero at these weights (e.g. a zero-initialised head): the check '
                         'only shows the export gives zeros too')
        if len(plan.inputs) == 1 and plan.dynamic_axes:
            notes.append('dynamic axes not checked: check_inputs=1 only checks the export size and batch')
        shape: list[int | str] = list(plan.inputs[0].shape)
        for axis, name in plan.dynamic_axes.items():
            shape[axis] = name
        return ExportResult(
            path=spec['path'], format=format, exporter=exporter, opset=opset, input_names=['input'],
            input_shapes=[declared or shape], output_names=_output_names(plan),
            dynamic_axes={'input': plan.dynamic_axes}, dynamic_batch=plan.dynamic_batch, dynamic_size=dyn,
            check_shapes=[tuple(x.shape) for x in plan.inputs], max_rel_diff=diffs, rtol=spec['rtol'], seconds=0.0,
            notes=notes)
    raise AssertionError('no export attempt ran')  # unreachable: modes is never empty


def _atomic_export(model: nn.Module, path: Path, format: str, modes: list[bool], spec: dict[str, Any],
                   notes: list[str]) -> ExportResult:
    """Export into a temp file next to ``path``, check it, and rename it into place; never leave a file on error
    (:func:`visionmix.checkpoint.atomic_write`, which also gives the file the mode the umask asks for)."""
    results: list[ExportResult] = []
    try:
        atomic_write(path, lambda tmp: results.append(_attempts(model, tmp, format, modes, spec, notes)))
    except OSError as e:
        raise ExportError(f'cannot write {str(path)!r}: {first_line(e)}') from None
    return results[0]


def _default_size(model: nn.Module) -> tuple[int, int]:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    size = tuple(cfg.get('input_size', (3, 224, 224)))
    return (size[-2], size[-1])


def _check_weight_size(model: nn.Module) -> None:
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if nbytes > _MAX_ONNX_BYTES:
        raise ExportError(f'the weights take {nbytes / 2 ** 30:.1f} GiB, over the 2 GiB of a single ONNX file: '
                          f'export format pt2')


def export_model(
        model: nn.Module,
        output: str | os.PathLike,
        format: Format = 'onnx',
        *,
        img_size: int | Sequence[int] | None = None,
        batch: int | Literal['dynamic'] = 'dynamic',
        dynamic_size: bool | None = None,
        check_inputs: int = 2,
        rtol: float = 1e-4,
        in_chans: int = 3,
        opset: int | None = None,
) -> ExportResult:
    """Export ``model`` to ONNX or a ``torch.export`` program, and write the file only if it reproduces eager.

    The model runs in eval mode (its mode is restored afterwards). Eager and the saved artefact (ONNX through
    onnxruntime's CPU provider, pt2 through ``torch.export.load(...).module()``) run ``check_inputs`` random inputs:
    the first at the export size and batch, the others at another batch (dynamic batch) and another, non-square
    size (dynamic H / W). Every output tensor must agree: ``max|eager - exported| / max|eager| <= rtol``.

    Args:
        model: Any ``nn.Module`` taking one (B, C, H, W) image tensor.
        output: File to write; must end in ``.onnx`` or ``.pt2`` to match ``format``. Replaced atomically.
        format: 'onnx' (torch.onnx dynamo exporter, TorchScript exporter if that fails) or 'pt2' (torch.export).
        img_size: N or (H, W) to trace at; default: the model's ``pretrained_cfg`` input size, else 224.
        batch: 'dynamic' (traced at batch 2) or a fixed batch size.
        dynamic_size: ``None``: dynamic H / W when the model runs at other sizes and the exported graph reproduces
            eager there, else static (the result's notes say why); ``True``: dynamic or fail; ``False``: static.
        check_inputs: Number of random inputs to check (>= 1; 2 covers another batch and size).
        rtol: Largest relative max difference accepted.
        in_chans: Input channels.
        opset: ONNX opset; default: the exporter's choice.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: A bad argument, an unwritable output or an exporter failure.
        ExportCheckError: The exported outputs differ from eager (no file is written).
        MissingExtraError: ONNX export without onnx / onnxruntime / onnxscript installed.
    """
    start = time.perf_counter()
    path = _check_args(output, format, batch, check_inputs, rtol, in_chans)
    size = _pair(img_size if img_size is not None else _default_size(model))
    if format == 'onnx':
        require_onnx('onnx', 'onnxruntime', 'onnxscript')
        _check_weight_size(model)
    spec = dict(path=path, size=size, in_chans=in_chans, batch=batch, check_inputs=check_inputs, rtol=rtol,
                opset=opset)
    notes: list[str] = []
    was_training = model.training
    model.eval()
    try:
        _trial(model, (_TRACE_BATCH if batch == 'dynamic' else batch, in_chans, *size))
        result = _atomic_export(model, path, format, _size_modes(model, dynamic_size, notes), spec, notes)
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - start
    return result


def _trial(model: nn.Module, shape: tuple[int, ...]) -> None:
    """One eager forward at the export shape, so an input the model cannot take fails in one line before exporting."""
    try:
        _eager(model, torch.zeros(shape))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f'the model cannot take input {"x".join(map(str, shape))}: {first_line(e)}') from None
