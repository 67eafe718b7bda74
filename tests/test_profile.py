"""visionmix profile: counts, timing statistics, memory, comparisons, output formats and CLI errors.

Timings are never asserted on (the CI machine is shared); only their shape and consistency are. Tests run with one
thread because OpenMP threads spin against each other on an oversubscribed 2-core machine.
"""
import csv
import io
import json
import statistics

import pytest
import torch
import torch.nn as nn

import visionmix
from visionmix.cli import main
from visionmix.profile import (
    Comparison, ProfileError, ProfileResult, Stats, compare_speed, count_macs, count_params, measure_peak_memory,
    profile_model,
)
from visionmix.profile.report import plot_profiles, render

FAST = dict(warmup=1, iters=2, threads=1)


class TinyNet(nn.Module):
    """conv 3->8 (3x3, pad 1) + global pool + linear 8->10: MACs are easy to count by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


class WideNet(nn.Module):
    """Large activations for a small model, so peak memory is far above page-size noise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def tiny_macs(size: int) -> int:
    return 3 * 9 * 8 * size * size + 8 * 10


# ----------------------------------------------------------------------------------------------------- counting

def test_vit_small_macs_count_attention():
    # depth=1 ViT-S/16 at 224 (197 tokens, dim 384, MLP 1536): patch embed 768*384*196, qkv 197*384*1152,
    # q@k and attn@v 2*197*197*384, proj 197*384*384, MLP 2*197*384*1536, head 384*1000. Twelve blocks give the
    # card's 4.599 GMACs; without the math path the two attention products (29.8 M per block) count zero.
    model = visionmix.create_model('vit_small_patch16_224', depth=1)
    block = 197 * 384 * 1152 + 2 * 197 * 197 * 384 + 197 * 384 * 384 + 2 * 197 * 384 * 1536
    stem_head = 768 * 384 * 196 + 384 * 1000
    assert count_macs(model, (3, 224, 224)) == stem_head + block
    assert (stem_head + 12 * block) / 1e9 == pytest.approx(visionmix.model_card('vit_small_patch16_224').gmacs,
                                                            abs=5e-4)
    result = profile_model('vit_small_patch16_224', model_kwargs=dict(depth=1), mode='infer', batch_size=1,
                           memory=False, **FAST)
    assert result.gmacs * 1e9 == pytest.approx(stem_head + block)
    assert result.macs_deviation_pct == pytest.approx(((stem_head + block) / 1e9 - 4.599) / 4.599 * 100)


def test_resnet50_macs_and_params_match_card():
    card = visionmix.model_card('resnet50')
    result = profile_model('resnet50', mode='infer', batch_size=1, warmup=0, iters=1, threads=1, memory=False)
    assert result.gmacs == pytest.approx(4.09, abs=0.005)
    assert result.params == result.card_params == card.params == result.trainable_params
    assert result.paper_gmacs == card.gmacs and abs(result.macs_deviation_pct) < 0.1
    assert result.input_size == (3, 224, 224) and 'FlopCounterMode' in result.macs_counter


def test_torchvision_model_params_and_no_deviation_off_card_size():
    result = profile_model('googlenet', img_size=64, batch_size=2, mode='infer', memory=False, **FAST)
    assert result.source == 'torchvision'
    assert result.params == visionmix.model_card('googlenet').params
    assert result.input_size == (3, 64, 64)
    assert result.macs_deviation_pct is None  # the card's figure is for 224: a % at 64 would mean nothing


def test_stats_median_and_iqr():
    s = Stats.of([4.0, 1.0, 3.0, 2.0, 100.0])
    assert s.median == 3.0 and s.q1 == 2.0 and s.q3 == 4.0 and s.iqr == 2.0 and s.n == 5
    assert Stats.of([5.0]).iqr == 0.0


# ----------------------------------------------------------------------------------------------------- user modules

def test_user_module_through_api():
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    result = profile_model(net, img_size=32, batch_size=2, memory=False, **FAST)
    assert isinstance(result, ProfileResult)
    assert result.model == 'TinyNet' and result.source == 'module'
    assert result.params == count_params(net) == 3 * 9 * 8 + 8 + 8 * 10 + 10
    assert result.gmacs * 1e9 == tiny_macs(32)
    assert result.card_params is None and result.paper_gmacs is None and result.macs_deviation_pct is None
    assert result.latency_ms.n == 2 and result.infer_img_s.median > 0 and result.train_img_s.median > 0
    assert result.infer_gflops == pytest.approx(2 * tiny_macs(32) * result.infer_img_s.median / 1e9)
    assert result.gemm_peak_gflops > 0 and result.infer_peak_pct > 0
    # the training steps ran on a copy: the caller's weights and mode are untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and net.training


