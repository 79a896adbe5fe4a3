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
    assert np.all(np.asarray(state.damping) > 0) and np.all(np.asarray(state.count) > 0)
    assert np.all(np.asarray(state.radius) > 0)


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt"])
def test_every_solver_gives_the_safe_paths_answer(x64, rule, monkeypatch):
    """The fast solves (Cholesky of the scaled normal equations, CG, the automatic choice)
    end where the safe path (SVD of the scaled Jacobian) ends."""
    from jaxdescent.optim import linear_solve

    make = getattr(jd.optim, rule)
    t, y = _decay_data(jnp.float64)
    start = jnp.array([1.0, 0.2, 0.0])

    def fit(**kw):
        res = jd.fit(DECAY, start, make(**kw), data=(t, y), steps=100, tol=1e-10)
        assert res.success, (kw, jd.Status(int(res.status)).name)
        return res

    safe = fit(solver="svd")
    for kw in ({"solver": "dense"}, {"solver": "auto"}, {"solver": "cg", "cg_tol": 1e-12}):
        np.testing.assert_allclose(fit(**kw).params, safe.params, rtol=1e-8, err_msg=str(kw))
    assert int(np.max(np.asarray(fit(solver="cg").opt_state.cg_steps))) > 0  # CG really ran
    # "auto" by the cost model: dense for 3 parameters; CG when the model says so
    assert linear_solve.choose_solver("auto", 3) == "dense"
    assert linear_solve.choose_solver("auto", 10**6) == "cg"
    monkeypatch.setitem(linear_solve.MATRIX_OVER_VECTOR, jax.default_backend(), 0.1)
    assert linear_solve.choose_solver("auto", 3) == "cg"
    auto_cg = fit(solver="auto")
    assert int(np.max(np.asarray(auto_cg.opt_state.cg_steps))) > 0
    np.testing.assert_allclose(auto_cg.params, safe.params, rtol=1e-6)


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt"])
def test_a_failed_factorisation_falls_back_to_the_same_answer(x64, rule, monkeypatch):
    """Where the Cholesky factorisation fails (forced here with a negative shift on a
    problem whose G is singular: two parameters enter only as their sum), Gauss-Newton
    takes the scaled gradient step and Levenberg-Marquardt rejects the proposal and raises
    its damping; both reach the loss the safe path (minimum-norm SVD steps) reaches."""
    from jaxdescent.optim import linear_solve

    make = getattr(jd.optim, rule)
    t, y = _decay_data(jnp.float64)
    loss = jd.losses.nll(lambda b, t: (b[0] + b[1]) * jnp.exp(-b[2] * t) + 0.3,
                         jd.likelihoods.Gaussian())  # fmt: skip
    start = jnp.array([1.0, 0.5, 0.5])
    safe = jd.fit(loss, start, make(solver="svd"), data=(t, y), steps=200, tol=1e-9)
    monkeypatch.setattr(linear_solve, "shift", lambda p, dtype: -1e-12)
    gram = jax.jacfwd(lambda b: loss.apply(b, t))(start)
    gram_s, g_s = linear_solve.scaled(gram.T @ gram, jnp.ones(3), jnp.sqrt(jnp.sum(gram**2, 0)))
    assert not np.all(np.isfinite(linear_solve.solve_dense(gram_s, g_s, jnp.zeros(3)).z))
    failing = jd.fit(loss, start, make(solver="dense"), data=(t, y), steps=200, tol=1e-9)
    assert np.all(np.isfinite(np.asarray(failing.losses)))
    for leaf in jax.tree.leaves(failing.opt_state):
        assert np.all(np.isfinite(np.asarray(leaf)) | np.isinf(np.asarray(leaf)))
    assert float(failing.final_loss) == pytest.approx(float(safe.final_loss), rel=1e-9)
    np.testing.assert_allclose(failing.params[0] + failing.params[1],
                               safe.params[0] + safe.params[1], rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(failing.params[2], safe.params[2], rtol=1e-5)


def _primitives(jaxpr) -> list[str]:
    """Every primitive of a jaxpr and of the jaxprs inside it (cond branches, calls)."""
    from jax.extend.core import subjaxprs

    names = [eqn.primitive.name for eqn in jaxpr.eqns]
    for sub in subjaxprs(jaxpr):
        names += _primitives(getattr(sub, "jaxpr", sub))
    return names


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt"])
def test_batch_forms_make_one_proposal_and_one_factorisation_per_update(rule):
    """No loop inside an update (under vmap every loop runs for the slowest lane) and one
    Cholesky factorisation: the update's program, read from its jaxpr."""
    opt = getattr(jd.optim, rule)()
    # ten parameters: above the size whose factorisation is written out entry by entry
    t = jnp.linspace(-1.0, 1.0, 30)
    loss = jd.losses.nll(lambda b, t: jnp.polyval(b, t), jd.likelihoods.Gaussian())
    data = (t, jnp.sin(3.0 * t))
    params = jnp.zeros(10)
    value_fn = lambda p: loss(p, data)  # noqa: E731

    def update(p, state):
        return opt.update(jax.grad(value_fn)(p), state, p, value_fn=value_fn,
                          **loss.rule_extras(data))  # fmt: skip

    jaxpr = jax.make_jaxpr(jax.vmap(update))(
        jnp.stack([params, params]), jax.vmap(opt.init)(jnp.stack([params, params]))
    )
    names = _primitives(jaxpr.jaxpr)
    assert "while" not in names, sorted(set(names))
    assert names.count("cholesky") == 1, names.count("cholesky")


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
        # the claim behind the status: from the returned state no update moves the params,
        # and the state comes back as it was (a fixed point)
        params, state = long.params, long.opt_state
        value_fn = lambda p: loss(p, data)  # noqa: E731
        for _ in range(3):
            assert bool(state.stuck) and int(state.count) > 0
            step, new_state = lm.update(jax.grad(value_fn)(params), state, params,
                                        value_fn=value_fn, **loss.rule_extras(data))  # fmt: skip
            params = params + step
            np.testing.assert_array_equal(params, long.params)
            for name in ("damping", "radius", "scale"):
                np.testing.assert_array_equal(getattr(new_state, name), getattr(state, name))
            state = new_state

        def init(key):
            return start * (1.0 + 0.2 * jax.random.normal(key, (2,)))

        many = jd.multistart(init, loss, lm, key=jax.random.key(1), restarts=3, data=data,
                             steps=300, tol=0.0)  # fmt: skip
        assert np.all(np.asarray(many.status) == jd.Status.STALLED)
        assert len(set(np.asarray(many.steps_taken).tolist())) > 1  # they stall apart
        # (batched solves round differently from one run's, so a restart may stall a step
        # before or after its own fit; where it stops is what it recorded)
        taken = np.asarray(many.steps_taken)
        assert np.all(taken < 60) and np.all(np.asarray(many.opt_state.stuck))
        for i in range(3):
            one = jd.fit(loss, init(many.init_keys[i]), lm, data=data, steps=300, tol=0.0)
            np.testing.assert_allclose(many.params[i], one.params, rtol=1e-8)
            recorded = np.asarray(many.losses[i])
            assert np.all(np.isfinite(recorded[: taken[i] + 1]))
            assert np.all(np.isnan(recorded[taken[i] + 1 :]))


# --- float32: badly scaled parameters, large magnitudes, changes below rounding -------------


def _misra1a():
    loss = jd.losses.nll(lambda b, x: b[0] * (1 - jnp.exp(-b[1] * x)), jd.likelihoods.Gaussian())
    data = (jnp.array(MISRA1A_X, jnp.float32), jnp.array(MISRA1A_Y, jnp.float32))
    return loss, data


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt"])
def test_float32_keeps_a_badly_scaled_parameter(rule):
    """Misra1a from NIST's far start (500, 1e-4) in float32: the parameters differ by six
    orders of magnitude, and the solve is column-scaled, so neither is lost to the other's
    rounding (an unscaled cutoff left b0 at exactly 500)."""
    loss, data = _misra1a()
    res = jd.fit(loss, jnp.array([500.0, 1e-4]), getattr(jd.optim, rule)(), data=data,
                 steps=300)  # fmt: skip
    assert jd.nist.lre(res.params, jnp.array(MISRA1A_CERTIFIED)) >= 5, res.params


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt", "newton"])
@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_float32_converges_where_the_loss_change_is_below_rounding(rule, family):
    """An intercept-only GLM in float32: near the answer the decrease a step promises is
    below the loss's rounding, and a step that does not raise the loss and shrinks the
    gradient is taken, so the run converges instead of stalling."""
    y = np.tile([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0], 10)
    likelihood = jd.likelihoods.Bernoulli()
    if family == "poisson":
        y, likelihood = np.tile([3.0, 0.0, 1.0, 7.0, 2.0], 20), jd.likelihoods.Poisson()
    answer = np.log(y.mean() / (1 - y.mean())) if family == "bernoulli" else np.log(y.mean())
    loss = jd.losses.nll(lambda w, x: w[0] + 0.0 * x[:, 0], likelihood)
    data = (jnp.zeros((y.size, 1)), jnp.asarray(y, jnp.float32))
    res = jd.fit(loss, jnp.array([2.0]), getattr(jd.optim, rule)(), data=data, steps=50,
                 tol=1e-6)  # fmt: skip
    assert jd.Status(int(res.status)).name == "CONVERGED", (res.params, res.final_grad_norm)
    np.testing.assert_allclose(res.params, [answer], rtol=1e-5)


@pytest.mark.parametrize("start", ["zeros", "ones"])
@pytest.mark.parametrize("scale", [1e4, 1e8, 1e10])
def test_float32_levenberg_marquardt_at_large_magnitudes(scale, start):
    """Linear regression with targets around ``scale``: from zeros the first radius is not
    an absolute 1 (from 0 there is none) and the first step solves the problem; from ones,
    where a loss of 1e19 cannot measure the first steps' decrease in float32, the region
    grows until it can instead of shrinking to a stall."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    y = (scale + 0.01 * scale * x @ np.array([1.0, 2.0, 3.0])).astype(np.float32)
    loss = jd.losses.nll(_linear, jd.likelihoods.Gaussian())
    p0 = _start(3) if start == "zeros" else {"w": jnp.ones(3), "b": jnp.ones(())}
    res = jd.fit(loss, p0, jd.optim.levenberg_marquardt(), data=(x, y), steps=50)
    ols = np.linalg.lstsq(np.c_[np.ones(50), x].astype(np.float64), y.astype(np.float64),
                          rcond=None)[0]  # fmt: skip
    ours = np.concatenate([[float(res.params["b"])], np.asarray(res.params["w"])])
    np.testing.assert_allclose(ours, ols, rtol=1e-5, atol=1e-6 * scale)
    assert int(res.steps_taken) <= (10 if start == "zeros" else 25)


def test_a_linear_problem_takes_levenberg_marquardt_a_few_steps(x64):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4))
    y = 1e8 + 1e6 * x @ np.array([1.0, 2.0, 3.0, 4.0]) + rng.normal(size=60)
    loss = jd.losses.nll(_linear, jd.likelihoods.Gaussian())
    data = (jnp.asarray(x), jnp.asarray(y))
    gn = jd.fit(loss, _start(4), jd.optim.gauss_newton(), data=data, steps=50, tol=1e-6)
    # from zeros the first radius is unbounded; from ones it opens tenfold per step while
    # the quadratic model holds
    for start, most in ((_start(4), 3), ({"w": jnp.ones(4), "b": jnp.ones(())}, 12)):
        lm = jd.fit(loss, start, jd.optim.levenberg_marquardt(), data=data, steps=50, tol=1e-6)
        assert lm.success and int(lm.steps_taken) <= most, int(lm.steps_taken)
        for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(gn.params)):
            np.testing.assert_allclose(a, b, rtol=1e-9)
    assert int(gn.steps_taken) == 1


# --- the settings are read ---------------------------------------------------------------------


def test_levenberg_marquardt_honours_its_initial_damping(x64):
    """The first damping decides the first step (relative to the largest scaled curvature):
    two values give two steps; a sweep over restarts gives one result per value, each that
    value's own fit."""
    t, y = _decay_data(jnp.float64)
    start = jnp.array([1.0, 0.2, 0.0])
    one = {tau: jd.fit(DECAY, start, jd.optim.levenberg_marquardt(tau), data=(t, y), steps=1)
           for tau in (1e-3, 1.0, 100.0)}  # fmt: skip
    first = [np.asarray(r.params) for r in one.values()]
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[1], first[2])
    assert np.linalg.norm(first[2] - start) < np.linalg.norm(first[0] - start)  # more damping
    taus = jnp.array([1e-3, 1.0, 100.0])
    many = jd.multistart(lambda key: start, DECAY, jd.optim.levenberg_marquardt(),
                         key=jax.random.key(0), restarts=3, data=(t, y), steps=1,
                         hyperparams={"initial_damping": taus})  # fmt: skip
    for i, tau in enumerate(one):
        np.testing.assert_allclose(many.params[i], one[tau].params, rtol=1e-10)


