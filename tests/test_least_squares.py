"""Gauss-Newton (Fisher scoring) and Levenberg-Marquardt: GLMs against Newton and
statsmodels, least squares in float32, restarts, the matrix-free path, never a non-finite
update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdescent as jd


def _linear(p, x):
    return x @ p["w"] + p["b"]


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    # the first five features: with all 30 the classes are separable and no MLE exists
    x = x[:, :5]
    x = (x - x.mean(0)) / x.std(0)
    return x, y.astype(np.float64)


def _poisson_data():
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = np.asarray(jax.random.normal(key_x, (500, 4), jnp.float64)) * 0.5
    rate = np.exp(0.3 + x @ np.array([0.5, -0.3, 0.2, 0.1]))
    y = np.asarray(jax.random.poisson(key_y, jnp.asarray(rate)), np.float64)
    return x, y


GLMS = {
    "logistic": (_breast_cancer, jd.likelihoods.Bernoulli(), "Binomial"),
    "poisson": (_poisson_data, jd.likelihoods.Poisson(), "Poisson"),
}


def _start(d):
    return {"w": jnp.zeros(d), "b": jnp.zeros(())}


@pytest.mark.parametrize("name", sorted(GLMS))
def test_fisher_scoring_equals_newton_and_statsmodels_on_glms(x64, name):
    """For canonical-link GLMs the Fisher information is the Hessian: Gauss-Newton is
    Newton (IRLS); the coefficients and standard errors are statsmodels' GLM fit."""
    sm = pytest.importorskip("statsmodels.api")
    make_data, likelihood, family = GLMS[name]
    x, y = make_data()
    loss = jd.losses.nll(_linear, likelihood)
    data = (jnp.asarray(x), jnp.asarray(y))
    gn = jd.fit(loss, _start(x.shape[1]), jd.optim.gauss_newton(), data=data, steps=50, tol=1e-9)
    newton = jd.fit(loss, _start(x.shape[1]), jd.optim.newton(), data=data, steps=50, tol=1e-9)
    assert gn.success and newton.success
    assert int(gn.steps_taken) <= int(newton.steps_taken), (gn.steps_taken, newton.steps_taken)
    for a, b in zip(jax.tree.leaves(gn.params), jax.tree.leaves(newton.params)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8)

    fitted = sm.GLM(y, sm.add_constant(x), family=getattr(sm.families, family)()).fit(tol=1e-12)
    coef = np.concatenate([[float(gn.params["b"])], np.asarray(gn.params["w"])])
    np.testing.assert_allclose(coef, fitted.params, rtol=1e-6, atol=1e-9)
    se = jd.inference.standard_errors(loss, gn.params, data)
    ours = np.concatenate([[float(se["b"])], np.asarray(se["w"])])
    np.testing.assert_allclose(ours, fitted.bse, rtol=1e-6)
    # the observed information equals the expected one for a canonical link
    np.testing.assert_allclose(
        jd.inference.covariance(loss, gn.params, data, method="hessian"),
        jd.inference.covariance(loss, gn.params, data),
        rtol=1e-6,
        atol=1e-12,
    )


def test_gaussian_standard_errors_equal_ols_and_the_sandwich_hc0(x64):
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + rng.normal(size=80) * (0.5 + np.abs(x[:, 0]))
    loss = jd.losses.nll(_linear, jd.likelihoods.Gaussian())
    data = (jnp.asarray(x), jnp.asarray(y))
    res = jd.fit(loss, _start(3), jd.optim.gauss_newton(), data=data, steps=5, tol=1e-10)
    assert res.success and int(res.steps_taken) == 1  # linear least squares: one step
    ols = sm.OLS(y, sm.add_constant(x)).fit()
    coef = np.concatenate([[float(res.params["b"])], np.asarray(res.params["w"])])
    np.testing.assert_allclose(coef, ols.params, rtol=1e-10)
    se = jd.inference.standard_errors(loss, res.params, data)  # dispersion with n - p dof
    np.testing.assert_allclose([float(se["b"]), *np.asarray(se["w"])], ols.bse, rtol=1e-8)
    robust = jd.inference.standard_errors(loss, res.params, data, method="sandwich")
    hc0 = sm.OLS(y, sm.add_constant(x)).fit(cov_type="HC0").bse
    np.testing.assert_allclose([float(robust["b"]), *np.asarray(robust["w"])], hc0, rtol=1e-8)


# --- nonlinear least squares -----------------------------------------------------------------

T = jnp.linspace(0.0, 4.0, 30)
TRUE = jnp.array([2.0, 0.7, 0.3])


def _decay(b, t):
    return b[0] * jnp.exp(-b[1] * t) + b[2]


def _decay_data(dtype):
    noise = 0.01 * jnp.sin(7.0 * T)
    return T.astype(dtype), (_decay(TRUE, T) + noise).astype(dtype)


