"""visionmix study spach: cost-matched pairs, the paired statistics and verdicts, resume, and a --quick smoke run."""
import json

import pytest

from visionmix.cli import main
from visionmix.study import CONCLUSIONS, CONFIGS, combine_verdicts, config_costs, pair_costs, paired_difference
from visionmix.engine import runs as study_runs
from visionmix.study.report import PLOTS
from visionmix.study.spach import COST_TOLERANCE, DESIGN_IMG_SIZE, METRICS, top1_at_equal_loss

TINY = ['--dataset', 'cluttered-digits:32', '--epochs', '1', '--img-size', '32', '--seeds', '2', '--jobs', '1']


def test_every_pair_is_matched_in_params_and_macs():
    labels = {e.label for e in CONFIGS}
    pairs = [p for c in CONCLUSIONS for p in c.pairs]
    assert len(pairs) == 11 and all(p.better in labels and p.other in labels for p in pairs)
    assert all(p.metric in METRICS for p in pairs) and [c.key for c in CONCLUSIONS] == list('12345')
    for row in pair_costs(config_costs(CONFIGS, DESIGN_IMG_SIZE)):
        for ratio in (row['params_ratio'], row['macs_ratio']):
            assert 1 - COST_TOLERANCE <= ratio <= 1 / (1 - COST_TOLERANCE), row
        assert row['matched'], row


def test_pairs_change_only_the_property_under_test():
    kw = {e.label: e.kwargs for e in CONFIGS}
    assert kw['Attn-MS-noCPE'] == dict(kw['Attn-MS'], cpe=False) and kw['MLP-MS-noCPE'] == dict(kw['MLP-MS'], cpe=False)
    assert kw['MLP-MS-shared'] == dict(kw['MLP-MS'], shared_spatial=True)
    assert [stage[0] for stage in kw['Hybrid-MS']['net_arch']] == ['pass', 'pass', 'attn']  # conv early, attn late


def test_a_known_difference_is_held_and_equal_samples_are_inconclusive():
    better, other = [80.0, 82.0, 81.0], [75.0, 76.5, 76.0]
    held = paired_difference(better, other)
    assert held['verdict'] == 'held' and held['diffs'] == [5.0, 5.5, 5.0] and held['n'] == 3
    # mean 5.1667, sd 0.2887, t(0.975, 2) = 4.3027: half width 0.717
    assert held['mean'] == pytest.approx(31 / 6) and held['ci'] == pytest.approx([31 / 6 - 0.7171, 31 / 6 + 0.7171],
                                                                                  abs=1e-3)
    same = paired_difference(other, other)
    assert same['verdict'] == 'inconclusive' and same['ci'] == [0.0, 0.0]
    assert paired_difference(other, better)['verdict'] == 'not held'
    noisy = paired_difference([80.0, 70.0, 85.0], [75.0, 76.0, 76.0])  # mean +2.67 but the seeds disagree
    assert noisy['verdict'] == 'inconclusive' and noisy['ci'][0] < 0 < noisy['ci'][1]
    assert paired_difference([1.0], [0.0])['verdict'] == 'inconclusive'  # one seed: no interval
    assert combine_verdicts(['held', 'held']) == 'held'
    assert combine_verdicts(['held', 'inconclusive']) == 'inconclusive'
    assert combine_verdicts(['held', 'not held']) == 'not held'


def test_val_accuracy_at_equal_train_loss():
    conv = dict(history=[dict(train_loss=2.0, val_top1=20.0), dict(train_loss=1.0, val_top1=60.0),
                         dict(train_loss=0.8, val_top1=62.0)])
    attn = dict(history=[dict(train_loss=2.0, val_top1=30.0), dict(train_loss=1.5, val_top1=40.0),
                         dict(train_loss=0.5, val_top1=50.0)])
    # both reached 0.8: conv at its last epoch (62), attention between 1.5 (40) and 0.5 (50) -> 47
    assert top1_at_equal_loss(conv, attn) == pytest.approx(62.0 - 47.0)


def test_quick_smoke_interrupted_then_resumed(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'study'
    real, calls = study_runs.train_one, []

    def interrupted(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[0].label)
        return real(*args, **kwargs)

    monkeypatch.setattr(study_runs, 'train_one', interrupted)
    assert main(['study', 'spach', '--quick', *TINY, '--output', str(out)]) == 130
    assert 'run the same command again' in capsys.readouterr().out
    monkeypatch.setattr(study_runs, 'train_one', real)
    assert main(['study', 'spach', '--quick', *TINY, '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count('done before') == 3 and 'ETA' in printed and 'all runs done' in printed
    for name in ('report.md', 'results.json', *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / 'results.json').read_text())
    assert (results['runs_reused'], results['runs_trained'], results['seeds']) == (3, 17, [0, 1])
    assert [c['verdict'] in ('held', 'not held', 'inconclusive') for c in results['conclusions']] == [True] * 5
    assert all(p['ci'] is not None and len(p['diffs']) == 2 for p in results['pairs'])
    assert results['baseline']['constant_top1'] == pytest.approx(12.5)  # 8 balanced val images of 10 classes
    report = (out / 'report.md').read_text()
    assert '## Verdicts' in report and 'params ratio' in report and 'pair_differences.png' in report


def test_study_errors_are_one_line(capsys, tmp_path):
    for argv in (['study', 'spach', '--seeds', '0', '--output', str(tmp_path)],
                 ['study', 'spach', '--jobs', '0', '--output', str(tmp_path / 'b')],
                 ['study', 'spach', '--dataset', 'nope', '--output', str(tmp_path / 'c')]):
        code = main(argv)
        out = capsys.readouterr().out.strip()
        assert code == 2 and out.startswith('error:') and '\n' not in out, (argv, out)
