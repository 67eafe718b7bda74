"""onnxruntime, imported only when used: the check that the ``deploy`` extra is installed and a session wrapper that
takes and returns torch tensors. A leaf of :mod:`visionmix.deploy` (export and runtime both use it)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingExtraError

__all__ = ['INSTALL_HINT', 'require_onnx', 'OnnxRuntimeModel']

INSTALL_HINT = 'pip install -e ".[deploy]" (or pip install "visionmix[deploy]")'


def require_onnx(*modules: str) -> None:
    """Import-check the ONNX stack; a missing package raises :class:`MissingExtraError` naming the extra."""
    missing = []
    for name in modules or ('onnx', 'onnxruntime'):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        verb = 'is' if len(missing) == 1 else 'are'
        raise MissingExtraError(f'{" / ".join(missing)} {verb} not installed: {INSTALL_HINT}')


class OnnxRuntimeModel:
    """An ONNX file on onnxruntime's CPU provider, called like a module: ``runner(x) -> tensor``.

    Attributes:
        path: The ONNX file the session was built from (may be deleted since: the session holds the model).
        threads: onnxruntime intra-op threads.
        session: The ``onnxruntime.InferenceSession``.
        input_name: Name of the (single) graph input.
        output_names: Names of the graph outputs.
        export_info: :meth:`ExportResult.to_dict` of the export that made the file (``from_module`` only).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spinning: bool = False) -> None:
        """Open ``path`` with graph optimisation level ALL.

        Args:
            path: ONNX file.
            threads: Intra-op threads; default: ``torch.get_num_threads()``, so both runtimes use the same cores.
            spinning: Let idle worker threads spin. Off by default: spinning threads keep burning the cores after a
                call returns and slow down whatever runs next (e.g. the eager side of an interleaved comparison).
        """
        require_onnx('onnxruntime')
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.threads = threads or torch.get_num_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.export_info: dict[str, Any] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run a (B, C, H, W) batch; returns a tensor, or a tuple for a model with several outputs."""
        array = x.detach().to(device='cpu', dtype=torch.float32).contiguous().numpy()
        outputs = self.session.run(self.output_names, {self.input_name: array})
        tensors = tuple(torch.from_numpy(out) for out in outputs)
        return tensors[0] if len(tensors) == 1 else tensors

    def __repr__(self) -> str:
        return f'{type(self).__name__}({str(self.path)!r}, threads={self.threads})'
