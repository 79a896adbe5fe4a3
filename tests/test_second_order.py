"""Second-order rules and the backtracking line search (jaxdescent.optim)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdescent as jd
from jaxdescent.optim.line_search import armijo_step

A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
B = np.array([1.0, -2.0, 0.5])
QUADRATIC = jd.problems.make_quadratic(A, B)


def _steepest_descent():
    return optax.chain(jd.optim.sgd(1.0), jd.optim.backtracking_line_search())


def _all_rules():
    return {
        "newton": jd.optim.newton(),
        "newton_textbook": jd.optim.newton(damping=0.0, line_search=False),
        "newton_levenberg": jd.optim.newton(damping=1e-3, line_search=False),
        "saddle_free_newton": jd.optim.saddle_free_newton(),
        "newton_cg": jd.optim.newton_cg(),
        "steepest_descent": _steepest_descent(),
    }


def _status(res) -> str:
    return jd.Status(int(res.status)).name


# --- Newton: quadratics and logistic regression ----------------------------------------------


@pytest.mark.parametrize(
    "opt",
    [
        jd.optim.newton(),
        jd.optim.newton(damping=0.0, line_search=False),
        jd.optim.newton_cg(max_cg_steps=3, cg_tol=1e-6),
    ],
    ids=["newton", "textbook", "newton_cg"],
)
def test_newton_solves_a_quadratic_in_one_step(opt):
    res = jd.fit(QUADRATIC, jnp.array([5.0, -3.0, 2.0]), opt, steps=10, tol=1e-4)
    assert _status(res) == "CONVERGED"
    assert int(res.steps_taken) == 1
    np.testing.assert_allclose(res.params, np.linalg.solve(A, B), atol=1e-5)


def test_newton_logistic_regression_matches_sklearn(x64):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d = 300, 4
    x = rng.normal(size=(n, d))
    w_true = np.array([1.5, -2.0, 0.5, 0.0])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(x @ w_true + 0.3)))).astype(np.float64)
    # C = inf is no penalty (penalty=None, deprecated in scikit-learn 1.8).
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=100)
    ref.fit(x, y)

    model = jd.models.logistic_regression(d, dtype=jnp.float64)
    loss = jd.losses.nll(model.apply, jd.likelihoods.Bernoulli())
    params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0)))
    res = jd.fit(loss, params, jd.optim.newton(), data=(x, y), steps=30, tol=1e-12)
    assert _status(res) == "CONVERGED"
    assert int(res.steps_taken) < 12  # quadratic convergence: a handful of steps
    np.testing.assert_allclose(res.params["w"][:, 0], ref.coef_[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.params["b"], ref.intercept_, rtol=1e-6, atol=1e-6)

    # newton_cg with exact CG solves agrees with newton on this small problem
    cg = jd.optim.newton_cg(max_cg_steps=d + 1, cg_tol=1e-12)
    res_cg = jd.fit(loss, params, cg, data=(x, y), steps=30, tol=1e-12)
    assert int(res_cg.steps_taken) == int(res.steps_taken)
    for a, b in zip(jax.tree.leaves(res_cg.params), jax.tree.leaves(res.params)):
        np.testing.assert_allclose(a, b, atol=1e-10)


# --- Rosenbrock: Newton against steepest descent (Nocedal and Wright, Exercise 3.1) --------


def test_rosenbrock_newton_in_about_21_iterations_steepest_descent_in_thousands(x64):
    x0 = jnp.array([-1.2, 1.0])
    res = jd.fit(
        jd.problems.rosenbrock, x0, jd.optim.newton(line_search=True), steps=100, tol=1e-8
    )
    assert _status(res) == "CONVERGED"
    assert 15 <= int(res.steps_taken) <= 30  # Nocedal and Wright report 21
    np.testing.assert_allclose(res.params, [1.0, 1.0], atol=1e-8)
    losses = np.asarray(res.losses[: int(res.steps_taken) + 1])
    assert np.all(np.diff(losses) <= 1e-12)  # the line search only ever goes downhill

    sd = jd.fit(jd.problems.rosenbrock, x0, _steepest_descent(), steps=1000, tol=1e-8)
    assert _status(sd) == "MAX_STEPS"
    assert float(sd.grad_norms[-1]) > 1e-4  # far from 1e-8 after 1000 steps
    assert np.all(np.isfinite(np.asarray(sd.losses)))


# --- saddle points ---------------------------------------------------------------------------


def test_plain_newton_converges_to_the_saddle_saddle_free_newton_escapes():
    f = jd.problems.saddle  # x^2 - y^2
    x0 = jnp.array([0.3, 1e-3])
    plain = jd.fit(f, x0, jd.optim.newton(damping=0.0, line_search=False), steps=20, tol=1e-6)
    assert _status(plain) == "CONVERGED"
    np.testing.assert_allclose(plain.params, [0.0, 0.0], atol=1e-6)
    assert jd.diagnostics.classify_critical_point(f, plain.params).kind == "saddle"

    free = jd.fit(f, x0, jd.optim.saddle_free_newton(), steps=12, tol=1e-6)
    assert _status(free) == "MAX_STEPS"
    assert float(free.final_loss) < -1.0 < float(f(x0))  # downhill, past the saddle value 0
    assert abs(float(free.params[1])) > 1.0
    assert abs(float(free.params[0])) < 1e-6  # the positive-curvature coordinate is solved


# --- robustness ------------------------------------------------------------------------------

CAT = jd.problems.CATALOGUE
SINGULAR_OR_INDEFINITE = (
    (CAT["monkey_saddle"], [0.0, 0.0]),  # H = 0, g = 0
    (lambda x: (x[0] + x[1]) ** 2, [1.0, 2.0]),  # H singular, g != 0
    (lambda x: x[0] - 2.0 * x[1], [1.0, 1.0]),  # H = 0, g != 0
    (lambda x: jnp.sum(x**4), [0.0, 1e-3]),  # H singular near 0
    (CAT["saddle"], [0.5, 0.5]),  # indefinite
    (CAT["himmelblau"], [-0.27, -0.92]),  # negative definite, near its maximum
)


@pytest.mark.parametrize("name", sorted(_all_rules()))
def test_rules_stay_finite_on_singular_and_indefinite_hessians(name):
    """Each rule on every problem at once (vmap over a switch), with pytree float32 params."""
    opt = _all_rules()[name]
    fns = [f for f, _ in SINGULAR_OR_INDEFINITE]
    starts = jnp.asarray([x for _, x in SINGULAR_OR_INDEFINITE], jnp.float32)

    def step(which, x):
        def value_fn(p):
            return jax.lax.switch(which, fns, jnp.concatenate([p["a"], p["b"]]))

        params = {"a": x[:1], "b": x[1:]}
        updates, state = opt.update(
            jax.grad(value_fn)(params), opt.init(params), params, value_fn=value_fn
        )
        return value_fn(params), value_fn(jax.tree.map(jnp.add, params, updates)), updates, state

    before, after, updates, state = jax.jit(jax.vmap(step))(jnp.arange(len(fns)), starts)
    for leaf in jax.tree.leaves((after, updates, state)):
        assert np.all(np.isfinite(np.asarray(leaf))), (name, leaf)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
    assert jax.tree.structure(updates) == jax.tree.structure({"a": 0, "b": 0})
    if name not in ("newton_textbook", "newton_levenberg"):
        assert np.all(np.asarray(after) <= np.asarray(before)), (name, before, after)
    if name == "newton":  # at the saddle, mu was raised past -lambda_min of the scaled Hessian
        scale = np.asarray(state.scale[4], np.float64)  # Moré's D: the region is ||D d|| <= Delta
        h = np.asarray(jax.hessian(fns[4])(starts[4]), np.float64) / np.outer(scale, scale)
        assert float(state.damping[4]) > -np.linalg.eigvalsh(h)[0] > 0


def test_hyperparameters_are_checked():
    cases = [
        (lambda: jd.optim.newton(damping=-1.0), "damping"),
        (lambda: jd.optim.newton(damping_factor=1.0), "damping_factor"),
        (lambda: jd.optim.newton(max_damping_steps=0), "max_damping_steps"),
        (lambda: jd.optim.newton(shrink=1.0), "shrink"),
        (lambda: jd.optim.newton(c1=0.0), "c1"),
        (lambda: jd.optim.saddle_free_newton(damping=0.0), "damping"),
        (lambda: jd.optim.newton_cg(max_cg_steps=0), "max_cg_steps"),
        (lambda: jd.optim.newton_cg(cg_tol=0.0), "cg_tol"),
        (lambda: jd.optim.newton_cg(damping=-0.1), "damping"),
        (lambda: jd.optim.backtracking_line_search(initial_step=0.0), "initial_step"),
        (lambda: jd.optim.backtracking_line_search(shrink=0.0), "shrink"),
        (lambda: jd.optim.backtracking_line_search(c1=1.0), "c1"),
        (lambda: jd.optim.backtracking_line_search(max_steps=0), "max_steps"),
    ]
    for make, name in cases:
        with pytest.raises(ValueError, match=name):
            make()
    with pytest.raises(TypeError, match="line_search"):
        jd.optim.newton(line_search="yes")


def test_value_fn_is_required():
    x = jnp.ones(2)
    for opt in _all_rules().values():
        with pytest.raises(ValueError, match="value_fn"):
            opt.update(x, opt.init(x), x)


# --- under vmap: multistart --------------------------------------------------------------


@pytest.mark.parametrize("name", ["newton", "newton_cg"])
def test_rules_run_under_multistart(name):
    """Restarts on the six-hump camel in float32, to a tolerance near float32's resolution."""
    opt = _all_rules()[name]
    f = jd.problems.six_hump_camel
    (xmin, xmax), (ymin, ymax) = jd.problems.CATALOGUE["six_hump_camel"].domain
    low, high = jnp.array([xmin, ymin]), jnp.array([xmax, ymax])

    def init(key):
        return jax.random.uniform(key, (2,), jnp.float32, low, high)

    many = jd.multistart(init, f, opt, key=jax.random.key(0), restarts=4, steps=40, tol=1e-4)
    assert np.all(np.asarray(many.status) == int(jd.Status.CONVERGED)), many.status
    assert np.all(np.asarray(many.steps_taken) < 20)
    for i in range(4):  # a descent method with line search ends at minima, not saddles
        point = many.params[i]
        assert jd.diagnostics.classify_critical_point(f, point, tol=1e-3) == "minimum", point
    if name == "newton":  # restart 0 equals a fit from its own start
        one = jd.fit(f, init(many.init_keys[0]), opt, steps=40, tol=1e-4)
        np.testing.assert_allclose(one.params, many.params[0], rtol=1e-5, atol=1e-5)
        # from the catalogue start: float32 evaluates this loss to about 1e-6 (its terms
        # cancel), so near the minimum no step is seen to lower it; a step whose computed
        # loss rises is still never taken, and the run ends where float32 can tell
        start = jnp.asarray(jd.problems.CATALOGUE["six_hump_camel"].start, jnp.float32)
        res = jd.fit(f, start, opt, steps=40, tol=1e-3)
        assert _status(res) == "CONVERGED" and int(res.steps_taken) < 10
        seen = np.asarray(res.losses)[: int(res.steps_taken)]
        assert np.all(np.diff(seen) <= 0) and float(res.final_loss) <= seen[-1], seen


