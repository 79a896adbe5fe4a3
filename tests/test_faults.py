"""Faults inside a run: non-finite losses, gradients and updates; diverging restarts;
Newton's method on singular and indefinite Hessians; float32 logits heading to infinity.

A run must never return non-finite params: it stops with status ``NONFINITE`` and hands back
the last params at which the loss and the gradient were both finite. Optimizers and losses
are built once at module level so repeated runs reuse one compiled program.
"""

from __future__ import annotations

from typing import NamedTuple

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdescent as jd
from jaxdescent import Status

# every test here meets non-finite values on purpose; the warning is tested in test_train
pytestmark = pytest.mark.filterwarnings("ignore:.*ended NONFINITE:RuntimeWarning")


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


# --- a loss that turns NaN part-way --------------------------------------------------------


def nan_beyond_two(x):
    """(x - 5)^2 summed, NaN once x[0] >= 2: plain SGD from 0 hits it at its third update."""
    return jnp.sum((x - 5.0) ** 2) + jnp.where(x[0] < 2.0, 0.0, jnp.nan)


@jax.custom_jvp
def gradient_bomb(x):
    """Zero in value everywhere; its derivative is NaN once x >= 2."""
    return jnp.zeros_like(x)


@gradient_bomb.defjvp
def _gradient_bomb_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.zeros_like(x), jnp.where(x < 2.0, 0.0, jnp.nan) * t


def nan_gradient_beyond_two(x):
    """The same bowl with a finite loss everywhere but a NaN gradient once x[0] >= 2."""
    return jnp.sum((x - 5.0) ** 2) + jnp.sum(gradient_bomb(x))


SGD = jd.optim.sgd(0.1)


def sgd_path(x0, updates):
    """Plain float32 gradient descent on sum((x - 5)^2), step 0.1."""
    x = np.asarray(x0, np.float32)
    for _ in range(updates):
        x = x - np.float32(0.1) * (np.float32(2.0) * (x - np.float32(5.0)))
    return x


@pytest.mark.parametrize("loss", [nan_beyond_two, nan_gradient_beyond_two], ids=["loss", "grad"])
def test_nonfinite_midrun_returns_last_finite_params(loss):
    # x: 0 -> 1.0 -> 1.8 -> 2.44, where the loss (or only its gradient) is NaN
    res = jd.fit(loss, jnp.zeros(2), SGD, steps=10)
    assert int(res.status) == Status.NONFINITE
    assert int(res.steps_taken) == 2
    np.testing.assert_allclose(res.params, sgd_path([0.0, 0.0], 2), rtol=1e-6)
    # loss and gradient at the returned params are finite, and final_loss is that loss
    value, grad = jax.value_and_grad(loss)(res.params)
    assert bool(jnp.isfinite(value)) and all_finite(grad)
    assert float(res.final_loss) == pytest.approx(float(value), rel=1e-6)
    # the history shows the fault at step 3 and nothing computed after it
    assert all_finite(res.losses[:3]) and all_finite(res.grad_norms[:3])
    assert not (bool(jnp.isfinite(res.losses[3])) and bool(jnp.isfinite(res.grad_norms[3])))
    assert bool(jnp.all(jnp.isnan(res.losses[4:])))
    # the optimizer state matches the params: two updates counted
    assert int(res.opt_state.count) == 2


def test_nonfinite_at_the_start_returns_the_start():
    x0 = jnp.array([3.0, 3.0])  # already past the fault
    res = jd.fit(nan_beyond_two, x0, SGD, steps=10)
    assert int(res.status) == Status.NONFINITE
    assert int(res.steps_taken) == 0
    np.testing.assert_array_equal(res.params, x0)
    assert all_finite(res.params)


class PoisonState(NamedTuple):
    count: jax.Array


def poison_update(at: int, value: float) -> optax.GradientTransformation:
    """A faulty transform: replaces update number ``at`` by ``value`` (inf or NaN)."""

    def init(params):
        del params
        return PoisonState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        bad = state.count == at
        updates = jax.tree.map(lambda u: jnp.where(bad, jnp.asarray(value, u.dtype), u), updates)
        return updates, PoisonState(state.count + 1)

    return optax.GradientTransformation(init, update)