def test_settings_a_form_does_not_read_are_refused():
    with pytest.raises(ValueError, match="cg_tol is read only by solver='cg'"):
        jd.optim.gauss_newton(solver="dense", cg_tol=1e-8)
    with pytest.raises(ValueError, match="max_cg_steps is read only by solver='cg'"):
        jd.optim.levenberg_marquardt(solver="svd", max_cg_steps=10)
    with pytest.raises(ValueError, match="max_line_search_steps is read only"):
        jd.optim.gauss_newton(max_line_search_steps=10)
    with pytest.raises(ValueError, match="not read by line_search=False"):
        jd.optim.gauss_newton(line_search=False, c1=0.1)
    t, y = _decay_data(jnp.float32)
    for opt, name in ((jd.optim.levenberg_marquardt(), "cg_tol"),
                      (jd.optim.gauss_newton(line_search=False), "shrink")):  # fmt: skip
        with pytest.raises(ValueError, match="not a runtime hyperparameter"):
            jd.multistart(lambda key: jnp.array([1.0, 0.2, 0.0]), DECAY, opt,
                          key=jax.random.key(0), restarts=2, data=(t, y), steps=2,
                          hyperparams={name: jnp.array([0.1, 0.2])})  # fmt: skip


# --- the catalogue's sums of squares -------------------------------------------------------------