DECAY = jd.losses.nll(_decay, jd.likelihoods.Gaussian())


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt"])
def test_float32_least_squares_reach_the_float64_answer(rule):
    make = getattr(jd.optim, rule)
    with jax.enable_x64(True):
        ref = jd.fit(DECAY, jnp.array([1.0, 0.2, 0.0]), make(), data=_decay_data(jnp.float64),
                     steps=100, tol=1e-12)  # fmt: skip
        ref = np.asarray(ref.params)
    res = jd.fit(DECAY, jnp.array([1.0, 0.2, 0.0], jnp.float32), make(),
                 data=_decay_data(jnp.float32), steps=100)  # fmt: skip
    assert res.params.dtype == jnp.float32
    np.testing.assert_allclose(res.params, ref, rtol=1e-4)
    seen = np.asarray(res.losses)
    assert np.all(np.diff(seen) <= 0), seen  # neither rule takes a step that raises the loss


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt"])
@pytest.mark.parametrize(
    "case", ["zero-jacobian", "rank-deficient", "overflowing-residuals"], ids=str
)
def test_updates_stay_finite_where_the_model_degenerates(rule, case):
    make = getattr(jd.optim, rule)
    t, y = _decay_data(jnp.float32)
    if case == "zero-jacobian":  # b0 = 0 and b1 huge: the outputs do not move with b0, b1
        model, start = _decay, jnp.array([0.0, 80.0, 0.0])
    elif case == "rank-deficient":  # two parameters enter only as their sum

        def model(b, t):
            return (b[0] + b[1]) * jnp.exp(-b[2] * t)

        start = jnp.array([1.0, 1.0, 0.5])
    else:  # residuals of 1e30: their squares overflow float32

        def model(b, t):
            return b[0] * 1e30 * jnp.exp(-b[1] * t) + b[2]

        start = jnp.array([1.0, 0.5, 0.0])
    loss = jd.losses.nll(model, jd.likelihoods.Gaussian())
    opt = make()
    params = start.astype(jnp.float32)
    value_fn = lambda p: loss(p, (t, y))  # noqa: E731
    update, state = opt.update(jax.grad(value_fn)(params), opt.init(params), params,
                               value_fn=value_fn, **loss.rule_extras((t, y)))  # fmt: skip
    if np.isfinite(float(value_fn(params))) and np.all(np.isfinite(jax.grad(value_fn)(params))):
        assert np.all(np.isfinite(np.asarray(update))), (case, update)
        assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state))
    with pytest.warns(RuntimeWarning) if case == "overflowing-residuals" else _no_warning():
        res = jd.fit(loss, params, opt, data=(t, y), steps=10)
    assert np.all(np.isfinite(np.asarray(res.params)))


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_levenberg_marquardt_restarts_equal_single_fits_and_report_their_work(x64):
    t, y = _decay_data(jnp.float64)

    def init(key):
        return jnp.array([1.0, 0.2, 0.0]) + 0.3 * jax.random.normal(key, (3,))

    rule = jd.optim.levenberg_marquardt()
    many = jd.multistart(init, DECAY, rule, key=jax.random.key(0), restarts=4, data=(t, y),
                         steps=60, tol=1e-10)  # fmt: skip
    for i in range(4):
        one = jd.fit(DECAY, init(many.init_keys[i]), rule, data=(t, y), steps=60, tol=1e-10)
        np.testing.assert_allclose(many.params[i], one.params, rtol=1e-6)
        assert int(many.steps_taken[i]) == int(one.steps_taken)
    state = many.opt_state
    assert np.all(np.asarray(state.damping) >= 0) and np.all(np.asarray(state.trials) >= 1)
    assert np.all(np.asarray(state.radius) > 0) and np.all(np.asarray(state.count) > 0)


def test_matrix_free_gauss_newton_equals_the_dense_solve(x64):
    t, y = _decay_data(jnp.float64)
    start = jnp.array([1.0, 0.2, 0.0])
    dense = jd.fit(DECAY, start, jd.optim.gauss_newton(solver="dense"), data=(t, y), steps=30,
                   tol=1e-10)  # fmt: skip
    cg = jd.fit(DECAY, start, jd.optim.gauss_newton(solver="cg", cg_tol=1e-12), data=(t, y),
                steps=30, tol=1e-10)  # fmt: skip
    assert dense.success and cg.success
    np.testing.assert_allclose(cg.params, dense.params, rtol=1e-6)
    assert int(np.max(np.asarray(cg.opt_state.cg_steps))) > 0  # the CG path really ran
    lm = jd.fit(DECAY, start, jd.optim.levenberg_marquardt(solver="cg"), data=(t, y), steps=60,
                tol=1e-10)  # fmt: skip
    np.testing.assert_allclose(lm.params, dense.params, rtol=1e-6)


