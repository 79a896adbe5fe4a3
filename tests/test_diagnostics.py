"""Hessians, spectra and critical-point classification (jaxdescent.diagnostics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdescent as jd
from jaxdescent.diagnostics import CriticalPoint


def _rosenbrock_hessian(x, y):
    return np.array([[1200 * x**2 - 400 * y + 2, -400 * x], [-400 * x, 200.0]])


def test_hessian_closed_forms_pytrees_and_args(x64):
    x = jnp.array([-1.2, 1.0])
    np.testing.assert_allclose(
        jd.diagnostics.hessian(jd.problems.rosenbrock, x), _rosenbrock_hessian(-1.2, 1.0)
    )
    np.testing.assert_allclose(
        jd.diagnostics.hessian(jd.problems.quadratic, x), [[3.0, 1.0], [1.0, 1.0]]
    )

    # pytree params and extra arguments: least squares, Hessian 2 X^T X / n on (b, w) order
    xs = jax.random.normal(jax.random.key(0), (20, 3), jnp.float64)
    ys = jnp.arange(20.0)

    def loss(params, batch):
        inputs, targets = batch
        return jnp.mean((inputs @ params["w"] + params["b"] - targets) ** 2)

    params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    h = jd.diagnostics.hessian(loss, params, (xs, ys))
    design = np.concatenate([np.ones((20, 1)), np.asarray(xs)], axis=1)  # "b" sorts first
    np.testing.assert_allclose(h, 2 * design.T @ design / 20, rtol=1e-12)


def test_eigh_spectrum_and_condition_number(x64):
    x = jnp.array([0.3, 0.7])
    h = _rosenbrock_hessian(0.3, 0.7)
    spectrum = jd.diagnostics.hessian_spectrum(jd.problems.rosenbrock, x)
    np.testing.assert_allclose(spectrum, np.linalg.eigvalsh(h), rtol=1e-12)
    kappa = jd.diagnostics.condition_number(jd.problems.rosenbrock, x)
    assert float(kappa) == pytest.approx(np.linalg.cond(h), rel=1e-10)
    assert float(jd.diagnostics.condition_number(jd.problems.quadratic, x)) == pytest.approx(
        (2 + np.sqrt(2)) / (2 - np.sqrt(2)), rel=1e-10
    )
    assert float(jd.diagnostics.condition_number(jnp.diag(jnp.array([1.0, 0.0])))) == np.inf
    f = jd.problems.make_quadratic(np.diag(np.arange(1.0, 11.0)), np.zeros(10))
    trimmed = jd.diagnostics.hessian_spectrum(f, jnp.zeros(10), k=2)
    np.testing.assert_allclose(trimmed, [1.0, 2.0, 9.0, 10.0])


def _rotated_quadratic(eigenvalues, key=0):
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(key).normal(size=(n, n)))
    a = q @ np.diag(eigenvalues) @ q.T
    return jd.problems.make_quadratic(a, np.zeros(n)), a


def test_lanczos_extreme_eigenvalues_agree_with_eigh(x64):
    # a small tanh network's loss Hessian: 41 parameters, 25 Hessian-vector products
    xs = jax.random.normal(jax.random.key(1), (32, 3), jnp.float64)
    ys = jnp.sin(xs[:, 0]) + xs[:, 1] * xs[:, 2]

    def loss(p, batch):
        inputs, targets = batch
        hidden = jnp.tanh(inputs @ p["w1"] + p["b1"][None, :])
        return jnp.mean((hidden @ p["w2"] + p["b2"] - targets) ** 2)

    keys = jax.random.split(jax.random.key(2), 2)
    params = {
        "w1": jax.random.normal(keys[0], (3, 8), jnp.float64),
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(keys[1], (8,), jnp.float64),
        "b2": jnp.zeros(()),
    }
    exact = np.asarray(jd.diagnostics.hessian_spectrum(loss, params, (xs, ys)))
    assert exact.size == 41 and exact[0] < 0 < exact[-1]  # indefinite: both signs
    ritz = jd.diagnostics.hessian_spectrum(loss, params, (xs, ys), method="lanczos", iterations=25)
    assert ritz.shape == (25,)
    # k means the same for both methods: the k smallest and k largest
    ends = jd.diagnostics.hessian_spectrum(loss, params, (xs, ys), method="lanczos", k=3)
    assert ends.shape == (6,)
    np.testing.assert_allclose(np.asarray(ends)[[0, -1]], exact[[0, -1]], rtol=1e-3)
    exact_ends = jd.diagnostics.hessian_spectrum(loss, params, (xs, ys), k=3)
    np.testing.assert_allclose(exact_ends, np.concatenate([exact[:3], exact[-3:]]))
    np.testing.assert_allclose(ritz[-1], exact[-1], rtol=1e-6)
    np.testing.assert_allclose(ritz[0], exact[0], rtol=1e-3)
    assert exact[0] - 1e-9 <= float(ritz.min()) and float(ritz.max()) <= exact[-1] + 1e-9


def test_lanczos_survives_breakdown_and_runs_matrix_free_on_a_million_parameters():
    # two distinct eigenvalues: the Krylov space is invariant after 2 steps
    f, _ = _rotated_quadratic(np.array([2.0] * 10 + [-1.0] * 10))
    ritz = np.asarray(
        jd.diagnostics.hessian_spectrum(f, jnp.zeros(20), method="lanczos", iterations=8)
    )
    assert np.all(np.isfinite(ritz))
    np.testing.assert_allclose(np.sort(np.unique(np.round(ritz, 4))), [-1.0, 2.0])

    n = 1_000_000
    scales = jnp.linspace(0.5, 3.0, n, dtype=jnp.float32)

    def big(x):
        return 0.5 * jnp.sum(scales * x**2)

    ritz = jd.diagnostics.hessian_spectrum(big, jnp.zeros(n), method="lanczos", iterations=12)
    assert float(ritz[-1]) == pytest.approx(3.0, rel=1e-2)
    assert float(ritz[0]) == pytest.approx(0.5, rel=1e-1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_catalogue_point_is_classified_correctly(dtype):
    with jax.enable_x64(dtype == "float64"):
        for name, entry in jd.problems.CATALOGUE.items():
            for point, kind in entry.critical_points:
                cp = jd.diagnostics.classify_critical_point(entry.fn, jnp.asarray(point, dtype))
                assert cp.kind == kind, (name, point, cp)
                expected_index = {"minimum": 0, "maximum": 2, "saddle": 1, "degenerate": 0}
                assert cp.index == expected_index[kind], (name, point, cp)
                assert cp.eigenvalues.shape == (2,)


def test_classification_rules():
    classify = jd.diagnostics.classify_critical_point
    cp = classify(jd.problems.saddle, jnp.zeros(2))
    assert cp.kind == "saddle" and cp == "saddle" and str(cp) == "saddle" and cp != "minimum"
    assert isinstance(cp, CriticalPoint) and cp.index == 1 and cp.grad_norm == 0.0
    assert classify(jd.problems.rosenbrock, jnp.array([-1.2, 1.0])) == "not critical"
    assert classify(lambda x: jnp.sum(x**4) + x[1] ** 2, jnp.zeros(2)) == "degenerate"
    assert classify(lambda x: x[0] ** 4 - x[1] ** 2, jnp.zeros(2)) == "degenerate"
    # indefinite with a zero eigenvalue is still a saddle
    assert classify(lambda x: x[0] ** 2 - x[1] ** 2 + x[2] ** 4, jnp.zeros(3)) == "saddle"
    signs = jnp.array([1.0, -1.0, -1.0, 2.0, -3.0])
    cp = classify(lambda x: jnp.sum(signs * x**2), jnp.zeros(5))
    assert cp.kind == "saddle" and cp.index == 3
    assert classify(lambda x: -jnp.sum(x**2), jnp.zeros(4)).index == 4
    # extra arguments and pytrees
    cp = classify(lambda p, c: jnp.sum((p["a"] - c) ** 2), {"a": jnp.ones(3)}, 1.0)
    assert cp == "minimum"
    # a looser gradient tolerance accepts a nearby point, without blurring the eigenvalues
    near = jnp.array([1.0 + 1e-3, 1.0])
    assert classify(jd.problems.rosenbrock, near) == "not critical"
    assert classify(jd.problems.rosenbrock, near, tol=1e-2) == "minimum"  # kappa ~ 2500
    assert classify(jd.problems.rosenbrock, near, tol=1e-2, eig_tol=1e-2) == "degenerate"


def test_argument_errors():
    with pytest.raises(ValueError, match="method"):
        jd.diagnostics.hessian_spectrum(jd.problems.saddle, jnp.zeros(2), method="power")
    with pytest.raises(ValueError, match="iterations must be at most"):
        jd.diagnostics.hessian_spectrum(
            jd.problems.saddle, jnp.zeros(2), method="lanczos", iterations=3
        )
    with pytest.raises(ValueError, match="'lanczos' only"):
        jd.diagnostics.hessian_spectrum(jd.problems.saddle, jnp.zeros(2), iterations=3)
    with pytest.raises(ValueError, match="scalar"):  # a vector-valued loss
        jd.diagnostics.hessian(lambda x: x**2, jnp.ones(2))
    # half precision is analysed in float32 (LAPACK has no float16 kernels)
    for dtype in (jnp.float16, jnp.bfloat16):
        spectrum = jd.diagnostics.hessian_spectrum(jd.problems.saddle, jnp.zeros(2, dtype))
        np.testing.assert_allclose(spectrum, [-2.0, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="tol"):
        jd.diagnostics.classify_critical_point(jd.problems.saddle, jnp.zeros(2), tol=-1.0)
    with pytest.raises(ValueError, match="eig_tol"):
        jd.diagnostics.classify_critical_point(jd.problems.saddle, jnp.zeros(2), eig_tol=0.0)
    with pytest.raises(TypeError, match="loss"):
        jd.diagnostics.hessian(None, jnp.zeros(2))