# residuals whose sum of squares is the catalogue's function of the same name
RESIDUALS = {
    "rosenbrock": lambda b: jnp.stack([1.0 - b[0], 10.0 * (b[1] - b[0] ** 2)]),
    "himmelblau": lambda b: jnp.stack([b[0] ** 2 + b[1] - 11.0, b[0] + b[1] ** 2 - 7.0]),
    "beale": lambda b: jnp.stack(
        [1.5 - b[0] + b[0] * b[1], 2.25 - b[0] + b[0] * b[1] ** 2, 2.625 - b[0] + b[0] * b[1] ** 3]
    ),
}


@pytest.mark.parametrize("rule", ["gauss_newton", "levenberg_marquardt"])
@pytest.mark.parametrize("name", sorted(RESIDUALS))
def test_least_squares_on_the_catalogue(x64, rule, name):
    """The catalogue's sums of squares as Gaussian likelihoods (residuals against zero
    targets), from the catalogue's start, to one of its listed minima."""
    entry = jd.problems.CATALOGUE[name]
    residuals = RESIDUALS[name]
    probe = jnp.array([0.3, -0.7])
    assert float(jnp.sum(residuals(probe) ** 2)) == pytest.approx(float(entry(probe)))
    loss = jd.losses.nll(lambda b, x: residuals(b) + 0.0 * x, jd.likelihoods.Gaussian())
    m = residuals(probe).shape[0]
    data = (jnp.zeros(m), jnp.zeros(m))
    res = jd.fit(loss, jnp.asarray(entry.start), getattr(jd.optim, rule)(), data=data,
                 steps=200, tol=1e-10)  # fmt: skip
    assert res.success, jd.Status(int(res.status)).name
    minima = [np.asarray(p) for p, kind in entry.critical_points if kind == "minimum"]
    assert min(np.linalg.norm(np.asarray(res.params) - p) for p in minima) < 1e-6
    seen = np.asarray(res.losses)[: int(res.steps_taken) + 1]
    assert np.all(np.diff(seen) <= 0)