# --- newton_cg at scale ----------------------------------------------------------------------


def test_newton_cg_runs_on_a_million_parameters():
    n = 500_000
    scales = jnp.tile(jnp.array([1.0, 2.0, 4.0], jnp.float32), n // 3 + 1)[:n]

    def loss(p):  # separable quadratic, three distinct curvatures: CG is exact in 3 steps
        return 0.5 * jnp.sum(scales * (p["u"] - 1.0) ** 2) + 0.5 * jnp.sum((p["v"] + 1.0) ** 2)

    params = {"u": jnp.zeros(n, jnp.float32), "v": jnp.zeros(n, jnp.float32)}
    opt = jd.optim.newton_cg(max_cg_steps=5, cg_tol=1e-6)
    res = jd.fit(loss, params, opt, steps=3, tol=1e-2)
    assert _status(res) == "CONVERGED"
    assert int(res.steps_taken) == 1
    assert float(res.final_loss) < 1e-6
    assert int(res.opt_state.cg_steps) <= 4


# --- backtracking line search --------------------------------------------------------------


def test_line_search_takes_the_first_armijo_step():
    f = QUADRATIC
    x = jnp.array([5.0, -3.0, 2.0])
    g = jax.grad(f)(x)
    opt = jd.optim.backtracking_line_search(initial_step=1.0, shrink=0.5, c1=0.3)
    direction = -g
    updates, state = opt.update(direction, opt.init(x), x, value_fn=f)
    f0, slope = float(f(x)), float(jnp.vdot(g, direction))
    t = 1.0
    while float(f(x + t * direction)) > f0 + 0.3 * t * slope:
        t *= 0.5
    assert float(state.step_size) == pytest.approx(t)
    np.testing.assert_allclose(updates, t * direction, rtol=1e-6)


def test_line_search_gives_zero_for_an_ascent_direction_and_runs_under_vmap():
    f = QUADRATIC
    x = jnp.array([5.0, -3.0, 2.0])
    g = jax.grad(f)(x)
    opt = jd.optim.backtracking_line_search()
    updates, state = opt.update(g, opt.init(x), x, value_fn=f)  # uphill
    assert float(jnp.max(jnp.abs(updates))) == 0.0 and float(state.step_size) == 0.0

    xs = jnp.stack([x, -x, 0.1 * x])

    def one(p):
        u, s = opt.update(-jax.grad(f)(p), opt.init(p), p, value_fn=f)
        return u, s.step_size

    batched, steps = jax.jit(jax.vmap(one))(xs)
    for i in range(3):
        u, s = one(xs[i])
        np.testing.assert_allclose(batched[i], u, rtol=1e-6)
        assert float(steps[i]) == pytest.approx(float(s))


def test_armijo_step_never_accepts_nan():
    def f(x):  # NaN for steps that go too far
        return jnp.where(x[0] > 1.0, jnp.nan, (x[0] - 2.0) ** 2)

    x = jnp.array([0.0])
    t, found = armijo_step(f, x, jnp.array([4.0]), f(x), jnp.array(-16.0))
    assert bool(found) and float(t) == 0.25


# --- float32: a step whose loss rises is never taken -----------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        jd.optim.newton,
        lambda: jd.optim.newton(line_search=True),
        jd.optim.saddle_free_newton,
        jd.optim.newton_cg,
        jd.optim.gauss_newton,
        jd.optim.levenberg_marquardt,
    ],
    ids=["newton", "newton_line_search", "saddle_free", "newton_cg", "gauss_newton", "lm"],
)
def test_no_rule_takes_a_step_that_raises_a_float32_loss(make):
    """``1e5 + cos(x)`` from ``pi + 1.3``: the loss's float32 grid is 0.0078, so the
    model's decrease near the minimum is below rounding. A Newton step that raises the loss
    by ~120 ulps used to be accepted, and 30 steps wandered to x = 6097."""
    x0 = jnp.array([np.pi + 1.3], jnp.float32)
    if make in (jd.optim.gauss_newton, jd.optim.levenberg_marquardt):
        # the same loss as a likelihood: a Gaussian residual sqrt(2 (1e5 + cos x)) against 0
        loss = jd.losses.nll(
            lambda w, x: jnp.sqrt(2.0 * (1e5 + jnp.cos(w[0]))) + 0.0 * x, jd.likelihoods.Gaussian()
        )
        data = (jnp.zeros((1,), jnp.float32), jnp.zeros((1,), jnp.float32))
        res = jd.fit(loss, x0, make(), data=data, steps=30)
    else:
        res = jd.fit(lambda x: 1e5 + jnp.cos(x[0]), x0, make(), steps=30)
    seen = np.asarray(res.losses)
    seen = seen[np.isfinite(seen)]
    # Newton's rules judge a step by the loss itself: it never rises. The Gauss-Newton rules
    # judge it by the likelihood's kernel (-z^2 / 2, without the constant log(2 pi) / 2);
    # adding that constant in float32 may round the recorded loss up by one ulp (0.0078 at
    # 1e5), far from the ~120 ulps of the old fault
    slack = 0.0 if make not in (jd.optim.gauss_newton, jd.optim.levenberg_marquardt) else 2**-7
    assert np.all(np.diff(seen) <= slack), seen
    assert float(res.final_loss) <= seen[-1] + slack
    if make is not jd.optim.gauss_newton:  # its model (J ~ 0 here) may jump to another minimum
        assert abs(float(res.params[0]) - np.pi) < 1.3 + 1e-6, res.params


