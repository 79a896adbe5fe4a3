"""``jd.solve``: the pure solve under ``jax.jit``, ``jax.vmap`` and ``jax.grad``; the same
answers as ``fit``; implicit and unrolled derivatives; clear errors for the host drivers."""

from __future__ import annotations

import warnings

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdescent as jd
from jaxdescent import Status

X = jax.random.normal(jax.random.key(0), (40, 3))
Y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.3


def mse(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}


def bowl(x):
    return 0.5 * jnp.sum(x**2)


def assert_tree_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


# --- the same run as fit ---------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 8])
def test_solve_equals_fit_eager_and_jitted(batch_size):
    run = {"data": (X, Y), "steps": 30, "tol": 1e-2, "batch_size": batch_size,
           "key": jax.random.key(1)}  # fmt: skip
    opt = jd.optim.adam(0.1)
    fitted = jd.fit(mse, P0, opt, record_every=None, **run)
    eager = jd.solve(mse, P0, opt, **run)
    jitted = jax.jit(lambda p, d: jd.solve(mse, p, opt, **{**run, "data": d}))(P0, (X, Y))
    for sol in (eager, jitted):
        assert_tree_equal(sol.params, fitted.params)
        assert int(sol.status) == int(fitted.status)
        assert int(sol.steps_taken) == int(fitted.steps_taken)
        np.testing.assert_allclose(sol.final_loss, fitted.final_loss, rtol=1e-6)
    assert_tree_equal(eager.opt_state, fitted.opt_state)


def test_solve_history_is_fixed_size_and_matches_fit():
    opt = jd.optim.sgd(0.1)
    fitted = jd.fit(bowl, jnp.ones(2), opt, steps=50, tol=1e-3, record_every=2)
    sol = jd.solve(bowl, jnp.ones(2), opt, steps=50, tol=1e-3, record_every=2)
    assert sol.losses.shape == (25,) and sol.grad_norms.shape == (25,)
    rows = fitted.losses.shape[0]
    np.testing.assert_array_equal(sol.losses[:rows], fitted.losses)
    assert bool(jnp.all(jnp.isnan(sol.losses[rows:])))
    assert jd.solve(bowl, jnp.ones(2), opt, steps=5).losses is None


def test_solve_reuses_its_program_for_fresh_rules_and_other_budgets():
    from tests.test_engine import Compiles

    jd.solve(bowl, jnp.ones(2), jd.optim.adam(0.1), steps=10)
    with Compiles() as c:
        jd.solve(bowl, jnp.ones(2), jd.optim.adam(0.2), steps=17, tol=1e-3)
    assert c.count == 0


# --- inside transformations ------------------------------------------------------------------


def test_vmap_over_starts_each_lane_ends_on_its_own_and_a_nan_lane_is_kept_apart():
    def cliff(x):  # NaN once x[0] > 2
        return jnp.sum((x - 5.0) ** 2) + jnp.where(x[0] > 2.0, jnp.nan, 0.0)

    starts = jnp.array([[0.0, 0.0], [1.9, 4.0], [-3.0, 1.0]])
    sols = jax.jit(jax.vmap(lambda p: jd.solve(cliff, p, jd.optim.sgd(0.1), steps=40,
                                                tol=1e-3)))(starts)  # fmt: skip
    status = np.asarray(sols.status)
    assert set(status.tolist()) == {Status.NONFINITE}
    # each lane ends at its own step, at the last params where it was finite
    for i in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            one = jd.fit(cliff, starts[i], jd.optim.sgd(0.1), steps=40, tol=1e-3)
        np.testing.assert_allclose(sols.params[i], one.params, rtol=1e-6)
        assert int(sols.steps_taken[i]) == int(one.steps_taken)
    assert len(set(np.asarray(sols.steps_taken).tolist())) > 1

    def bowl_or_nan(x):  # lane 1 starts where the loss is NaN; the others converge
        return jnp.where(x[0] > 10.0, jnp.nan, bowl(x))

    starts = jnp.array([[1.0, 1.0], [11.0, 0.0], [3.0, -2.0]])
    sols = jax.jit(jax.vmap(lambda p: jd.solve(bowl_or_nan, p, jd.optim.sgd(0.5), steps=50,
                                               tol=1e-4)))(starts)  # fmt: skip
    assert np.asarray(sols.status).tolist() == [Status.CONVERGED, Status.NONFINITE,
                                                Status.CONVERGED]  # fmt: skip
    np.testing.assert_array_equal(sols.params[1], starts[1])
    assert int(sols.steps_taken[1]) == 0
    assert np.all(np.isfinite(np.asarray(sols.params)[[0, 2]]))


