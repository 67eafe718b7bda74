"""Deployment: export to ONNX or a ``torch.export`` program (checked against eager) and fast CPU inference.

Needs the ``deploy`` extra for ONNX (``pip install "visionmix[deploy]"``: onnx, onnxruntime, onnxscript); the
``.pt2`` format and the eager / compile backends need only torch. onnx and onnxruntime are imported only when used.
"""
from .export import FORMATS, STATIC_SIZE_MODELS, ExportCheckError, ExportError, ExportResult, export_model, max_rel_diff
from .onnxrt import OnnxRuntimeModel, require_onnx
from .runtime import BACKENDS, BackendError, backend_runner, compare_backends, onnxruntime_model

__all__ = [
    'BACKENDS', 'FORMATS', 'STATIC_SIZE_MODELS', 'BackendError', 'ExportCheckError', 'ExportError', 'ExportResult',
    'OnnxRuntimeModel', 'backend_runner', 'compare_backends', 'export_model', 'max_rel_diff', 'onnxruntime_model',
    'require_onnx',
]