def test_trust_region_newton_stalled_at_its_precision_is_a_fixed_point():
    """At the Rosenbrock minimum no step lowers the loss in float64: once the proposal is
    below the rounding of the params, an update makes no trial, and from the returned state
    every later update leaves params and state as they are, bit for bit."""
    with jax.enable_x64(True):
        f = CAT["rosenbrock"]
        start = jnp.asarray(CAT["rosenbrock"].start)
        opt = jd.optim.newton()
        short = jd.fit(f, start, opt, steps=100)
        long = jd.fit(f, start, opt, steps=300)
        assert _status(long) == "STALLED" and int(long.steps_taken) < 100
        np.testing.assert_array_equal(long.params, short.params)
        np.testing.assert_allclose(long.params, [1.0, 1.0], rtol=1e-12)
        params, state = long.params, long.opt_state
        assert bool(state.stuck)
        for _ in range(3):
            step, new_state = opt.update(jax.grad(f)(params), state, params, value_fn=f)
            assert float(jnp.max(jnp.abs(step))) == 0.0
            for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
                if a.shape == () and a.dtype == jnp.int32:
                    continue  # the update count
                np.testing.assert_array_equal(a, b)
            state = new_state


# --- the trust region: one proposal per update, exact within its radius ---------------------


def _intercept_only_logistic():
    y = jnp.asarray(np.tile([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0], 10))
    x = jnp.zeros((y.shape[0], 1))
    loss = jd.losses.nll(lambda w, x: w[0] + 0.0 * x[:, 0], jd.likelihoods.Bernoulli())
    return loss, (x, y), np.log(0.7 / 0.3)


