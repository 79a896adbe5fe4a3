"""Likelihoods: log-probabilities against SciPy, extreme inputs, predictions, shape errors."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import jaxdescent as jd
from jaxdescent.likelihoods import Bernoulli, Categorical, Gaussian, Laplace, Poisson

RTOL = 1e-8

rng = np.random.default_rng(0)
N = 7
Y_REAL = rng.normal(size=N) * 3.0
LOC = rng.normal(size=N) * 3.0
LOG_SCALE = np.array([-69.0, -5.0, -1.0, 0.0, 0.5, 2.0, 10.0])  # scale 1e-30 ... 2.2e4


def _location_scale_reference(reference, y, loc, scale):
    """SciPy's logpdf; where SciPy underflows (Laplace forms log(pdf)), the closed form."""
    with np.errstate(divide="ignore"):
        want = reference.logpdf(y, loc=loc, scale=scale)
    if reference is stats.laplace:
        closed = -np.abs(y - loc) / scale - np.log(2 * scale)
        finite = np.isfinite(want)
        np.testing.assert_allclose(closed[finite], want[finite], rtol=1e-12)
        want = closed
    return want


@functools.partial(jax.jit, static_argnums=0)
def _values_and_grads(likelihood, output, y):
    """``log_prob`` and the gradient of its sum wrt the model output, in one compiled call."""
    return likelihood.log_prob(output, y), jax.grad(lambda o: jnp.sum(likelihood.log_prob(o, y)))(
        output
    )


def _assert_finite_with_grads(likelihood, output, y):
    """Values and the gradient wrt the model output are finite (no inf, no NaN)."""
    values, grads = _values_and_grads(likelihood, output, y)
    assert np.all(np.isfinite(values)), values
    assert np.all(np.isfinite(grads)), grads
    return values, grads


# --- location-scale families ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("likelihood", "reference"),
    [(Gaussian, stats.norm), (Laplace, stats.laplace)],
    ids=["gaussian", "laplace"],
)
@pytest.mark.parametrize("scale", [1.0, 0.3, 1e-30, 50.0])
def test_location_scale_fixed_scale_matches_scipy(x64, likelihood, reference, scale):
    y, loc = jnp.asarray(Y_REAL), jnp.asarray(LOC)
    got, _ = _assert_finite_with_grads(likelihood(scale=scale), loc, y)
    want = _location_scale_reference(reference, Y_REAL, LOC, scale)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    # (n, 1) outputs are accepted for (n,) targets
    got_col, _ = _values_and_grads(likelihood(scale=scale), loc[:, None], y)
    np.testing.assert_allclose(got_col, want, rtol=RTOL)


@pytest.mark.parametrize(
    ("likelihood", "reference"),
    [(Gaussian, stats.norm), (Laplace, stats.laplace)],
    ids=["gaussian", "laplace"],
)
def test_location_scale_learned_scale_matches_scipy(x64, likelihood, reference):
    """Output holds (loc, log_scale) on the last axis; tiny scales (log_scale = -69) stay finite."""
    lik = likelihood(learn_scale=True)
    output = jnp.stack([jnp.asarray(LOC), jnp.asarray(LOG_SCALE)], axis=-1)  # (n, 2)
    got, g = _assert_finite_with_grads(lik, output, jnp.asarray(Y_REAL))
    want = _location_scale_reference(reference, Y_REAL, LOC, np.exp(LOG_SCALE))
    np.testing.assert_allclose(got, want, rtol=RTOL)
    # the gradient wrt the log-scale matches the closed form
    r = np.abs(Y_REAL - LOC) * np.exp(-LOG_SCALE)
    closed = r**2 - 1.0 if likelihood is Gaussian else r - 1.0
    np.testing.assert_allclose(g[:, 1], closed, rtol=RTOL)

    # multi-output targets (n, d): the output is (n, 2d), first half locations
    y2 = rng.normal(size=(N, 3))
    loc2, log_s2 = rng.normal(size=(N, 3)), rng.normal(size=(N, 3))
    got2, _ = _values_and_grads(lik, jnp.concatenate([loc2, log_s2], axis=-1), jnp.asarray(y2))
    assert got2.shape == (N, 3)
    np.testing.assert_allclose(
        got2, _location_scale_reference(reference, y2, loc2, np.exp(log_s2)), rtol=RTOL
    )


