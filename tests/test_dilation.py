"""HDC rules, rate schedules and exact coverage maps of stacked dilated convolutions (visionmix.dilation)."""
import ast
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from visionmix.dilation import HDCCheck, coverage, hdc_check, hdc_rates, holes, receptive_field
from visionmix.errors import ConfigError, VisionmixError


def loop_coverage(rates, k):
    """Reference: from the centre output pixel, add each position's count at every tap of each layer, top first."""
    side = 1 + sum((k - 1) * r for r in rates)
    grid = [[0] * side for _ in range(side)]
    grid[side // 2][side // 2] = 1
    half = (k - 1) // 2
    for r in reversed(rates):
        new = [[0] * side for _ in range(side)]
        for y, x in itertools.product(range(side), repeat=2):
            if grid[y][x]:
                for dy, dx in itertools.product(range(-half, half + 1), repeat=2):
                    new[y + dy * r][x + dx * r] += grid[y][x]
        grid = new
    return np.array(grid, dtype=np.int64)


def paper_recursion(rates):
    m = [rates[-1]]
    for r in rates[-2::-1]:
        m.insert(0, max(m[0] - 2 * r, m[0] - 2 * (m[0] - r), r))
    return tuple(m)


@pytest.mark.parametrize('k', [3, 5])
@pytest.mark.parametrize('rates', [[1], [2], [1, 2, 5], [2, 2, 2], [1, 2, 9], [3, 1, 2], [2, 4, 6], [1, 3, 1, 2]])
def test_coverage_equals_loop(rates, k):
    cov = coverage(rates, k)
    assert cov.dtype == np.int64
    np.testing.assert_array_equal(cov, loop_coverage(rates, k))
    assert cov.sum() == k ** (2 * len(rates))  # every path ends somewhere
    assert cov.shape == (receptive_field(rates, k),) * 2


def test_coverage_order_free_and_symmetric():
    cov = coverage([1, 2, 5])
    np.testing.assert_array_equal(cov, coverage([5, 1, 2]))
    np.testing.assert_array_equal(cov, cov.T)
    np.testing.assert_array_equal(cov, cov[::-1, ::-1])


def test_coverage_size_pads_and_crops_centrally():
    cov = coverage([1, 2, 5])  # 17 x 17
    big = coverage([1, 2, 5], size=21)
    np.testing.assert_array_equal(big[2:-2, 2:-2], cov)
    assert big.sum() == cov.sum() and holes(big) == holes(cov) == 0
    np.testing.assert_array_equal(coverage([1, 2, 5], size=5), cov[6:11, 6:11])
    assert coverage([2, 2, 2], size=1).tolist() == [[49]]  # 7 ways per axis to sum three taps to 0


@pytest.mark.parametrize('size', [4, 0, -3, 2.0, 5001])
def test_coverage_bad_size(size):
    with pytest.raises(ConfigError, match='odd int') as e:
        coverage([1, 2, 5], size=size)
    assert '\n' not in str(e.value)


def test_coverage_overflow_is_refused():
    with pytest.raises(ConfigError, match='int64'):
        coverage([1] * 40)


def test_holes():
    assert holes(coverage([2, 2, 2])) == 13 * 13 - 7 * 7 > 0
    assert holes(coverage([1, 2, 5])) == 0
    assert holes(coverage([1, 2, 9])) == hdc_check([1, 2, 9]).holes == 25 * 25 - 21 * 21  # 1-D holes at +-4 and +-5
    assert holes(np.zeros((3, 3))) == 0
    with pytest.raises(ConfigError):
        holes(np.zeros(5))


def test_receptive_field():
    assert receptive_field([1, 2, 5]) == 17
    assert receptive_field([1, 2, 5], kernel_size=5) == 33
    assert receptive_field([7], kernel_size=1) == 1


@pytest.mark.parametrize('rates, ok, cause', [
    ([1, 2, 5], True, 'M_2 = 2 <= 3'),
    ([1, 2, 9], False, 'M_2 = 5 > kernel size 3'),
    ([2, 4, 6], False, 'multiple of 2'),
    ([2, 2, 2], False, 'multiple of 2'),
    ([1], True, 'single 3x3 layer at rate 1'),
    ([2], False, 'multiple of 2'),
    ([2, 3], False, 'start the rates with 1'),
    ([1, 2, 5, 1, 2, 5], True, "paper's recursion bounds M_2 by 5"),
])
def test_hdc_check_verdicts(rates, ok, cause):
    check = hdc_check(rates)
    assert isinstance(check, HDCCheck)
    assert check.ok is ok and (check.holes == 0) is ok
    assert cause in check.reason and '\n' not in check.reason
    assert check.rates == tuple(rates) and check.kernel_size == 3
    assert check.common_factor == math.gcd(*rates)
    assert check.m_paper == paper_recursion(rates)


def test_hdc_check_m_lists():
    check = hdc_check([1, 2, 9])
    assert check.m == (3, 5, 9)  # m[0] = M_1 (bottom), m[-1] = M_n = r_n
    assert check.m[1] == 5 > 3
    assert hdc_check([1, 2, 5]).m == hdc_check([1, 2, 5]).m_paper == (1, 2, 5)
    assert hdc_check([2, 2, 2]).common_factor == 2
    assert hdc_check([2]).holes == 16  # 5 x 5 field, 3 x 3 reached
    # the recursion is only an upper bound: [1, 2, 5] twice has no holes though it gives M_2 = 5
    assert hdc_check([1, 2, 5, 1, 2, 5]).m == (1, 1, 1, 1, 2, 5)
    assert hdc_check([4], kernel_size=1).ok and hdc_check([4], kernel_size=1).m == (0,)


def test_hdc_check_agrees_with_coverage():
    rng = random.Random(0)
    for _ in range(150):
        k = rng.choice([1, 3, 5])
        rates = [rng.randint(1, 7) for _ in range(rng.randint(1, 4))]
        check = hdc_check(rates, k)
        assert check.holes == holes(coverage(rates, k)), (rates, k)
        assert check.ok == (check.m[0] <= 1)
        if k == 3:  # the paper's recursion never promises less than the exact gap for 3x3 kernels
            assert all(p >= e for p, e in zip(check.m_paper, check.m))


@pytest.mark.parametrize('rates, kernel_size', [
    ([], 3), ([0], 3), ([-1, 2], 3), ([1.5], 3), (['a'], 3), ('1,2,5', 3), ([True], 3), (None, 3),
    ([1, 2], 4), ([1], 0), ([1], 2.0), ([10 ** 7], 3),
])
def test_bad_input_is_one_line_config_error(rates, kernel_size):
    for fn in (hdc_check, receptive_field, coverage):
        with pytest.raises(ConfigError) as e:
            fn(rates, kernel_size)
        assert isinstance(e.value, VisionmixError) and '\n' not in str(e.value)


def test_hdc_rates():
    assert hdc_rates(6) == [1, 2, 5, 1, 2, 5]
    assert hdc_rates(1) == [1]
    assert hdc_rates(2) == [1, 2]
    assert hdc_rates(5, max_rate=4) == [1, 2, 3, 1, 2]  # the paper's other example group
    assert hdc_rates(3, max_rate=2) == [1, 2, 1]
    assert hdc_rates(3, max_rate=1) == [1, 1, 1]
    assert hdc_rates(3, kernel_size=5) == [1, 4, 19]
    assert hdc_rates(4, cycle=4) == [1, 2, 5, 13]
    for k, n, cap, cycle in itertools.product([1, 3, 5, 7], range(1, 10), [None, 2, 3, 5, 9], [1, 2, 3, 4]):
        rates = hdc_rates(n, k, cap, cycle)
        assert len(rates) == n and hdc_check(rates, k).ok, (n, k, cap, cycle)
        assert cap is None or max(rates) <= cap


@pytest.mark.parametrize('kwargs', [dict(num_layers=0), dict(num_layers=2.5), dict(num_layers=3, max_rate=0),
                                    dict(num_layers=3, kernel_size=4), dict(num_layers=3, cycle=0)])
def test_hdc_rates_bad_input(kwargs):
    with pytest.raises(ConfigError) as e:
        hdc_rates(**kwargs)
    assert '\n' not in str(e.value)


def test_dilation_is_a_leaf_module():
    import visionmix.dilation as mod
    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {('.' * n.level) + (n.module or '') for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {'__future__', 'math', 'numbers', 'collections.abc', 'dataclasses', 'numpy', '.errors'}