@pytest.mark.parametrize(
    "case",
    ["log_cosh", "sqrt_1_plus_x2", "sum_cos_scaled", "intercept_only_logistic"],
)
def test_trust_region_newton_moves_after_a_rejected_first_step(case):
    """One-parameter and separable problems whose first Newton step overshoots: the next
    proposal solves the subproblem within the shrunk radius (g lies in the top eigenspace
    there, which is not the hard case) and the run converges."""
    data, opt = None, jd.optim.newton()
    if case == "log_cosh":
        loss, start, answer = lambda x: jnp.sum(jnp.log(jnp.cosh(x))), [3.0], [0.0]
    elif case == "sqrt_1_plus_x2":
        loss, start, answer = lambda x: jnp.sum(jnp.sqrt(1.0 + x**2)), [2.0], [0.0]
    elif case == "sum_cos_scaled":  # equal coordinates: H = -cos(1) I, one eigenspace
        loss, start, answer = lambda x: jnp.sum(jnp.cos(x)), [1.0, 1.0], [np.pi, np.pi]
        opt = jd.optim.newton(scaled=True)
    else:
        loss, data, answer = _intercept_only_logistic()
        start, answer = [5.0], [answer]
    res = jd.fit(loss, jnp.array(start), opt, data=data, steps=40, tol=1e-5)
    assert _status(res) == "CONVERGED", (case, res.params, int(res.steps_taken))
    np.testing.assert_allclose(res.params, answer, atol=1e-4)
    seen = np.asarray(res.losses)[: int(res.steps_taken) + 1]
    assert np.all(np.diff(seen) <= 0), seen