def test_gaussian_nll_is_scaled_mse_plus_constant(x64):
    """-mean log N(y; f, s^2) = MSE / (2 s^2) + log s + log(2 pi) / 2, gradients equal."""
    x = jnp.asarray(rng.normal(size=(20, 3)))
    y = jnp.asarray(rng.normal(size=20))
    model = jd.models.linear(3, 1, w_init="he", dtype=jnp.float64)
    s = 0.7
    nll = jd.losses.nll(model.apply, Gaussian(scale=s))

    def scaled_mse(params):
        return jd.losses.mse(model.apply(params, x)[:, 0], y) / (2 * s**2)

    @jax.jit
    @jax.vmap
    def both(key):
        params = model.init(key)
        params["b"] = params["b"] + jax.random.normal(key, (1,), jnp.float64)
        a, ga = jax.value_and_grad(nll)(params, (x, y))
        b, gb = jax.value_and_grad(scaled_mse)(params)
        return a - b, ga, gb

    differences, grads_nll, grads_mse = both(jax.random.split(jax.random.key(0), 4))
    np.testing.assert_allclose(differences, math.log(s) + 0.5 * math.log(2 * math.pi), rtol=1e-12)
    chex.assert_trees_all_close(grads_nll, grads_mse, rtol=1e-10)
    assert np.ptp(np.asarray(grads_mse["w"])) > 0.1  # the four parameter draws differ


# --- Bernoulli --------------------------------------------------------------------------------

LOGITS = np.array([-100.0, -30.0, -3.0, -0.5, 0.0, 0.5, 3.0, 30.0, 100.0])


def _bernoulli_reference(logits, y):
    """log p(y) with p = sigmoid(z): SciPy's bernoulli where p is representable, else stable."""
    p = special.expit(logits)
    stable = y * special.log_expit(logits) + (1 - y) * special.log_expit(-logits)
    with np.errstate(divide="ignore"):
        direct = stats.bernoulli.logpmf(y, p)
    ordinary = np.abs(logits) < 20
    np.testing.assert_allclose(direct[ordinary], stable[ordinary], rtol=1e-12)
    return stable


@pytest.mark.parametrize("label", [0, 1])
def test_bernoulli_matches_scipy(x64, label):
    y = np.full(LOGITS.shape, float(label))
    got, grads = _assert_finite_with_grads(Bernoulli(), jnp.asarray(LOGITS), jnp.asarray(y))
    np.testing.assert_allclose(got, _bernoulli_reference(LOGITS, y), rtol=RTOL)
    # a confidently wrong logit costs |z| and its gradient is near 1 in size: no saturation
    # d/dz log p = y - sigmoid(z) = y sigmoid(-z) - (1 - y) sigmoid(z), written without cancelling
    want = y * special.expit(-LOGITS) - (1 - y) * special.expit(LOGITS)
    np.testing.assert_allclose(grads, want, rtol=RTOL)


def test_bernoulli_float32_extreme_logits_are_finite():
    z = jnp.asarray(LOGITS, jnp.float32)
    for label in (0.0, 1.0):
        values, _ = _assert_finite_with_grads(Bernoulli(), z, jnp.full_like(z, label))
        assert values.dtype == jnp.float32


# --- Categorical ------------------------------------------------------------------------------


def _categorical_cases():
    ordinary = rng.normal(size=(6, 4)) * 2.0
    extreme = np.array(
        [[100.0, -100.0, 0.0, 3.0], [-100.0, -100.0, -100.0, 100.0], [1e3, -1e3, 0.0, 0.0]]
    )
    return {"ordinary": ordinary, "extreme": extreme}


