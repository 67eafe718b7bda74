"""visionmix rf, export and the backends of profile / predict, through the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from visionmix.cli import main

pytest.importorskip('onnxruntime', reason='the deploy extra is not installed')


def test_rf_rates_prints_the_verdict_and_draws_the_map(tmp_path, capsys):
    assert main(['rf', '--rates', '1,2,5', '--plot', str(tmp_path / 'cov.png')]) == 0
    out = capsys.readouterr().out
    assert 'M = [1, 2, 5]' in out and '0 hole(s)' in out and 'gridding-free' in out
    assert (tmp_path / 'cov.png').stat().st_size > 0
    assert main(['rf', '--rates', '2,2,2', '--format', 'json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert not report['ok'] and report['common_factor'] == 2 and report['holes'] > 0
    for bad in (['rf', '--rates', '1,0,2'], ['rf', '--rates', 'a,b'], ['rf'], ['rf', 'resnet18']):
        assert main(bad) == 2
        out = capsys.readouterr().out.strip()
        assert out.startswith('error:') and '\n' not in out


def test_rf_erf_of_models_writes_png_and_json(tmp_path, capsys):
    assert main(['rf', 'SPACH-Conv', 'resnet18', '--erf', '--img-size', '32', '--samples', '2', '--plot',
                 str(tmp_path / 'erf.png'), '--format', 'json']) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r['name'] for r in reports] == ['SPACH-Conv', 'resnet18']
    assert all(0 < r['nonzero_share'] <= 1 and r['r90'] >= r['r50'] for r in reports)
    assert (tmp_path / 'erf.png').stat().st_size > 0


def test_export_a_name_and_a_trained_run(tmp_path, capsys):
    assert main(['export', 'resnet18', '--img-size', '64', '--output', str(tmp_path / 'r18.onnx')]) == 0
    assert 'max relative difference to eager' in capsys.readouterr().out
    run = tmp_path / 'run'
    assert main(['train', '--model', 'SPACH-Conv', '--dataset', 'synthetic:8', '--epochs', '1', '--threads', '1',
                 '--output', str(run)]) == 0
    for suffix in ('onnx', 'pt2'):
        assert main(['export', '--checkpoint', str(run), '--output', str(tmp_path / f'run.{suffix}')]) == 0
        assert (tmp_path / f'run.{suffix}').stat().st_size > 0
    capsys.readouterr()
    for bad in (['export', '--output', str(tmp_path / 'x.onnx')],
                ['export', 'resnet18', '--output', str(tmp_path / 'x.txt')],
                ['export', 'resnet18', '--batch', '0', '--output', str(tmp_path / 'x.onnx')],
                ['export', 'resnet50', '--checkpoint', str(run), '--output', str(tmp_path / 'x.onnx')]):
        assert main(bad) == 2, bad
        out = capsys.readouterr().out.strip()
        assert out.startswith('error:') and '\n' not in out, out


def test_predict_through_onnxruntime_equals_eager(tmp_path, capsys):
    run = tmp_path / 'run'
    assert main(['train', '--model', 'SPACH-Conv', '--dataset', 'synthetic:8', '--epochs', '1', '--threads', '1',
                 '--output', str(run)]) == 0
    image = tmp_path / 'a.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    results = {}
    for backend in ('eager', 'onnxruntime'):
        assert main(['predict', '--checkpoint', str(run), str(image), '--json', '--backend', backend]) == 0
        results[backend] = json.loads(capsys.readouterr().out)[0]['top']
    assert [t['label'] for t in results['eager']] == [t['label'] for t in results['onnxruntime']]
    assert [t['prob'] for t in results['eager']] == pytest.approx([t['prob'] for t in results['onnxruntime']],
                                                                  abs=1e-5)


def test_profile_backends_in_one_interleaved_run(capsys):
    assert main(['profile', 'resnet18', '--img-size', '32', '--backend', 'eager,onnxruntime', '--iters', '2',
                 '--warmup', '1', '--batch-size', '2', '--threads', '1', '--format', 'json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r['backend'] for r in rows] == ['eager', 'onnxruntime']
    assert rows[1]['max_rel_diff'] < 1e-4 and rows[1]['img_s'] > 0 and rows[0]['speedup'] == 1.0
    assert main(['profile', 'resnet18', '--backend', 'tensorrt', '--iters', '1']) == 2