def test_vmap_over_data_sets_and_hyperparameters_and_nested():
    keys = jax.random.split(jax.random.key(3), 5)
    ys = jax.vmap(lambda k: Y + jax.random.normal(k, Y.shape))(keys)

    def one(y, lr):
        return jd.solve(mse, P0, jd.optim.sgd(lr), data=(X, y), steps=200, tol=1e-4)

    sols = jax.jit(jax.vmap(one, in_axes=(0, None)))(ys, 0.3)
    for i in range(5):
        ref = jnp.linalg.lstsq(jnp.c_[X, jnp.ones(40)], ys[i])[0]
        np.testing.assert_allclose(sols.params["w"][i], ref[:3], atol=1e-3)
    lrs = jnp.array([0.05, 0.3])
    grid = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))(ys[:3], lrs)
    assert grid.status.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            alone = jd.solve(mse, P0, jd.optim.sgd(float(lrs[j])), data=(X, ys[i]),
                             steps=200, tol=1e-4)  # fmt: skip
            np.testing.assert_allclose(grid.params["w"][i, j], alone.params["w"], rtol=1e-5)
            assert int(grid.steps_taken[i, j]) == int(alone.steps_taken)


def test_vmap_over_keys_draws_each_lane_its_own_batches():
    keys = jax.random.split(jax.random.key(4), 3)
    opt = jd.optim.adam(0.05)
    sols = jax.jit(jax.vmap(lambda k: jd.solve(mse, P0, opt, data=(X, Y), steps=25,
                                               batch_size=8, key=k)))(keys)  # fmt: skip
    for i in range(3):
        one = jd.fit(mse, P0, opt, data=(X, Y), steps=25, batch_size=8, key=keys[i])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-6, atol=1e-7),
                     sols.params, one.params)  # fmt: skip
        np.testing.assert_allclose(sols.final_loss[i], one.final_loss, rtol=1e-5)


def _gaussian_peak(b, x):
    return b[0] * jnp.exp(-((x - b[1]) ** 2) / (2.0 * b[2] ** 2))


def log_cosh_bowl(x):
    """Smooth and strictly convex, not quadratic: minimum where tanh(x - 1) = -0.2 x."""
    return jnp.sum(jnp.logaddexp(x - 1.0, 1.0 - x)) + 0.1 * jnp.sum(x**2)


# every rule that runs on a plain loss, as the shared table builds it (the likelihood rules
# have their own test below). At the table's learning rate 0.05, centered RMSprop with
# Nesterov momentum oscillates about the first start's minimum for all 60 steps: rounding
# that differs between two compilations (a caller's jit, jaxdescent's program) moves such a
# trajectory by 1e-4 and more, so the vmap test runs it at 0.02, where it settles.
_SETTLES = {"rmsprop-centered-nesterov": {"learning_rate": 0.02}}
RULES = {
    name: helpers.RULES[name](**_SETTLES.get(name, {}))
    for name in helpers.names("grads", "value_fn")
}


@pytest.mark.parametrize("name", list(RULES))
def test_every_rule_runs_under_vmap(name):
    opt = RULES[name]
    starts = jnp.array([[0.5, -0.4], [-2.0, 3.0], [1.5, 1.5]])
    run = {"steps": 60, "tol": 1e-4}
    sols = jax.jit(jax.vmap(lambda p: jd.solve(log_cosh_bowl, p, opt, **run)))(starts)
    for i in range(3):
        one = jd.solve(log_cosh_bowl, starts[i], opt, **run)
        np.testing.assert_allclose(sols.params[i], one.params, rtol=1e-4, atol=1e-4)
        assert int(sols.status[i]) == int(one.status)