@pytest.mark.parametrize("case", ["ordinary", "extreme"])
def test_categorical_matches_scipy(x64, case):
    logits = _categorical_cases()[case]
    n, k = logits.shape
    labels = np.arange(n) % k
    onehot = np.eye(k)[labels]
    want = special.log_softmax(logits, axis=-1)[np.arange(n), labels]
    if case == "ordinary":
        p = special.softmax(logits, axis=-1)
        scipy_want = np.array([stats.multinomial.logpmf(onehot[i], 1, p[i]) for i in range(n)])
        np.testing.assert_allclose(want, scipy_want, rtol=1e-12)
    lik = Categorical()
    got_int, _ = _assert_finite_with_grads(lik, jnp.asarray(logits), jnp.asarray(labels))
    got_hot, _ = _assert_finite_with_grads(lik, jnp.asarray(logits), jnp.asarray(onehot))
    np.testing.assert_allclose(got_int, want, rtol=RTOL)
    np.testing.assert_allclose(got_hot, want, rtol=RTOL)
    # soft targets: sum_k y_k log softmax(z)_k
    soft = special.softmax(rng.normal(size=(n, k)), axis=-1)
    got_soft, _ = _assert_finite_with_grads(lik, jnp.asarray(logits), jnp.asarray(soft))
    np.testing.assert_allclose(
        got_soft, np.sum(soft * special.log_softmax(logits, axis=-1), -1), rtol=RTOL
    )


# --- Poisson ----------------------------------------------------------------------------------


def test_poisson_matches_scipy(x64):
    log_rate = np.array([-100.0, -20.0, -2.0, 0.0, 0.3, 2.0, 5.0, 20.0, 50.0])
    counts = np.array([0.0, 3.0, 1.0, 0.0, 2.0, 7.0, 150.0, 4e8, 5e21])
    got, _ = _assert_finite_with_grads(Poisson(), jnp.asarray(log_rate), jnp.asarray(counts))
    np.testing.assert_allclose(got, stats.poisson.logpmf(counts, np.exp(log_rate)), rtol=RTOL)


# --- predictions, sizes, shape errors ---------------------------------------------------------


def test_predict_values():
    out = jnp.array([[-2.0], [0.5], [3.0]])
    np.testing.assert_array_equal(Gaussian().predict(out), out)
    np.testing.assert_array_equal(Laplace(scale=2.0).predict(out), out)
    np.testing.assert_array_equal(Bernoulli().predict(out), [[0], [1], [1]])
    np.testing.assert_allclose(Poisson().predict(out), np.exp(np.asarray(out)), rtol=1e-6)
    np.testing.assert_array_equal(Categorical().predict(jnp.array([[0.0, 2.0, 1.0]])), [1])
    # learned scale: the prediction is the location (first half of the outputs)
    mean_log_scale = jnp.array([[1.0, -3.0], [2.0, 4.0]])
    np.testing.assert_array_equal(
        Gaussian(learn_scale=True).predict(mean_log_scale), [[1.0], [2.0]]
    )
    wide = jnp.arange(12.0).reshape(2, 6)
    np.testing.assert_array_equal(Laplace(learn_scale=True).predict(wide), wide[:, :3])
    np.testing.assert_allclose(Bernoulli().probs(jnp.array([0.0, 100.0])), [0.5, 1.0])
    np.testing.assert_allclose(Categorical().probs(jnp.zeros((1, 4))), np.full((1, 4), 0.25))


def test_output_size():
    assert Gaussian().output_size() == 1
    assert Gaussian().output_size(3) == 3
    assert Gaussian(learn_scale=True).output_size() == 2
    assert Laplace(learn_scale=True).output_size(3) == 6
    assert Bernoulli().output_size() == 1
    assert Poisson().output_size(2) == 2
    assert Categorical().output_size(5) == 5