# --- batched LAPACK calls run one after the other ---------------------------------------------


def test_after_keeps_the_value_and_orders_two_batched_factorisations():
    """``linear_solve.after(x, dep)`` is ``x`` whatever ``dep`` holds (NaN and inf included),
    and in the compiled program the second batched eigendecomposition reads the first's
    output: on XLA:CPU two such calls running at once could deadlock jaxlib's thread pool."""
    from jaxdescent.optim.linear_solve import after

    x = jnp.array([1.0, -2.0, 3.5])
    for dep in (jnp.zeros(2), jnp.array([jnp.nan, 1.0]), jnp.array([jnp.inf])):
        np.testing.assert_array_equal(jax.jit(after)(x, dep), x)

    def two(a, b):
        first, _ = jnp.linalg.eigh(a)
        second, _ = jnp.linalg.eigh(after(b, first))
        return first, second

    a = jnp.broadcast_to(jnp.eye(3), (16, 3, 3))
    text = jax.jit(jax.vmap(two)).lower(a, 2.0 * a).compile().as_text()
    calls = [line for line in text.splitlines() if "custom_call_target" in line and "ev" in line]
    assert len(calls) == 2, calls
    operand = calls[1].split("custom-call(")[1].split(")")[0].strip()
    producer = next(line for line in text.splitlines() if line.strip().startswith(operand + " "))
    # the fusion that feeds the second call reads the first call's results
    assert "%eigh" in producer.split("kind=")[0].split("fusion(")[-1], producer
    np.testing.assert_allclose(jax.jit(jax.vmap(two))(a, 2.0 * a)[1], 2.0 * np.ones((16, 3)))