@pytest.mark.parametrize("rule", helpers.names("likelihood"))
def test_least_squares_rules_under_vmap_fit_many_curves(rule):
    x = jnp.linspace(-3.0, 3.0, 25)
    truth = jnp.array([[2.0, 0.5, 1.0], [1.0, -0.5, 0.7], [3.0, 0.0, 1.5], [0.5, 1.0, 0.8]])
    curves = jax.vmap(lambda b: _gaussian_peak(b, x))(truth)
    loss = jd.losses.nll(_gaussian_peak, jd.likelihoods.Gaussian())
    opt = helpers.RULES[rule]()
    start = jnp.array([1.0, 0.2, 1.1])
    sols = jax.jit(jax.vmap(lambda y: jd.solve(loss, start, opt, data=(x, y), steps=60,
                                               tol=1e-5)))(curves)  # fmt: skip
    np.testing.assert_allclose(jnp.abs(sols.params), jnp.abs(truth), atol=2e-3)
    for i in range(4):
        one = jd.fit(loss, start, opt, data=(x, curves[i]), steps=60, tol=1e-5)
        np.testing.assert_allclose(sols.params[i], one.params, rtol=1e-4, atol=1e-5)


# --- derivatives -----------------------------------------------------------------------------


# ridge regression is a quadratic: the textbook Newton step (a plain solve, a small program)
# lands on the solution
NEWTON_STEP = jd.optim.newton(damping=0.0, line_search=False)