def test_threads_restored_and_channels_last():
    threads = torch.get_num_threads()
    result = profile_model(TinyNet(), img_size=(24, 40), batch_size=2, channels_last=True, mode='train',
                           memory=False, warmup=1, iters=2, threads=1)
    assert torch.get_num_threads() == threads
    assert result.input_size == (3, 24, 40) and result.channels_last and result.threads == 1
    assert result.latency_ms is None and result.train_img_s is not None


@pytest.mark.slow
def test_compile():
    result = profile_model(TinyNet(), img_size=32, batch_size=2, compile=True, memory=False, **FAST)
    assert result.compiled and result.infer_img_s.median > 0


# ----------------------------------------------------------------------------------------------------- memory

def test_memory_positive_for_small_model():
    # the conv output alone is 4*64*128*128*4 bytes = 16 MiB
    mem = measure_peak_memory(WideNet(), (3, 128, 128), batch_size=4, threads=1, in_process=True)
    assert mem.note == '' and 'clear_refs' in mem.method and 'this process' in mem.method
    assert mem.forward_mb > 8 and mem.train_mb > 8


@pytest.mark.slow  # the spawned child imports torch, timm and visionmix afresh: 5-20 s on a shared machine
def test_memory_in_spawned_child():
    mem = measure_peak_memory(WideNet(), (3, 128, 128), batch_size=4, threads=1)
    assert mem.note == '', mem.note
    assert 'spawned child' in mem.method and mem.forward_mb > 8 and mem.train_mb > 8
    result = profile_model('mobilenetv2_100', img_size=32, batch_size=2, mode='infer', **FAST)
    assert result.forward_peak_mb > 0 and result.train_peak_mb is None and 'clear_refs' in result.memory_method


def test_memory_of_unpicklable_module_is_none_with_reason():
    class Local(nn.Module):  # defined in a function: pickle cannot find it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    mem = measure_peak_memory(Local(), (3, 8, 8), batch_size=1)
    assert mem.forward_mb is None and mem.train_mb is None and 'pickle' in mem.note


# ----------------------------------------------------------------------------------------------------- comparison

def test_compare_speed_modules_interleaved():
    comparison = compare_speed(TinyNet(), WideNet(), img_size=16, batch_size=2, mode='both', warmup=1, iters=3,
                               threads=1, names=('tiny', 'wide'))
    assert isinstance(comparison, Comparison) and (comparison.a, comparison.b) == ('tiny', 'wide')
    for timing in (comparison.infer, comparison.train):
        assert len(timing.ratios) == len(timing.a_ms) == len(timing.b_ms) == 3
        assert timing.ratios == pytest.approx([b / a for a, b in zip(timing.a_ms, timing.b_ms)])
        assert timing.ratio.median == pytest.approx(statistics.median(timing.ratios))


def test_cli_vs_one_ratio_per_pair_and_median(capsys):
    argv = ['profile', 'mobilenetv2_100', '--vs', 'mobilenetv1_100', '--img-size', '32', '--batch-size', '2',
            '--warmup', '1', '--iters', '3', '--threads', '1']
    assert main([*argv, '--format', 'json']) == 0
    [comparison] = json.loads(capsys.readouterr().out)
    infer = comparison['infer']
    assert comparison['train'] is None and len(infer['ratios']) == 3
    assert infer['ratio']['median'] == pytest.approx(statistics.median(infer['ratios']))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'ratio A/B' in out and 'median' in out and out.count('infer') >= 4


# ----------------------------------------------------------------------------------------------------- formats

@pytest.fixture(scope='module')
def results() -> list[ProfileResult]:
    return [profile_model(TinyNet(), img_size=32, batch_size=2, memory=False, **FAST),
            profile_model(WideNet(), img_size=32, batch_size=2, mode='infer', memory=False, **FAST)]


def test_json_format(results):
    data = json.loads(render(results, 'json'))
    assert [d['model'] for d in data] == ['TinyNet', 'WideNet']
    assert data[0]['latency_ms']['n'] == 2 and data[1]['train_img_s'] is None


