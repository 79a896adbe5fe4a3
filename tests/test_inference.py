"""jd.inference: standard errors against statsmodels and closed forms (several outputs per
example included), argument checks, points that are not a maximum, estimates at infinity
(separation, all-zero counts) and ordinary fits that are not reported, and the pure core
under jax.jit and jax.vmap."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxdescent as jd
from jaxdescent.inference import Flag, InfiniteEstimateWarning

sm = pytest.importorskip("statsmodels.api")


def _linear(p, x):
    return x @ p["w"] + p["b"]


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def _params(coef):
    """statsmodels' ``[const, w...]`` as this module's ``{"b", "w"}``."""
    coef = jnp.asarray(coef)
    return {"b": coef[0], "w": coef[1:]}


def _ordered(se):
    """``{"b", "w"}`` standard errors in statsmodels' ``[const, w...]`` order."""
    return np.concatenate([[float(se["b"])], np.asarray(se["w"])])


# --- equality with statsmodels ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["Poisson", "Binomial"])
def test_glm_standard_errors_equal_statsmodels(x64, family):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3)) * 0.6
    eta = 0.2 + x @ np.array([0.7, -0.4, 0.3])
    if family == "Poisson":
        y, likelihood = rng.poisson(np.exp(eta)), jd.likelihoods.Poisson()
    else:
        y, likelihood = rng.random(120) < 1 / (1 + np.exp(-eta)), jd.likelihoods.Bernoulli()
    y = y.astype(float)
    glm = sm.GLM(y, sm.add_constant(x), family=getattr(sm.families, family)()).fit(tol=1e-12)
    loss = jd.losses.nll(_linear, likelihood)
    params, data = _params(glm.params), (jnp.asarray(x), jnp.asarray(y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary fit: no InfiniteEstimateWarning
        se = jd.inference.standard_errors(loss, params, data)
        hessian = jd.inference.standard_errors(loss, params, data, method="hessian")
    np.testing.assert_allclose(_ordered(se), glm.bse, rtol=1e-6)
    np.testing.assert_allclose(_ordered(hessian), glm.bse, rtol=1e-6)  # a canonical link
    u = jd.inference.uncertainty(loss, params, data)
    assert int(u.flag) == Flag.OK and float(u.dispersion) == 1.0
    np.testing.assert_allclose(_ordered(u.standard_errors), glm.bse, rtol=1e-6)
    np.testing.assert_allclose(u.covariance, jd.inference.covariance(loss, params, data))


def test_ols_standard_errors_and_hc0_equal_statsmodels(x64):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + rng.normal(size=40) * (0.5 + np.abs(x[:, 0]))
    ols = sm.OLS(y, sm.add_constant(x)).fit()
    loss = jd.losses.nll(_linear, jd.likelihoods.Gaussian())
    params, data = _params(ols.params), (jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(_ordered(jd.inference.standard_errors(loss, params, data)),
                               ols.bse, rtol=1e-6)  # fmt: skip
    phi = jax.jit(lambda p, y: jd.inference.dispersion(loss, p, (data[0], y)))(params, data[1])
    np.testing.assert_allclose(float(phi), ols.scale, rtol=1e-10)
    robust = jd.inference.standard_errors(loss, params, data, method="sandwich")
    np.testing.assert_allclose(_ordered(robust), ols.get_robustcov_results("HC0").bse, rtol=1e-6)


# --- several outputs per example ----------------------------------------------------------------


def _multi_output(n, d=3, k=2, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, k))
    return x, x @ w + 0.3 * rng.normal(size=(n, k))


@pytest.mark.parametrize("n", [5, 30])  # n = 5 <= p = 6 < n k = 10, and n > p
def test_gaussian_with_several_outputs_counts_every_target_value(x64, n):
    """k outputs per example, each a linear model of x: statsmodels' OLS of the stacked outputs
    on the block-diagonal design (n k values, p = d k parameters, n k - p degrees of freedom)."""
    x, y = _multi_output(n)
    d, k = x.shape[1], y.shape[1]
    design = np.kron(np.eye(k), x)  # stacked output by output
    ols = sm.OLS(y.T.ravel(), design).fit()
    loss = jd.losses.nll(lambda w, x: x @ w, jd.likelihoods.Gaussian(scale=2.0))
    w = jnp.asarray(ols.params.reshape(k, d).T)  # the same least-squares fit
    data = (jnp.asarray(x), jnp.asarray(y))
    se = jd.inference.standard_errors(loss, w, data)
    np.testing.assert_allclose(np.asarray(se), ols.bse.reshape(k, d).T, rtol=1e-6)
    phi = jd.inference.dispersion(loss, w, data)
    np.testing.assert_allclose(float(phi) * 4.0, ols.scale, rtol=1e-10)  # phi = s^2 / scale^2


def test_laplace_with_several_outputs_counts_every_target_value(x64):
    x, y = _multi_output(4)  # n = 4 examples, 8 target values, p = 6
    loss = jd.losses.nll(lambda w, x: x @ w, jd.likelihoods.Laplace(scale=0.5))
    w = jnp.asarray(np.linalg.lstsq(x, y, rcond=None)[0])
    phi = jd.inference.dispersion(loss, w, (jnp.asarray(x), jnp.asarray(y)))
    b_hat = np.sum(np.abs(y - x @ np.asarray(w))) / (y.size - w.size)
    np.testing.assert_allclose(float(phi), (b_hat / 0.5) ** 2, rtol=1e-12)
    with pytest.raises(ValueError, match=r"more observed target values than parameters"):
        jd.inference.dispersion(loss, w, (jnp.asarray(x[:3]), jnp.asarray(y[:3])))


# --- argument checks and points that are not a maximum ------------------------------------------


def _line():
    x = jnp.arange(6.0)
    y = jnp.array([0.1, 1.9, 4.2, 5.8, 8.1, 9.9])
    return jd.losses.nll(lambda w, x: w[0] + w[1] * x, jd.likelihoods.Gaussian()), (x, y)


@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan"), float("inf"), jnp.array(-2.0)])
@pytest.mark.parametrize("api", ["covariance", "standard_errors", "uncertainty"])
def test_a_dispersion_that_is_not_a_finite_positive_number_is_refused(api, value):
    loss, data = _line()
    with pytest.raises(ValueError, match="dispersion must be"):
        getattr(jd.inference, api)(loss, jnp.array([0.0, 2.0]), data, dispersion=value)


def test_a_dispersion_must_be_a_real_scalar():
    loss, data = _line()
    for value in (jnp.ones(2), "1", True):
        with pytest.raises(TypeError, match="dispersion must be a real scalar"):
            jd.inference.covariance(loss, jnp.array([0.0, 2.0]), data, dispersion=value)


def _product_loss():
    """``mu = w0 w1``: at w = (0, 0) the Hessian of the NLL is [[0, -sum y], [-sum y, 0]]."""
    loss = jd.losses.nll(lambda w, x: w[0] * w[1] * x, jd.likelihoods.Gaussian())
    return loss, (jnp.ones(3), jnp.ones(3))


def test_an_indefinite_information_is_not_called_singular():
    loss, data = _product_loss()
    with pytest.raises(ValueError) as err:
        jd.inference.standard_errors(loss, jnp.zeros(2), data, method="hessian", dispersion=1.0)
    message = str(err.value)
    assert "not positive definite" in message and "not a maximum" in message
    assert "singular" not in message
    assert "from -3 to 3" in message  # the scaled eigenvalues, honestly
    u = jd.inference.uncertainty(loss, jnp.zeros(2), data, method="hessian", dispersion=1.0)
    assert int(u.flag) == Flag.NOT_POSITIVE_DEFINITE and np.all(np.isnan(u.standard_errors))
    # a saddle with a nonzero diagonal: the same report
    with pytest.raises(ValueError, match="not positive definite"):
        jd.inference.covariance(loss, jnp.array([0.1, 0.1]), data, method="sandwich")


def test_a_singular_information_is_still_called_singular():
    loss, data = _product_loss()
    with pytest.raises(ValueError, match=r"singular \(scaled eigenvalues from 0 to 1\)"):
        jd.inference.covariance(loss, jnp.array([0.0, 1.0]), data, dispersion=1.0)


# --- estimates at infinity ----------------------------------------------------------------------

BERNOULLI = jd.losses.nll(_linear, jd.likelihoods.Bernoulli())
POISSON = jd.losses.nll(_linear, jd.likelihoods.Poisson())


def _fit(loss, x, y, tol=1e-6, dtype=jnp.float32):
    params = {"w": jnp.zeros(x.shape[1], dtype), "b": jnp.zeros((), dtype)}
    data = (jnp.asarray(x, dtype), jnp.asarray(y, dtype))
    res = jd.fit(loss, params, jd.optim.gauss_newton(), data=data, steps=100, tol=tol)
    assert res.success  # the engine calls these converged: only inference can tell
    return res.params, data


def _logistic(kind, n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    if kind == "complete":  # a line separates the classes
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)
    elif kind == "group":  # quasi-complete: the 8 examples of a group are all 1
        x[:, 2] = np.arange(n) < 8
        y = np.where(x[:, 2] == 1, 1.0, rng.random(n) < 1 / (1 + np.exp(-x[:, 0])))
    elif kind == "steep":  # a strong effect, overlapping classes: a finite MLE
        y = rng.random(n) < 1 / (1 + np.exp(-6.0 * x[:, 0]))
    else:  # "mixed group": the group holds both classes, each predicted with certainty
        y = rng.random(n) < 1 / (1 + np.exp(-6.0 * x[:, 0]))
        x[:, 2] = 0.0
        x[np.argsort(x[:, 0])[[0, 1, -2, -1]], 2] = 1.0
    return x, np.asarray(y, float)


@pytest.mark.parametrize("kind", ["complete", "group"])
def test_separated_logistic_regression_warns_that_the_mle_does_not_exist(kind):
    params, data = _fit(BERNOULLI, *_logistic(kind))
    with pytest.warns(InfiniteEstimateWarning, match="estimate does not exist") as record:
        se = jd.inference.standard_errors(BERNOULLI, params, data)
    assert "separation" in str(record[0].message)
    assert record[0].filename == __file__  # the caller's line
    if kind == "group":  # the direction: the group's coefficient
        assert "moving mostly params['w'][2]" in str(record[0].message)
    assert np.all(np.isfinite(_flat(se)))  # returned, though meaningless
    assert int(jd.inference.uncertainty(BERNOULLI, params, data).flag) == Flag.INFINITE_ESTIMATE


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_poisson_group_of_zero_counts_warns_that_the_mle_does_not_exist(dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 3)) * 0.5
    x[:, 2] = np.arange(80) < 10
    y = np.where(x[:, 2] == 1, 0.0, rng.poisson(np.exp(0.5 + x[:, 0])))
    with jax.enable_x64(dtype == "float64"):
        tol = 1e-9 if dtype == "float64" else 1e-6
        params, data = _fit(POISSON, x, y, tol=tol, dtype=jnp.dtype(dtype))
        with pytest.warns(InfiniteEstimateWarning, match=r"10 of the \d+ zero counts") as record:
            jd.inference.covariance(POISSON, params, data)
    assert "params['w'][2]" in str(record[0].message)


def test_separated_classes_of_a_categorical_warn_that_the_mle_does_not_exist():
    """Class 2 holds every example with x > 1 and no other: its logit's slope runs off."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 1))
    y = np.where(x[:, 0] > 1.0, 2, rng.integers(0, 2, size=90))

    def logits(p, x):  # class 0 is the reference: no redundant parameters
        return jnp.concatenate([jnp.zeros((x.shape[0], 1)), x @ p["w"] + p["b"][None, :]], axis=1)

    loss = jd.losses.nll(logits, jd.likelihoods.Categorical())
    params = {"w": jnp.zeros((1, 2)), "b": jnp.zeros(2)}
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32))
    res = jd.fit(loss, params, jd.optim.gauss_newton(), data=data, steps=100, tol=1e-6)
    assert res.success
    with pytest.warns(InfiniteEstimateWarning, match="classes other than the observed one"):
        jd.inference.standard_errors(loss, res.params, data)


def test_a_fit_driven_far_out_is_singular_for_want_of_an_mle():
    """Without a tol, Gauss-Newton pushes a separated fit until the information underflows:
    the error says why."""
    x, y = _logistic("complete")
    data = (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    res = jd.fit(BERNOULLI, params, jd.optim.gauss_newton(), data=data, steps=100)
    with pytest.raises(ValueError, match=r"singular.*estimate does not exist"):
        jd.inference.standard_errors(BERNOULLI, res.params, data)


@pytest.mark.parametrize("kind", ["steep", "mixed group"])
def test_ordinary_logistic_fits_are_not_reported(kind):
    x, y = _logistic(kind, n=200)
    params, data = _fit(BERNOULLI, x, y, tol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        se = jd.inference.standard_errors(BERNOULLI, params, data)
    assert np.all(np.isfinite(_flat(se)))
    assert int(jd.inference.uncertainty(BERNOULLI, params, data).flag) == Flag.OK


def test_ordinary_poisson_fits_with_zero_counts_are_not_reported():
    """Rare events: every count but a few is 0 and fitted at a rate below 0.01, but the few
    events hold the MLE."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 2))
    y = rng.poisson(np.exp(-6.0 + 0.3 * x[:, 0]))
    params, data = _fit(POISSON, x, y)
    rates = np.exp(np.asarray(_linear(params, data[0])))
    assert 5 <= y.sum() <= 20 and np.all(rates[y == 0] < 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jd.inference.standard_errors(POISSON, params, data)


# --- the pure core under jit and vmap -----------------------------------------------------------

PIXELS = jnp.stack(jnp.meshgrid(jnp.arange(5.0), jnp.arange(5.0)), axis=-1).reshape(25, 2)


def _blob(p, xy):
    """A 2-D Gaussian spot on a background: (amplitude, x0, y0, width, background)."""
    r2 = jnp.sum((xy - p[None, 1:3]) ** 2, axis=-1)
    return p[0] * jnp.exp(-0.5 * r2 / p[3] ** 2) + p[4]


BLOBS = {
    "gaussian": jd.losses.nll(_blob, jd.likelihoods.Gaussian()),
    "poisson": jd.losses.nll(lambda p, xy: jnp.log(_blob(p, xy)), jd.likelihoods.Poisson()),
}


def _blob_batch():
    """Four 'fitted' spots and their images; the third has amplitude 0, so its position and
    width leave the image unchanged: a singular information."""
    params = jnp.array([[9.0, 2.1, 1.8, 1.1, 2.0], [6.0, 2.6, 2.4, 0.9, 1.0],
                        [0.0, 2.0, 2.0, 1.0, 3.0], [12.0, 1.5, 2.5, 1.3, 0.5]])  # fmt: skip
    key = jax.random.key(0)
    means = jax.vmap(_blob, in_axes=(0, None))(params, PIXELS)
    counts = jax.random.poisson(key, means).astype(jnp.float32)
    return params, counts


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_standard_errors_under_jit_and_vmap_give_nan_where_singular(name):
    loss = BLOBS[name]
    params, counts = _blob_batch()

    def errors(p, y):
        return jd.inference.standard_errors(loss, p, (PIXELS, y))

    batched = jax.jit(jax.vmap(errors))(params, counts)
    for i in range(params.shape[0]):
        if i == 2:
            assert np.all(np.isnan(batched[i]))
            with pytest.raises(ValueError, match="singular"):
                errors(params[i], counts[i])
        else:
            np.testing.assert_allclose(batched[i], errors(params[i], counts[i]), rtol=1e-5)
            assert np.all(np.isfinite(batched[i]))
    u = jax.vmap(lambda p, y: jd.inference.uncertainty(loss, p, (PIXELS, y)))(params, counts)
    assert [Flag(int(f)) for f in u.flag] == [Flag.OK, Flag.OK, Flag.SINGULAR, Flag.OK]
    np.testing.assert_allclose(u.standard_errors, batched, rtol=1e-6)
    assert np.all(np.isnan(u.covariance[2])) and np.all(np.isfinite(u.covariance[0]))


def test_traced_dispersions_and_indefinite_hessians_give_flags():
    loss, data = _line()
    w = jnp.array([0.0, 2.0])
    u = jax.vmap(lambda phi: jd.inference.uncertainty(loss, w, data, dispersion=phi))(
        jnp.array([1.0, -1.0, jnp.nan, 4.0])
    )
    flags = [Flag(int(f)) for f in u.flag]
    assert flags == [Flag.OK, Flag.INVALID_DISPERSION, Flag.INVALID_DISPERSION, Flag.OK]
    np.testing.assert_allclose(u.standard_errors[3], 2.0 * u.standard_errors[0], rtol=1e-6)
    assert np.all(np.isnan(u.standard_errors[1:3]))
    eager = jd.inference.standard_errors(loss, w, data, dispersion=1.0)
    np.testing.assert_allclose(u.standard_errors[0], eager)
    product, pdata = _product_loss()
    se = jax.jit(lambda w: jd.inference.standard_errors(product, w, pdata, method="hessian"))
    assert np.all(np.isnan(se(jnp.zeros(2))))
    # concrete inputs inside a jit: a traced result too, so NaN rather than an error
    closed = jax.jit(lambda: jd.inference.standard_errors(product, jnp.zeros(2), pdata,
                                                          method="hessian"))  # fmt: skip
    assert np.all(np.isnan(closed()))


def test_estimates_at_infinity_are_flagged_under_vmap_with_their_values():
    fits = [_fit(BERNOULLI, *_logistic(kind)) for kind in ("complete", "steep")]
    params = jax.tree.map(lambda *a: jnp.stack(a), *(p for p, _ in fits))
    ys = jnp.stack([d[1] for _, d in fits])
    xs = jnp.stack([d[0] for _, d in fits])
    u = jax.vmap(lambda p, x, y: jd.inference.uncertainty(BERNOULLI, p, (x, y)))(params, xs, ys)
    assert [Flag(int(f)) for f in u.flag] == [Flag.INFINITE_ESTIMATE, Flag.OK]
    assert np.all(np.isfinite(_flat(u.standard_errors)))


def test_shape_errors_are_raised_under_tracing():
    loss, (x, y) = _line()
    with pytest.raises(ValueError, match="leading size"):
        jax.vmap(lambda y: jd.inference.standard_errors(loss, jnp.zeros(2), (x, y)))(
            jnp.ones((3, 5))
        )
    with pytest.raises(ValueError, match="more observed target values than parameters"):
        jax.jit(lambda w: jd.inference.covariance(loss, w, (x[:2], y[:2])))(jnp.zeros(2))
    with pytest.raises(TypeError, match=r"jd\.losses\.nll"):
        jax.jit(lambda w: jd.inference.covariance(lambda p, b: p, w, (x, y)))(jnp.zeros(2))


def test_repeated_calls_reuse_one_compiled_core():
    traces = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traces.append(event)

    def line(w, x):
        return w[0] + w[1] * x

    loss = jd.losses.nll(line, jd.likelihoods.Gaussian())
    _, data = _line()
    first = jd.inference.standard_errors(loss, jnp.array([0.0, 2.0]), data)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        second = jd.inference.standard_errors(loss, jnp.array([0.1, 1.9]), data)
        jd.inference.covariance(loss, jnp.array([0.1, 1.9]), data)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert traces == [] and not np.array_equal(first, second)