def test_a_rejected_proposal_is_an_update_that_shrinks_the_radius_to_a_quarter():
    """log(cosh(x)) from 3 with a first radius of 10 (Moré's scaled units): each step to the
    boundary that overshoots is an update of its own, zero, after which the radius is a
    quarter of that step; the first proposal within the region that lowers the loss is
    taken."""
    f = lambda x: jnp.sum(jnp.log(jnp.cosh(x)))  # noqa: E731
    x = jnp.array([3.0])
    opt = jd.optim.newton(initial_radius=10.0)
    state, radius, rejected = opt.init(x), 10.0, 0
    for _ in range(10):
        step, state = opt.update(jax.grad(f)(x), state, x, value_fn=f)
        size = float(jnp.abs(step[0]) * state.scale[0])
        if bool(state.accepted):
            break
        rejected += 1
        assert float(jnp.max(jnp.abs(step))) == 0.0
        assert float(state.radius) == pytest.approx(0.25 * radius, rel=1e-5)
        radius = float(state.radius)
    assert rejected >= 2 and bool(state.accepted)
    assert 0.0 < size <= radius * (1 + 1e-5) and float(f(x + step)) < float(f(x))


def _secular_reference(lam, gt, radius):
    """The smallest mu >= max(0, -lam_min) with ||z(mu)|| <= radius, by bisection."""
    norm = lambda mu: np.sqrt(np.sum(gt**2 / (lam + mu) ** 2))  # noqa: E731
    if lam[0] > 0 and norm(0.0) <= radius:
        return 0.0
    low = max(0.0, -lam[0]) + 1e-12
    high = low + np.linalg.norm(gt) / radius + np.max(np.abs(lam))
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if norm(mid) > radius else (low, mid)
    return high


