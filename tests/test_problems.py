"""Test functions, the catalogue and the synthetic data sets (jaxdescent.problems)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdescent as jd
from jaxdescent.problems import CATALOGUE, TestFunction

NAMES = {
    "quadratic",
    "rosenbrock",
    "himmelblau",
    "saddle",
    "saddle_quartic",
    "monkey_saddle",
    "six_hump_camel",
    "rastrigin",
    "beale",
}
KINDS = {"minimum", "maximum", "saddle", "degenerate"}


def test_catalogue_entries_are_well_formed():
    assert set(CATALOGUE) == NAMES
    for name, entry in CATALOGUE.items():
        assert isinstance(entry, TestFunction)
        assert entry.fn is getattr(jd.problems, name)
        assert jd.problems.get(name) is entry
        (xmin, xmax), (ymin, ymax) = entry.domain
        assert xmin < xmax and ymin < ymax
        assert xmin <= entry.start[0] <= xmax and ymin <= entry.start[1] <= ymax
        assert entry.critical_points, name
        for point, kind in entry.critical_points:
            assert kind in KINDS, (name, kind)
            assert len(point) == 2 and all(isinstance(v, float) for v in point)
            assert xmin <= point[0] <= xmax and ymin <= point[1] <= ymax, (name, point)
        assert float(entry(jnp.asarray(entry.start))) == float(entry.fn(jnp.asarray(entry.start)))
    assert CATALOGUE["rosenbrock"].start == (-1.2, 1.0)


def test_critical_points_are_stationary_and_minima_are_lowest(x64):
    for name, entry in CATALOGUE.items():
        grad = jax.jit(jax.grad(entry.fn))
        points = jnp.asarray([p for p, _ in entry.critical_points], jnp.float64)
        norms = np.asarray(jnp.linalg.norm(jax.vmap(grad)(points), axis=1))
        assert np.all(norms < 1e-8), (name, norms)
    # known values
    assert float(jd.problems.rosenbrock(jnp.array([1.0, 1.0]))) == 0.0
    assert float(jd.problems.himmelblau(jnp.array([3.0, 2.0]))) == 0.0
    assert float(jd.problems.beale(jnp.array([3.0, 0.5]))) == 0.0
    assert float(jd.problems.rastrigin(jnp.zeros(2))) == 0.0
    assert float(jd.problems.quadratic(jnp.array([1.0, -1.0]))) == pytest.approx(-1.0)
    camel = float(jd.problems.six_hump_camel(jnp.array([0.089842013100, -0.712656403021])))
    assert camel == pytest.approx(-1.031628453, abs=1e-9)
    counts = {k: 0 for k in KINDS}
    for _, kind in CATALOGUE["six_hump_camel"].critical_points:
        counts[kind] += 1
    assert counts == {"minimum": 6, "maximum": 2, "saddle": 7, "degenerate": 0}


def test_get_lists_valid_names_for_unknown_ones():
    with pytest.raises(ValueError, match="rosenbrock") as err:
        jd.problems.get("rosenbrok")
    assert "'rosenbrok'" in str(err.value) and "himmelblau" in str(err.value)


def test_functions_batch_over_leading_axes_and_keep_dtype():
    grid = jax.random.normal(jax.random.key(0), (4, 5, 2), jnp.float32)
    for name, entry in CATALOGUE.items():
        values = entry.fn(grid)
        assert values.shape == (4, 5) and values.dtype == jnp.float32, name
        expected = jax.vmap(jax.vmap(entry.fn))(grid)
        np.testing.assert_allclose(values, expected, rtol=1e-6, err_msg=name)
    with jax.enable_x64(True):
        for entry in CATALOGUE.values():
            assert entry.fn(jnp.ones(2, jnp.float64)).dtype == jnp.float64


def test_rosenbrock_and_rastrigin_in_more_dimensions():
    assert float(jd.problems.rosenbrock(jnp.ones(5))) == 0.0
    x = jnp.array([0.5, -1.0, 2.0])
    expected = 100 * (-1.0 - 0.25) ** 2 + 0.25 + 100 * (2.0 - 1.0) ** 2 + 4.0
    assert float(jd.problems.rosenbrock(x)) == pytest.approx(expected)
    assert float(jd.problems.rastrigin(jnp.zeros(7))) == 0.0


def test_make_quadratic():
    a = np.array([[2.0, 1.0], [0.0, 4.0]])  # not symmetric: only its symmetric part counts
    b = np.array([1.0, -2.0])
    f = jd.problems.make_quadratic(a, b, c=3.0)
    x = np.array([0.7, -1.3])
    assert float(f(jnp.asarray(x))) == pytest.approx(0.5 * x @ a @ x - b @ x + 3.0, rel=1e-6)
    sym = 0.5 * (a + a.T)
    np.testing.assert_allclose(jax.hessian(f)(jnp.asarray(x)), sym, rtol=1e-6)
    with pytest.raises(ValueError, match="square"):
        jd.problems.make_quadratic(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="b must have shape"):
        jd.problems.make_quadratic(np.eye(2), np.ones(3))


# --- data sets -------------------------------------------------------------------------------

DATASETS = {
    "regression_with_outliers": (jd.problems.regression_with_outliers, 1),
    "two_moons": (jd.problems.two_moons, 2),
    "linearly_separable": (jd.problems.linearly_separable, 2),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_datasets_shapes_dtypes_and_keys(name):
    make, d = DATASETS[name]
    x, y = make(jax.random.key(0), n=41)
    assert x.shape == (41, d) and y.shape == (41,)
    assert x.dtype == jnp.float32 and y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(y)))
    x2, y2 = make(jax.random.key(0), n=41)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = make(jax.random.key(1), n=41)
    assert not np.allclose(x, x3)
    with pytest.raises(ValueError, match="n"):
        make(jax.random.key(0), n=0)
    with jax.enable_x64(True):  # still float32
        x, y = make(jax.random.key(0), n=5)
        assert x.dtype == jnp.float32 and y.dtype == jnp.float32


def test_regression_with_outliers():
    n, frac = 200, 0.1
    x, y = jd.problems.regression_with_outliers(jax.random.key(3), n=n, outlier_fraction=frac)
    residual = np.asarray(y - (2.0 * x[:, 0] + 1.0))
    assert int(np.sum(residual > 4.0)) == round(frac * n)
    assert np.all(np.abs(residual[residual <= 4.0]) < 1.5)
    assert np.all((np.asarray(x) >= -2.0) & (np.asarray(x) <= 2.0))
    _, clean = jd.problems.regression_with_outliers(jax.random.key(3), n=50, outlier_fraction=0)
    assert np.all(np.isfinite(np.asarray(clean)))
    with pytest.raises(ValueError, match="outlier_fraction"):
        jd.problems.regression_with_outliers(jax.random.key(0), outlier_fraction=1.5)
    with pytest.raises(ValueError, match="noise"):
        jd.problems.regression_with_outliers(jax.random.key(0), noise=-1.0)


def test_two_moons_matches_scikit_learn_without_noise():
    from sklearn.datasets import make_moons

    x, y = jd.problems.two_moons(jax.random.key(0), n=101, noise=0.0)
    ref_x, ref_y = make_moons(n_samples=101, noise=0.0, shuffle=False)

    def canonical(points, labels):  # by label, then x (distinct within each moon)
        order = np.lexsort((points[:, 0], labels))
        return points[order], labels[order]

    ours = canonical(np.asarray(x, np.float64), np.asarray(y, np.float64))
    theirs = canonical(ref_x, ref_y.astype(np.float64))
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-6)
    np.testing.assert_array_equal(ours[1], theirs[1])
    _, y = jd.problems.two_moons(jax.random.key(1), n=100, noise=0.2)
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 1.0} and float(y.sum()) == 50.0
    with pytest.raises(ValueError, match="noise"):
        jd.problems.two_moons(jax.random.key(0), noise=-0.1)


def test_linearly_separable_classes_are_separated_by_a_margin():
    from sklearn.svm import LinearSVC

    x, y = jd.problems.linearly_separable(jax.random.key(0), n=200, d=3, margin=0.5)
    svm = LinearSVC(C=1e4, max_iter=100_000).fit(np.asarray(x), np.asarray(y))
    assert svm.score(np.asarray(x), np.asarray(y)) == 1.0
    margins = np.abs(np.asarray(x) @ svm.coef_[0] + svm.intercept_[0]) / np.linalg.norm(
        svm.coef_[0]
    )
    assert margins.min() > 0.4  # the gap is 2 * 0.5 wide
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="d"):
        jd.problems.linearly_separable(jax.random.key(0), d=0)