def tree_bowl(params):
    return jnp.sum((params["w"] - 1.0) ** 2) + 2.0 * jnp.sum((params["b"] + 0.5) ** 2)


MOMENTUM = jd.optim.momentum(0.05, form="classical")


@pytest.mark.parametrize("value", [jnp.inf, jnp.nan])
def test_faulty_update_is_rolled_back(value):
    opt = optax.chain(MOMENTUM, poison_update(3, value))
    p0 = {"w": jnp.zeros((2, 3)), "b": jnp.ones(3)}
    res = jd.fit(tree_bowl, p0, opt, steps=12)
    assert int(res.status) == Status.NONFINITE
    assert int(res.steps_taken) == 3
    assert all_finite(res.params)
    # exactly the params after the three good updates, as a hand-written loop computes them
    step = jax.jit(jd.make_step(tree_bowl, MOMENTUM))
    params, state = p0, MOMENTUM.init(p0)
    for _ in range(3):
        params, state, _, _ = step(params, state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), res.params, params)
    assert float(res.final_loss) == pytest.approx(float(tree_bowl(params)), rel=1e-6)


# --- multistart: diverging restarts ---------------------------------------------------------

X = jax.random.normal(jax.random.key(3), (32, 3))
Y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.1 * jax.random.normal(jax.random.key(4), (32,))
LINEAR = jd.models.linear(3, 1, w_init="glorot")
GAUSS = jd.losses.nll(LINEAR.apply, jd.likelihoods.Gaussian())
INJECTED_SGD = optax.inject_hyperparams(jd.optim.sgd)(learning_rate=0.05)


def assert_close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=0)  # vmap may reorder float32 sums


def test_diverging_restarts_leave_the_others_intact():
    # restarts 1 and 3 blow up (at once, and gradually); the others use the default 0.05
    lrs = jnp.array([0.05, 1e30, 0.05, 30.0, 0.05])
    kwargs = {"data": (X, Y), "steps": 40, "batch_size": 8}
    many = jd.multistart(
        LINEAR.init,
        GAUSS,
        INJECTED_SGD,
        key=jax.random.key(5),
        restarts=5,
        hyperparams={"learning_rate": lrs},
        **kwargs,
    )
    status = np.asarray(many.status)
    assert list(status) == [Status.MAX_STEPS, Status.NONFINITE] * 2 + [Status.MAX_STEPS]
    good = [0, 2, 4]
    # every restart's params are finite; a diverged one's loss on the whole data may overflow
    # (its last finite loss was on a mini-batch), but its status says so
    assert all_finite(many.params) and all_finite(many.final_losses[np.array(good)])
    assert many.best_index in good
    assert many.best_index == good[int(np.argmin(np.asarray(many.final_losses)[good]))]
    for i in good:  # each equals its own single fit (to rounding: vmap may reorder sums)
        single = jd.fit(
            GAUSS, LINEAR.init(many.init_keys[i]), INJECTED_SGD, key=many.fit_keys[i], **kwargs
        )
        jax.tree.map(lambda a, b, i=i: assert_close(a[i], b), many.params, single.params)
        assert_close(many.losses[i], single.losses)
        assert_close(many.final_losses[i], single.final_loss)


def test_nonfinite_restart_never_wins_even_with_the_lowest_loss():
    """best_index skips NONFINITE restarts and non-finite losses, whatever their value."""
    fields = dict.fromkeys(jd.MultistartResult._fields)
    fields.update(
        params=jnp.arange(4.0)[:, None],
        status=jnp.array([Status.MAX_STEPS, Status.NONFINITE, Status.CONVERGED, Status.MAX_STEPS]),
        final_losses=jnp.array([3.0, -1e30, 2.0, jnp.nan]),
    )
    base = jd.MultistartResult(**fields)
    assert base.best_index == 2
    assert float(base.best_params[0]) == 2.0


# --- Newton's method on singular and indefinite Hessians -------------------------------------


def polynomial(x, batch):
    """0.5 x^T A x + b^T x + c sum(x^4), for one problem given as a batch of one."""
    a, b, c = batch
    quadratic = 0.5 * jnp.einsum("i,nij,j->n", x, a, x) + b @ x
    return jnp.mean(quadratic + c * jnp.sum(x**4))