@pytest.mark.parametrize("where", ["top", "bottom", "spread"])
@pytest.mark.parametrize("curvature", ["definite", "indefinite"])
def test_the_subproblem_step_is_the_exact_solution_within_the_radius(x64, where, curvature):
    from jaxdescent.optim.trust_region import more_sorensen

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    lam = (
        np.array([0.5, 1.0, 2.0, 4.0])
        if curvature == "definite"
        else np.array([-1.0, 0.5, 2.0, 4.0])
    )
    gt = {
        "top": [0.0, 0.0, 0.0, 3.0],
        "bottom": [3.0, 0.0, 0.0, 0.0],
        "spread": [1.0, -2.0, 0.5, 3.0],
    }
    gt = np.asarray(gt[where])
    for radius in (0.05, 0.3, 2.0):
        z, mu, predicted = more_sorensen(
            jnp.asarray(lam), jnp.asarray(q), jnp.asarray(q @ gt), radius
        )
        z, mu = np.asarray(z), float(mu)
        assert np.linalg.norm(z) <= radius * (1 + 1e-9), (radius, np.linalg.norm(z))
        ref_mu = _secular_reference(lam, gt, radius)
        h = q @ np.diag(lam) @ q.T
        model = lambda v: q @ gt @ v + 0.5 * v @ h @ v  # noqa: E731
        assert float(predicted) == pytest.approx(-model(z), rel=1e-9, abs=1e-12)
        ref = -np.linalg.solve(h + ref_mu * np.eye(4), q @ gt)
        # the model's minimum over the ball: no better than the step found
        assert model(z) <= model(ref) + 1e-9
        if lam[0] > 0 or abs(gt[0]) > 0:  # not the hard case: the step is the unique solution
            np.testing.assert_allclose(z, ref, rtol=1e-6, atol=1e-9)
            assert mu == pytest.approx(ref_mu, rel=1e-6, abs=1e-9)


