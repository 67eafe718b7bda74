"""compare: two tiny models under one recipe write every report file; re-running skips finished runs."""
import csv
import json
import os

import pytest

from visionmix.cli import main
from visionmix.engine.compare import (DEFAULT_STUDY, REPORT_FILES, CompareError, _pareto, compare,
                                      parse_model_arg, point_style, scatter_figure)
import visionmix
from visionmix.registry import list_presets

TINY_RECIPE = dict(img_size=16, limit_train=256, batch_size=32, lr=5e-3, warmup_epochs=0, threads=1)


def test_compare_two_tiny_models_writes_every_report_file(tmp_path, capsys):
    models = [parse_model_arg("spach_ms:{net_arch: [[pass, 1]], embed_dim: 8}"),
              parse_model_arg("spach_ms:{net_arch: [[attn, 1]], embed_dim: 8, num_heads: 1}")]
    out = tmp_path / 'cmp'
    results = compare(models, epochs=1, overrides=TINY_RECIPE, output=out, command='visionmix compare (test)', jobs=2)
    printed = capsys.readouterr().out
    assert '2 run(s) at a time' in printed and 'all runs done' in printed
    assert '[1/2] spach_ms:{net_arch: [[pass, 1]]' in printed  # YAML brackets are not rich markup
    assert all((out / label / 'seed0' / 'console.log').stat().st_size > 0 for label in os.listdir(out)
               if (out / label / 'seed0').is_dir())  # each worker's epoch lines
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = results['models']
    assert [r['model'] for r in rows] == ['spach_ms', 'spach_ms'] and len({r['label'] for r in rows}) == 2
    for r in rows:
        assert r['params'] > 0 and r['gmacs'] > 0 and r['infer_img_s'] > 0 and r['train_img_s'] > 0
        assert 0 <= r['top1_mean'] <= 100 and r['top1_std'] is None and r['n'] == 1 and len(r['history']) == 1
    with open(out / 'results.csv') as f:
        assert len(list(csv.DictReader(f))) == 2
    report = (out / 'report.md').read_text()
    assert 'visionmix compare (test)' in report and 'top1_vs_macs.png' in report and 'lr: 0.005' in report
    assert '+-' not in report and 'one seed, so no spread' in report  # one seed: no spread printed
    assert json.loads((out / 'results.json').read_text())['models'][0]['label'] == rows[0]['label']

    capsys.readouterr()
    again = compare(models, epochs=1, overrides=TINY_RECIPE, output=out)  # resume: nothing to train
    assert 'done before' in capsys.readouterr().out
    assert [r['top1_mean'] for r in again['models']] == [r['top1_mean'] for r in rows]
    with pytest.raises(CompareError, match='another recipe'):
        compare(models, epochs=2, overrides=TINY_RECIPE, output=out)


def test_default_study_is_data_driven_and_registered():
    labels = [e.label for e in DEFAULT_STUDY]
    assert len(set(labels)) == len(labels)
    presets = list_presets()
    spatial = {stage[0] for e in DEFAULT_STUDY for stage in presets[e.model][1].get('net_arch', [])}
    assert {'pass', 'attn', 'mlp', 'hire', 'window_mlp', 'shift'} <= spatial
    assert parse_model_arg('spach-conv') is DEFAULT_STUDY[0]
    # the labels are model names everywhere (train, profile, ...), case-insensitively
    for entry in DEFAULT_STUDY:
        assert visionmix.model_card(entry.label.lower()).name == entry.label


def test_pareto_front():
    # (MACs, top-1): lower MACs and higher top-1 win
    assert _pareto([(1, 90), (2, 95), (3, 94), (0.5, 80)], higher_x_better=False) == [3, 0, 1]
    assert _pareto([(100, 90), (50, 85), (10, 99)], higher_x_better=True) == [2, 0]


def test_compare_errors_are_one_line(capsys, tmp_path):
    for argv in (['compare', '--models', 'no_such_model'], ['compare', '--models', 'spach_ms:[1, 2]'],
                 ['compare', '--dataset', 'nope', '--output', str(tmp_path)],
                 ['compare', '--seeds', '1', '1', '--output', str(tmp_path)],
                 ['compare', '--set', 'model=resnet50', '--output', str(tmp_path)]):
        code = main(argv)
        out = capsys.readouterr().out.strip()
        assert code == 2 and out.startswith('error:') and '\n' not in out, (argv, out)


def _plot_rows(n_close: int, n_far: int) -> list[dict]:
    # close points: within 0.1% in MACs and 0.1 points in top-1, where labels next to the points would collide
    rows = [dict(label=f'close-model-{i}', gmacs=1e-3 * (1 + 1e-4 * i), top1_mean=90 + 0.01 * i, top1_std=0.2)
            for i in range(n_close)]
    rows += [dict(label=f'far-model-{i}', gmacs=1e-2 * (i + 1), top1_mean=80 + i, top1_std=0.0) for i in range(n_far)]
    return rows + [dict(label='not-profiled', gmacs=None, top1_mean=50.0, top1_std=0.0)]  # no point to plot


@pytest.mark.parametrize('n_close, n_far', [(8, 6), (40, 10)])
def test_pareto_plot_names_every_model_in_a_legend_outside_the_axes(n_close, n_far):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    rows = _plot_rows(n_close, n_far)
    fig = scatter_figure(rows, 'gmacs', 'GMACs', higher_x_better=False)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        names = [t.get_text() for t in legend.get_texts()]
        plotted = [r['label'] for r in rows if r['gmacs']]
        assert sorted(names) == sorted(plotted + ['Pareto front'])  # every plotted model once, by name
        # each model its own colour + marker, so a legend entry points at one point
        styles = {(to_hex(c.lines[0].get_color()), c.lines[0].get_marker()) for c in ax.containers}
        assert len(styles) == len(plotted) == len(ax.containers)
        # the legend sits beside the axes (covers no point) and inside the figure (not cut off in the PNG)
        legend_box, ax_box, fig_box = legend.get_window_extent(), ax.get_window_extent(), fig.bbox
        assert legend_box.x0 >= ax_box.x1 and not legend_box.overlaps(ax_box)
        assert fig_box.x0 <= legend_box.x0 and legend_box.x1 <= fig_box.x1
        assert fig_box.y0 <= legend_box.y0 and legend_box.y1 <= fig_box.y1
    finally:
        plt.close(fig)


def test_point_styles_are_distinct_for_sixty_models():
    assert len({(point_style(i)['color'], point_style(i)['marker']) for i in range(60)}) == 60


def test_ctrl_c_in_compare_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from visionmix.engine import runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, 'train_one', interrupted)
    argv = ['compare', '--models', 'spach_ms:{net_arch: [[pass, 1]], embed_dim: 8}', '--epochs', '1', '--jobs', '1',
            '--no-profile', '--output', str(tmp_path / 'cmp')]
    assert main(argv) == 130
    out = capsys.readouterr().out
    assert 'interrupted: finished runs and finished epochs are kept' in out and 'Traceback' not in out