def problem(a, b, c):
    return (jnp.asarray([a], jnp.float32), jnp.asarray([b], jnp.float32), jnp.asarray([c]))


# Hessian faults, not the shared catalogue's functions: each is one polynomial's data, so one
# compiled program per rule runs them all
ZERO2 = [[0.0, 0.0], [0.0, 0.0]]
HARD_PROBLEMS = {
    # valley of minima along x0 + x1 = 1: H = [[1, 1], [1, 1]] is singular everywhere
    "singular-valley": (problem([[1.0, 1.0], [1.0, 1.0]], [-1.0, -1.0], 0.0), [2.0, -3.0]),
    # a plane: H = 0, unbounded below
    "zero-hessian": (problem(ZERO2, [1.0, 2.0], 0.0), [0.0, 0.0]),
    # sum x^4: H = 12 diag(x^2) becomes singular at the minimum
    "singular-at-minimum": (problem(ZERO2, [0.0, 0.0], 1.0), [1.0, -1.0]),
    # double well with a saddle at 0: H indefinite around it
    "near-saddle": (problem([[1.0, 0.0], [0.0, -1.0]], [0.0, 0.0], 0.25), [0.5, 1e-3]),
    "at-saddle": (problem([[1.0, 0.0], [0.0, -1.0]], [0.0, 0.0], 0.25), [0.0, 0.0]),
    # local maximum at 0: H negative definite near the start
    "near-maximum": (problem([[-1.0, 0.0], [0.0, -1.0]], [0.0, 0.0], 0.25), [0.1, -0.2]),
}
# every rule of the shared table that forms or applies a Hessian (the line search alone is
# steepest descent: it has no Hessian to be singular)
NEWTON_RULES = {
    name: helpers.RULES[name]()
    for name in helpers.names("value_fn", exclude=("backtracking_line_search",))
}


@pytest.mark.parametrize("rule", list(NEWTON_RULES))
def test_newton_stays_finite_on_singular_and_indefinite_hessians(rule):
    opt = NEWTON_RULES[rule]
    for name, (data, x0) in HARD_PROBLEMS.items():  # one compiled program for all problems
        x0 = jnp.asarray(x0)
        res = jd.fit(polynomial, x0, opt, data=data, steps=30)
        where = f"{rule} on {name}"
        # no tol: the budget ends the run, or (trust-region newton) a radius that fell below
        # the params' rounding with no step taken, which ends it STALLED
        ends = (Status.MAX_STEPS, Status.STALLED) if rule == "newton" else (Status.MAX_STEPS,)
        assert int(res.status) in ends, where
        assert all_finite(res.params) and all_finite(res.losses), where
        assert all_finite(res.grad_norms) and bool(jnp.isfinite(res.final_loss)), where
        if rule != "newton-textbook":  # the safeguarded rules never go uphill
            assert float(res.final_loss) <= float(polynomial(x0, data)), where


# --- float32 logistic regression on separable data -------------------------------------------


def test_float32_logistic_regression_on_separable_data_stays_finite():
    key_x, key_w = jax.random.split(jax.random.key(7))
    x = jax.random.normal(key_x, (64, 2), jnp.float32)
    x = x.at[:, 0].add(jnp.sign(x[:, 0]))  # a margin of 2 between the classes
    y = (x[:, 0] > 0).astype(jnp.float32)
    model = jd.models.logistic_regression(2)
    loss = jd.losses.nll(model.apply, jd.likelihoods.Bernoulli())
    # a huge step drives the logits towards infinity: the optimum is at |w| = inf
    res = jd.fit(
        loss, model.init(key_w), jd.optim.sgd(100.0), data=(x, y), steps=2000, batch_size=8
    )
    assert res.params["w"].dtype == jnp.float32
    assert int(res.status) == Status.MAX_STEPS
    assert all_finite(res.params) and all_finite(res.losses) and all_finite(res.grad_norms)
    logits = model.apply(res.params, x)
    assert float(jnp.min(jnp.abs(logits))) > 20.0  # saturated: sigmoid(20) = 1 in float32
    assert 0.0 <= float(res.final_loss) < 1e-6
    value, grad = jax.value_and_grad(loss)(res.params, (x, y))
    assert bool(jnp.isfinite(value)) and all_finite(grad)