def _ridge(w, data):
    x, y, lam = data
    return 0.5 * jnp.mean((x @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)


def test_implicit_derivatives_equal_ridge_closed_form(x64):
    x = jax.random.normal(jax.random.key(5), (30, 4), jnp.float64)
    y = jax.random.normal(jax.random.key(6), (30,), jnp.float64)
    n = x.shape[0]

    def exact(lam, y=y):
        return jnp.linalg.solve(x.T @ x / n + lam * jnp.eye(4), x.T @ y / n)

    def solved(lam, y=y):
        return jd.solve(_ridge, jnp.zeros(4), NEWTON_STEP, data=(x, y, lam), steps=20,
                        tol=1e-12)  # fmt: skip

    @jax.jit
    def derivatives(lam, y):
        params = lambda lam, y: solved(lam, y).params  # noqa: E731
        return (
            jax.jacfwd(params)(lam, y),
            jax.jacrev(params)(lam, y),
            jax.jacrev(params, argnums=1)(lam, y),  # with respect to the targets
            jax.hessian(lambda lam: params(lam, y)[0])(lam),
            jax.grad(lambda lam: solved(lam, y).final_loss)(lam),
        )

    lam = 0.3
    fwd, rev, dy, second, dloss = derivatives(lam, y)
    want = jax.jacfwd(exact)(lam)
    np.testing.assert_allclose(fwd, want, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(rev, want, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(dy, jax.jacrev(exact, argnums=1)(lam, y), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(second, jax.hessian(lambda lam: exact(lam)[0])(lam), rtol=1e-6)
    # the final loss moves as the loss does at the solution (envelope theorem)
    np.testing.assert_allclose(dloss, 0.5 * jnp.sum(exact(lam) ** 2), rtol=1e-8)


def test_implicit_derivatives_through_a_closure_and_zero_for_the_start(x64):
    x = jax.random.normal(jax.random.key(7), (20, 3), jnp.float64)
    y = jnp.ones(20, jnp.float64)

    def solved(lam, start):
        def loss(w):  # lam is closed over, not passed in data
            return _ridge(w, (x, y, lam))

        return jd.solve(loss, start, NEWTON_STEP, steps=20, tol=1e-12).params

    def exact(lam):
        return jnp.linalg.solve(x.T @ x / 20 + lam * jnp.eye(3), x.T @ y / 20)

    start = jnp.zeros(3)
    by_lam, by_start = jax.jit(jax.jacrev(solved, argnums=(0, 1)))(0.5, start)
    np.testing.assert_allclose(by_lam, jax.jacfwd(exact)(0.5), rtol=1e-8)
    np.testing.assert_array_equal(by_start, 0.0)


def test_implicit_derivatives_are_nan_where_the_hessian_is_singular(x64):
    def flat(w, c):  # w[1] does not enter the loss: H is singular
        return 0.5 * (w[0] - c) ** 2

    d = jax.grad(lambda c: jd.solve(flat, jnp.zeros(2), jd.optim.sgd(0.5), data=c, steps=50,
                                    tol=1e-10).params[0])(2.0)  # fmt: skip
    assert np.isnan(float(d))


def test_implicit_derivatives_match_central_differences_on_nist(x64):
    if "Misra1a" not in jd.nist.names():
        pytest.skip("the NIST StRD data are not here (shared/data/nist-strd)")
    prob = jd.nist.load("Misra1a")
    loss = jd.losses.nll(prob.model, jd.likelihoods.Gaussian())
    x, y = prob.x, prob.y

    def solved(y):
        return jd.solve(loss, prob.certified, jd.optim.levenberg_marquardt(), data=(x, y),
                        steps=100, tol=1e-12).params  # fmt: skip

    jac = jax.jacrev(solved)(y)
    h = 1e-4 * jnp.maximum(jnp.abs(y), 1.0)
    for i in (0, len(y) // 2, len(y) - 1):
        e = jnp.zeros_like(y).at[i].set(h[i])
        central = (solved(y + e) - solved(y - e)) / (2 * h[i])
        np.testing.assert_allclose(jac[:, i], central, rtol=1e-5, atol=1e-10)


def test_unrolled_derivative_of_a_learning_rate():
    a, x0, steps = 2.0, 1.5, 400

    def final(lr):
        sol = jd.solve(lambda x: 0.5 * a * x**2, jnp.asarray(x0), jd.optim.sgd(lr),
                       steps=steps, adjoint="unrolled")  # fmt: skip
        return sol.params

    lr = 0.004
    want = -steps * a * (1 - lr * a) ** (steps - 1) * x0
    np.testing.assert_allclose(jax.grad(final)(lr), want, rtol=1e-4)
    np.testing.assert_allclose(jax.jacfwd(final)(lr), want, rtol=1e-4)
    np.testing.assert_allclose(final(lr), (1 - lr * a) ** steps * x0, rtol=1e-4)
    with pytest.raises(ValueError, match="tol"):
        jd.solve(bowl, jnp.ones(2), jd.optim.sgd(0.1), steps=5, tol=1e-3, adjoint="unrolled")


def test_unrolled_memory_grows_slower_than_the_steps():
    def grad_program(steps):
        def final(lr):
            return jd.solve(bowl, jnp.ones(64), jd.optim.sgd(lr), steps=steps,
                            adjoint="unrolled").final_loss  # fmt: skip

        return jax.jit(jax.grad(final)).lower(0.01).compile().memory_analysis()

    small, large = grad_program(100), grad_program(1600)
    if small is None:
        pytest.skip("this backend reports no memory analysis")
    grow = large.temp_size_in_bytes / max(small.temp_size_in_bytes, 1)
    assert grow < 16 / 2  # 16 times the steps, at most about 4 times the memory


# --- clear errors, no poisoned state ---------------------------------------------------------


def test_fit_and_multistart_under_transformations_say_to_use_solve():
    with pytest.raises(TypeError, match=r"jd\.solve"):
        jax.jit(lambda p: jd.fit(bowl, p, jd.optim.sgd(0.1), steps=5).params)(jnp.ones(2))
    with pytest.raises(TypeError, match=r"jd\.fit .*jd\.solve"):
        jax.vmap(lambda p: jd.fit(bowl, p, jd.optim.sgd(0.1), steps=5).params)(jnp.ones((2, 2)))
    with pytest.raises(TypeError, match=r"jd\.solve"):
        jax.grad(lambda s: jd.fit(lambda x: s * bowl(x), jnp.ones(2), jd.optim.sgd(0.1),
                                  steps=5).final_loss)(1.0)  # fmt: skip
    with pytest.raises(TypeError, match=r"jd\.multistart .*jd\.solve"):
        jax.jit(lambda d: jd.multistart(lambda k: jnp.ones(2), mse, jd.optim.sgd(0.1), data=d,
                                        key=jax.random.key(0), restarts=2, steps=3))((X, Y))  # fmt: skip
    # nothing was left behind: a later fit without a key works
    res = jd.fit(mse, P0, jd.optim.sgd(0.1), data=(X, Y), steps=5, batch_size=8)
    assert int(res.steps_taken) == 5


def test_throw_makes_a_failed_solve_loud():
    with pytest.raises(RuntimeError, match="MAX_STEPS"):
        jd.solve(bowl, jnp.ones(2), jd.optim.sgd(0.01), steps=3, tol=1e-8, throw=True)
    ok = jd.solve(bowl, jnp.ones(2), jd.optim.sgd(0.01), steps=3, throw=True)  # no tol: fine
    assert int(ok.status) == Status.MAX_STEPS
    run = jax.jit(lambda p: jd.solve(bowl, p, jd.optim.sgd(0.01), steps=3, tol=1e-8,
                                     throw=True).params)  # fmt: skip
    with pytest.raises(Exception, match="MAX_STEPS"):
        jax.block_until_ready(run(jnp.ones(2)))
    good = jax.jit(lambda p: jd.solve(bowl, p, jd.optim.sgd(0.5), steps=30, tol=1e-6,
                                      throw=True).params)(jnp.ones(2))  # fmt: skip
    np.testing.assert_allclose(good, 0.0, atol=1e-6)


def test_solve_checks_its_input_before_compiling():
    with pytest.raises(TypeError, match="steps must be an integer"):
        jd.solve(bowl, jnp.ones(2), jd.optim.sgd(0.1), steps=2.5)
    with pytest.raises(ValueError, match="adjoint"):
        jd.solve(bowl, jnp.ones(2), jd.optim.sgd(0.1), steps=2, adjoint="backprop")
    with pytest.raises(ValueError, match="tol must be >= 0"):
        jd.solve(bowl, jnp.ones(2), jd.optim.sgd(0.1), steps=2, tol=-1.0)
    with pytest.raises(ValueError, match="batch_size needs data"):
        jd.solve(bowl, jnp.ones(2), jd.optim.sgd(0.1), steps=2, batch_size=2)
    with pytest.raises(TypeError, match="floating"):
        jd.solve(bowl, jnp.ones(2, jnp.int32), jd.optim.sgd(0.1), steps=2)


@pytest.mark.parametrize("name", ["Misra1a", "Lanczos3", "BoxBOD"])
def test_jitted_solve_equals_fit_on_nist(x64, name):
    if name not in jd.nist.names():
        pytest.skip("the NIST StRD data are not here (shared/data/nist-strd)")
    prob = jd.nist.load(name)
    loss = jd.losses.nll(prob.model, jd.likelihoods.Gaussian())
    rule = jd.optim.levenberg_marquardt()
    run = {"steps": 200, "tol": 1e-6}
    for start in prob.starts:
        fitted = jd.fit(loss, start, rule, data=(prob.x, prob.y), **run)
        sol = jax.jit(lambda b, x, y: jd.solve(loss, b, rule, data=(x, y), **run))(
            start, prob.x, prob.y
        )
        # inside a caller's jit the loop is compiled with the default XLA options (fit
        # compiles curvature rules for latency), so the last digits, and near the floor of
        # the precision the number of steps, may differ
        # (Misra1a's second start: fit STALLED at the floor, the jitted solve CONVERGED)
        np.testing.assert_allclose(sol.params, fitted.params, rtol=1e-8)
        at_the_end = {int(jd.Status.CONVERGED), int(jd.Status.STALLED)}
        assert int(fitted.status) in at_the_end and int(sol.status) in at_the_end
        if int(sol.status) != int(fitted.status):  # then only where the gradient is at tol
            assert min(float(sol.final_grad_norm), float(fitted.final_grad_norm)) < 1e-6