def test_inference_refuses_what_it_cannot_answer(x64):
    x = np.random.default_rng(0).normal(size=(40, 2))
    x = np.concatenate([x, x[:, :1]], axis=1)  # a duplicated column
    y = x[:, 0] - x[:, 1] + 0.1
    loss = jd.losses.nll(_linear, jd.likelihoods.Gaussian())
    params = {"w": jnp.array([0.5, -1.0, 0.5]), "b": jnp.array(0.1)}
    with pytest.raises(ValueError, match="singular"):
        jd.inference.standard_errors(loss, params, (jnp.asarray(x), jnp.asarray(y)))
    with pytest.raises(TypeError, match=r"jd\.losses\.nll"):
        jd.inference.covariance(lambda p, b: jnp.sum(p["w"]), params, (x, y))


MISRA1A_X = [77.6, 114.9, 141.1, 190.8, 239.9, 289.0, 332.8, 378.4, 434.8, 477.3, 536.8, 593.1]
MISRA1A_X += [689.1, 760.0]
MISRA1A_Y = [10.07, 14.73, 17.94, 23.93, 29.61, 35.18, 40.02, 44.82, 50.76, 55.05, 61.01]
MISRA1A_Y += [66.40, 75.47, 81.78]
MISRA1A_CERTIFIED = [2.3894212918e02, 5.5015643181e-04]


def test_lm_stalled_at_its_precision_ends_the_run_stalled(tmp_path):
    """NIST's Misra1a (inline) from its near start: once the trust radius is below the
    rounding of the params, no update makes a trial or moves them, bit for bit; the run then
    ends STALLED there instead of spending its budget, alone or among restarts."""

    def model(b, x):
        return b[0] * (1 - jnp.exp(-b[1] * x))

    with jax.enable_x64(True):
        loss = jd.losses.nll(model, jd.likelihoods.Gaussian())
        data = (jnp.array(MISRA1A_X), jnp.array(MISRA1A_Y))
        lm = jd.optim.levenberg_marquardt()
        start = jnp.array([250.0, 5e-4])
        short = jd.fit(loss, start, lm, data=data, steps=60, tol=0.0)
        long = jd.fit(loss, start, lm, data=data, steps=300, tol=0.0)
        assert int(long.status) == jd.Status.STALLED and not long.success
        assert int(long.steps_taken) < 60 and long.losses.shape == short.losses.shape
        np.testing.assert_array_equal(long.params, short.params)
        assert jd.nist.lre(long.params, jnp.array(MISRA1A_CERTIFIED)) >= 9
        assert np.all(np.diff(np.asarray(long.losses)) <= 0)
        # resumed under a tol its gradient norm meets, the stalled run has converged
        jd.fit(loss, start, lm, data=data, steps=300, tol=0.0, checkpoint_dir=tmp_path)
        looser = jd.fit(loss, start, lm, data=data, steps=400, tol=1e-3, resume=tmp_path)
        assert int(looser.status) == jd.Status.CONVERGED and looser.success
        np.testing.assert_array_equal(looser.params, long.params)
        # the claim behind the status: from the returned state no update moves the params
        params, state = long.params, long.opt_state
        value_fn = lambda p: loss(p, data)  # noqa: E731
        for _ in range(3):
            assert int(state.trials) == 0 and int(state.count) > 0
            x_size = np.linalg.norm(np.sqrt(np.asarray(state.scale)) * np.asarray(params))
            assert float(state.radius) <= np.finfo(np.float64).eps * x_size
            step, state = lm.update(jax.grad(value_fn)(params), state, params,
                                    value_fn=value_fn, **loss.rule_extras(data))  # fmt: skip
            params = params + step
            np.testing.assert_array_equal(params, long.params)

        def init(key):
            return start * (1.0 + 0.2 * jax.random.normal(key, (2,)))

        many = jd.multistart(init, loss, lm, key=jax.random.key(1), restarts=3, data=data,
                             steps=300, tol=0.0)  # fmt: skip
        assert np.all(np.asarray(many.status) == jd.Status.STALLED)
        assert len(set(np.asarray(many.steps_taken).tolist())) > 1  # they stall apart
        # (batched solves round differently from one run's, so a restart may stall a step
        # before or after its own fit; where it stops is what it recorded)
        taken = np.asarray(many.steps_taken)
        assert np.all(taken < 60) and np.all(np.asarray(many.opt_state.trials) == 0)
        for i in range(3):
            one = jd.fit(loss, init(many.init_keys[i]), lm, data=data, steps=300, tol=0.0)
            np.testing.assert_allclose(many.params[i], one.params, rtol=1e-8)
            recorded = np.asarray(many.losses[i])
            assert np.all(np.isfinite(recorded[: taken[i] + 1]))
            assert np.all(np.isnan(recorded[taken[i] + 1 :]))
