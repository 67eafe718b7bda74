"""OpenVINO against ONNX Runtime on this CPU: does a second deploy backend pay?

Each model is exported once with :func:`visionmix.deploy.export.export_model` (checked against eager), then the same
ONNX file runs on onnxruntime's CPU provider and on OpenVINO's CPU plugin (fp32 precision hint, both at ``--threads``
threads), interleaved A B A B on one random batch; the ratio is the median of the per-pair ratios ORT time / OpenVINO
time (above 1: OpenVINO faster). OpenVINO is not a visionmix dependency: ``pip install openvino`` to run this.

    python benchmarks/bench_openvino.py --models mobile_former_26m hire_mlp_tiny --out FILE.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import visionmix
from visionmix.deploy.export import export_model
from visionmix.profile.core import _cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

DEFAULT_MODELS = ('mobile_former_26m', 'spach_ms_xxs_patch4_224_conv', 'hire_mlp_tiny',
                  'swin_mlp_tiny_c24_patch4_window8_256')


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, args: argparse.Namespace, tmp: Path) -> str:
    """One Markdown row: img/s of both runtimes, the median ratio (IQR) and their max relative output difference."""
    import onnxruntime as ort
    import openvino as ov

    model = visionmix.create_model(name).eval()
    size = model.pretrained_cfg['input_size'][-2:]
    path = tmp / f'{name}.onnx'
    export_model(model, path, img_size=size)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), 'CPU', {'INFERENCE_NUM_THREADS': args.threads,
                                                                       'INFERENCE_PRECISION_HINT': 'f32'})
    x = np.random.default_rng(0).standard_normal((args.batch, 3, *size)).astype(np.float32)
    feed = {session.get_inputs()[0].name: x}
    run_ort, run_ov = (lambda: session.run(None, feed)), (lambda: compiled(x))
    reference, other = run_ort()[0], run_ov()[0]
    rel = float(np.abs(reference - other).max() / np.abs(reference).max())
    for _ in range(args.warmup):
        run_ort(), run_ov()
    pairs = [(_seconds(run_ort), _seconds(run_ov)) for _ in range(args.iters)]
    ratios = [o / v for o, v in pairs]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    ort_s, ov_s = (args.batch / statistics.median(t) for t in zip(*pairs))
    print(f'{name}: OpenVINO / ORT {statistics.median(ratios):.2f}x ({q1:.2f}-{q3:.2f}); {ort_s:.1f} vs {ov_s:.1f} '
          f'img/s; max rel diff {rel:.1e}', flush=True)
    return (f'| {name} | {size[0]}x{size[1]} | {ort_s:.1f} | {ov_s:.1f} | **{statistics.median(ratios):.2f}x** '
            f'({q1:.2f}-{q3:.2f}) | {rel:.1e} |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--out', type=Path, help='Markdown report (default: print only)')
    args = parser.parse_args()
    for name in args.models:  # a wrong name is one line (with suggestions), before any export
        try:
            visionmix.model_card(name)
        except visionmix.VisionmixError as e:
            sys.exit(f'error: {e}')
    try:
        import openvino  # noqa: F401
    except ImportError:
        sys.exit('OpenVINO is not installed: pip install openvino')
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, args, Path(tmp)) for name in args.models]
    if args.out:
        import openvino as ov
        import onnxruntime as ort

        header = [
            '# OpenVINO vs ONNX Runtime on this CPU', '',
            'Command (from the repository root):', '', '    python ' + ' '.join(sys.argv), '',
            f'- visionmix commit: {bc._visionmix_commit()}; onnxruntime {ort.__version__}, OpenVINO {ov.__version__}',
            f'- {_cpu_name()}, batch {args.batch}, {args.threads} threads, fp32; {args.warmup} warm-up and '
            f'{args.iters} timed pairs, interleaved; ratio = median (IQR) of ORT time / OpenVINO time, above 1 = '
            f'OpenVINO faster; rel diff = max |ORT - OpenVINO| / max |ORT|',
            f'- machine load at the start: {bc._START_LOAD}; at the end: {bc._load()}', '',
            '| model | input | ORT img/s | OpenVINO img/s | OpenVINO / ORT | max rel diff |',
            '|---|---|---|---|---|---|',
        ]
        args.out.write_text('\n'.join(header + rows) + '\n')
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