@pytest.mark.parametrize(
    ("likelihood", "output_shape", "y"),
    [
        (Gaussian(), (5, 3), jnp.zeros(5)),
        (Gaussian(), (5,), jnp.zeros((5, 1))),
        (Laplace(), (4,), jnp.zeros(5)),
        (Gaussian(learn_scale=True), (5,), jnp.zeros(5)),
        (Laplace(learn_scale=True), (5, 3), jnp.zeros(5)),
        (Bernoulli(), (5, 2), jnp.zeros(5)),
        (Poisson(), (3,), jnp.zeros(5)),
        (Categorical(), (5, 3), jnp.zeros(4, jnp.int32)),
        (Categorical(), (5, 3), jnp.zeros((5, 4))),
    ],
)
def test_shape_mismatch_is_a_clear_value_error(likelihood, output_shape, y):
    with pytest.raises(ValueError, match="shape"):
        likelihood.log_prob(jnp.zeros(output_shape), y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        Gaussian(scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        Laplace(scale=-1.0)
    with pytest.raises(ValueError, match="Bernoulli targets"):
        Bernoulli().check_targets(np.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="Poisson targets"):
        Poisson().check_targets(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="Categorical labels"):
        Categorical().check_targets(np.array([0, 3]), num_classes=3)
    Categorical().check_targets(np.array([0, 2]), num_classes=3)


# --- float32 edge cases ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [jd.likelihoods.Gaussian, jd.likelihoods.Laplace])
def test_learned_scale_is_finite_at_an_exact_fit_with_a_tiny_scale(cls):
    """y == mean with log-scale <= -89 in float32: the residual term is 0, not
    0 * exp(89) = nan."""
    lik = cls(learn_scale=True)
    out = jnp.array([[1.0, -95.0], [1.0, -95.0], [0.5, -95.0]], jnp.float32)
    y = jnp.array([1.0, 1.0, 0.5 + 2.0**-24], jnp.float32)
    values = lik.log_prob(out, y)
    grads = jax.grad(lambda o: jnp.sum(lik.log_prob(o, y)[:2]))(out)
    assert np.all(np.isfinite(np.asarray(values[:2]))) and np.all(np.isfinite(np.asarray(grads)))
    np.testing.assert_allclose(values[:2], 95.0 - (0.5 * np.log(2 * np.pi) if cls is
                               jd.likelihoods.Gaussian else np.log(2.0)), rtol=1e-6)  # fmt: skip
    # a residual of 6e-8 at scale e^-95 is 1e34 scale units: a huge but finite z
    assert np.isfinite(float(lik.log_prob_kernel(out, y)[2])) or cls is jd.likelihoods.Gaussian


def test_a_heteroscedastic_fit_with_an_exactly_fitted_point_stays_finite():
    """A free log-scale per example: at the exactly fitted point it falls without bound
    (its NLL is ``log sigma + const``) and passes -89 within the run, where a float32
    ``0 * exp(89)`` would be NaN and end the run NONFINITE."""
    x = jnp.linspace(-1.0, 1.0, 16)[:, None]
    y = 2.0 * x[:, 0] + 0.1 * jnp.sin(7.0 * x[:, 0])
    y = y.at[0].set(2.0 * x[0, 0])  # the mean 2 x fits this point exactly

    def apply(p, x):
        return jnp.stack([2.0 * x[:, 0] + 0.0 * p["w"], p["s"]], axis=-1)

    loss = jd.losses.nll(apply, jd.likelihoods.Gaussian(learn_scale=True))
    res = jd.fit(loss, {"w": jnp.array(0.0), "s": jnp.zeros(16)}, jd.optim.sgd(50.0),
                 data=(x, y), steps=60)  # fmt: skip
    assert float(res.params["s"][0]) < -89.0  # past where exp(-s) overflows float32
    assert int(res.status) == jd.Status.MAX_STEPS
    assert np.all(np.isfinite(np.asarray(res.losses)))


def test_poisson_log_factorial_is_exact_at_zero_and_one():
    from scipy import stats

    rates = np.array([1e-3, 0.5, 2.0, 3.0], np.float32)
    counts = np.array([0.0, 1.0, 2.0, 7.0], np.float32)
    got = jd.likelihoods.Poisson().log_prob(jnp.log(rates), counts)
    expected = stats.poisson.logpmf(counts, rates.astype(np.float64))
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # gammaln(8) in float32: 3e-7
    # log 0! = log 1! = 0 exactly (float32 gammaln(1.0) was 4.8e-7: 5e-4 relative at index 0)
    np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-6, atol=0)