def test_newton_reads_only_the_arguments_of_its_form():
    with pytest.raises(ValueError, match="damping is not read by the trust-region form"):
        jd.optim.newton(damping=0.1)
    with pytest.raises(ValueError, match="eta is not read by line_search=True"):
        jd.optim.newton(line_search=True, eta=1e-3)
    with pytest.raises(ValueError, match="shrink is not read by line_search=False"):
        jd.optim.newton(0.0, line_search=False, shrink=0.3)
    # a sweep of a value the form does not read is refused, not silently ignored
    f = CAT["rosenbrock"]
    init = lambda key: jnp.asarray(CAT["rosenbrock"].start) + 0.1 * jax.random.normal(key, (2,))  # noqa: E731
    for opt, name in ((jd.optim.newton(), "damping"), (jd.optim.newton(line_search=True), "eta"),
                      (jd.optim.saddle_free_newton(line_search=False), "shrink")):  # fmt: skip
        with pytest.raises(ValueError, match="not a runtime hyperparameter"):
            jd.multistart(init, f, opt, key=jax.random.key(0), restarts=2, steps=3,
                          hyperparams={name: jnp.array([0.1, 0.2])})  # fmt: skip
    # and one it reads is honoured: restarts with different radii take different paths
    many = jd.multistart(lambda key: jnp.asarray(CAT["rosenbrock"].start), f, jd.optim.newton(),
                         key=jax.random.key(0), restarts=2, steps=3,
                         hyperparams={"initial_radius": jnp.array([0.01, 1.0])})  # fmt: skip
    assert not np.allclose(many.params[0], many.params[1])


@pytest.mark.parametrize(
    "name", [n for n, e in CAT.items() if any(k == "minimum" for _, k in e.critical_points)]
)
def test_trust_region_newton_on_the_catalogue(x64, name):
    """From each catalogue start with a minimum: never a rising loss, and the run ends at a
    minimum (one the catalogue lists, where the start lies in its domain's basins)."""
    entry = CAT[name]
    res = jd.fit(entry.fn, jnp.asarray(entry.start), jd.optim.newton(), steps=100, tol=1e-8)
    assert _status(res) == "CONVERGED", (name, int(res.steps_taken))
    seen = np.asarray(res.losses)[: int(res.steps_taken) + 1]
    assert np.all(np.diff(seen) <= 0), seen
    assert jd.diagnostics.classify_critical_point(entry.fn, res.params, tol=1e-6) == "minimum"
    (xmin, xmax), (ymin, ymax) = entry.domain
    x, y = np.asarray(res.params)
    if xmin <= x <= xmax and ymin <= y <= ymax and name != "rastrigin":
        listed = [np.asarray(p) for p, kind in entry.critical_points if kind == "minimum"]
        assert min(np.linalg.norm(np.asarray(res.params) - p) for p in listed) < 1e-6


def test_newton_uses_the_fisher_information_where_it_is_the_hessian(x64):
    """For a GLM with canonical link (an affine model, read from its jaxpr) the Hessian is
    J^T F J / n; newton forms it so, and it equals jax.hessian of the loss."""
    from jaxdescent import _curvature as curvature
    from jaxdescent.optim.second_order import _hessian

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(40, 3)))
    params = {"w": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(0.2)}
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    linear = lambda p, x: x @ p["w"] + p["b"]  # noqa: E731
    assert curvature.is_affine(lambda v: linear(unravel(v), x), flat)
    assert not curvature.is_affine(lambda v: jnp.exp(linear(unravel(v), x)), flat)
    assert not curvature.is_affine(lambda v: jax.nn.relu(linear(unravel(v), x)), flat)
    assert not curvature.is_affine(lambda v: unravel(v)["w"] * unravel(v)["w"][0], flat)
    assert curvature.is_affine(lambda v: jnp.concatenate([2.0 * v[:2], v[2:] @ x[:2, :2]]), flat)
    for likelihood, y in ((jd.likelihoods.Bernoulli(), (rng.random(40) < 0.5) * 1.0),
                          (jd.likelihoods.Poisson(), rng.poisson(2.0, 40) * 1.0)):  # fmt: skip
        loss = jd.losses.nll(linear, likelihood)
        batch = (x, jnp.asarray(y))
        f = lambda v: loss(unravel(v), batch)  # noqa: E731
        h = _hessian(f, flat, loss.rule_extras(batch), unravel)
        np.testing.assert_allclose(h, jax.hessian(f)(flat), rtol=1e-12, atol=1e-14)
        assert curvature.canonical_link(likelihood)
    assert not curvature.canonical_link(jd.likelihoods.Laplace())
    assert not curvature.canonical_link(jd.likelihoods.Gaussian(learn_scale=True))