def test_csv_format(results):
    rows = list(csv.DictReader(io.StringIO(render(results, 'csv'))))
    assert [r['model'] for r in rows] == ['TinyNet', 'WideNet']
    assert float(rows[0]['gmacs']) * 1e9 == pytest.approx(tiny_macs(32)) and rows[1]['train_img_s'] == ''


def test_md_format(results):
    lines = render(results, 'md').splitlines()
    assert lines[0].startswith('| model |') and set(lines[1]) <= set('|-')
    assert lines[2].startswith('| TinyNet |') and lines[3].startswith('| WideNet |')
    assert any('FlopCounterMode' in line for line in lines)


def test_plot(results, tmp_path):
    path = plot_profiles(results, tmp_path / 'speed.png')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_formats_and_files(capsys, tmp_path):
    base = ['profile', 'mobilenetv2_100', '--img-size', '32', '--batch-size', '2', '--warmup', '1', '--iters', '2',
            '--threads', '1', '--no-memory']
    assert main([*base, '--format', 'csv']) == 0
    [row] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row['model'] == 'mobilenetv2_100' and int(row['params']) == visionmix.model_card('mobilenetv2_100').params
    assert main([*base, '--format', 'md']) == 0
    assert capsys.readouterr().out.startswith('| model |')
    out_file, plot_file = tmp_path / 'p.json', tmp_path / 'p.png'
    assert main([*base, '--output', str(out_file), '--plot', str(plot_file)]) == 0
    out = capsys.readouterr().out
    assert 'visionmix profile' in out and 'GMACs' in out  # the table still goes to the terminal
    assert json.loads(out_file.read_text())[0]['model'] == 'mobilenetv2_100'
    assert plot_file.stat().st_size > 0


def test_cli_several_models_table(capsys):
    assert main(['profile', 'mobilenetv2_100', 'googlenet', '--img-size', '32', '--batch-size', '2', '--warmup', '1',
                 '--iters', '2', '--threads', '1', '--no-memory', '--mode', 'infer']) == 0
    out = capsys.readouterr().out
    assert 'mobilenetv2_100' in out and 'googlenet' in out and 'FlopCounterMode' in out


# ----------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize('extra, message', [
    (['resnet05'], 'resnet50'),
    (['mobilenetv2_100', '--batch-size', '0'], 'batch size'),
    (['mobilenetv2_100', '--batch-size', '-3'], 'batch size'),
    (['mobilenetv2_100', '--iters', '0'], 'iters'),
    (['mobilenetv2_100', '--img-size', '0'], 'image size'),
    (['mobilenetv2_100', '--format', 'xml'], 'unknown format'),
    (['mobilenetv2_100', '--output', '/nonexistent_dir/out.json'], 'cannot write'),
    (['mobilenetv2_100', '--output', 'out.txt'], 'pass --format'),
    (['mobilenetv2_100', '--vs', 'resnet05'], 'resnet50'),
    # a size-tied model is built for the size asked; a model whose stages cannot shrink that far still fails in one
    (['spach_ms_xxs_patch4_224_conv', '--img-size', '8'], 'model spach_ms_xxs_patch4_224_conv cannot take input '
                                                         '3x8x8: '),
])
def test_cli_bad_arguments_are_one_line(extra, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(['profile', *extra, '--iters', extra[-1] if extra[-2:-1] == ['--iters'] else '1', '--warmup',
                     '0', '--no-memory', '--threads', '1'])
    except SystemExit as e:  # argparse's own checks (a size that is not N or HxW) exit the same way
        code = e.code
    assert code == 2
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert message in out and 'Traceback' not in out
    assert len(out.strip().splitlines()) == 1, out


def test_api_errors():
    with pytest.raises(visionmix.UnknownModelError, match='resnet50'):
        profile_model('resnet05')
    with pytest.raises(ProfileError, match='mode'):
        profile_model(TinyNet(), mode='fast')
    with pytest.raises(ProfileError, match='cannot take input 3x2x2'):
        profile_model(nn.Sequential(nn.Conv2d(3, 4, 5), nn.Flatten()), img_size=2, memory=False, **FAST)
    with pytest.raises(ProfileError, match='nn.Module'):
        profile_model(42)  # type: ignore[arg-type]
