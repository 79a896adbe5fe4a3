"""``fit`` and ``make_step``: the compiled loop against a Python loop, stopping, chunks,
recompiles, non-finite steps, optax's own rules, keys, progress and bad input.

Losses and optimizers are built once at module level, and most runs share ``RUN``'s
configuration, so they reuse one compiled program (``fit`` caches it per loss, optimizer,
batch size and chunk length; ``steps``, ``tol``, the key, params and data values are
arguments of the compiled program).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Counter

import jaxdescent as jd
from jaxdescent import Status

KEY = jax.random.key(3)
X = jax.random.normal(jax.random.key(0), (23, 3))
Y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.3
DATA = (X, Y)
P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
ADAM = jd.optim.adam(0.05)
HALF = jd.optim.sgd(0.5)
RUN = {"data": DATA, "steps": 12, "batch_size": 4, "key": KEY}  # 5 batches an epoch


def mse(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def bowl(x):
    """sum(x^2): SGD with learning rate 0.5 lands on the minimum in one step."""
    return jnp.sum(x**2)


def assert_same_run(a, b):
    """Every field of two results, bit for bit."""
    for name in jd.FitResult._fields:
        if name == "wall_time":  # the one field that is not part of the run
            continue
        for u, v in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)


def test_fit_result_fields():
    res = jd.fit(mse, P0, ADAM, **RUN)
    assert jd.FitResult._fields == (
        "params", "opt_state", "losses", "grad_norms", "steps_taken", "status", "final_loss",
        "final_grad_norm", "aux", "trace", "wall_time",
    )  # fmt: skip
    assert res.losses.shape == res.grad_norms.shape == (12,)
    assert int(res.status) == Status.MAX_STEPS and not bool(res.converged)
    assert int(res.steps_taken) == 12
    np.testing.assert_allclose(res.final_loss, mse(res.params, DATA), rtol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_fit_equals_a_python_loop_of_make_step(batch_size):
    steps = 12  # 5 batches an epoch: crosses two epoch borders
    res = jd.fit(mse, P0, ADAM, **{**RUN, "batch_size": batch_size})
    step = jax.jit(jd.make_step(mse, ADAM))
    params, state, losses, norms = P0, ADAM.init(P0), [], []
    for t in range(steps):
        batch = DATA if batch_size is None else jd.data.batch_at(DATA, KEY, t, batch_size)
        params, state, value, norm = step(params, state, batch)
        losses.append(value)
        norms.append(norm)
    # the same XLA operations in a different program: equal up to float rounding (on CPU
    # they come out bit for bit)
    tight = {"rtol": 1e-6, "atol": 1e-7}
    np.testing.assert_allclose(res.losses, np.array(losses), **tight)
    np.testing.assert_allclose(res.grad_norms, np.array(norms), **tight)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tight), res.params, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tight), res.opt_state, state)


def test_make_step_without_data():
    step = jd.make_step(bowl, HALF)
    x, _, value, norm = step(jnp.array([3.0, 4.0]), HALF.init(jnp.zeros(2)))
    np.testing.assert_array_equal(x, [0.0, 0.0])
    assert float(value) == 25.0 and float(norm) == 10.0


def test_chunk_size_does_not_change_results():
    # with a tol that stops the run part-way, inside a chunk of 5 (mini-batches: the batch
    # gradient falls below tol earlier, and the full-data check keeps the run going)
    run = dict(RUN, steps=30)
    whole = jd.fit(mse, P0, ADAM, tol=2.0, **run)
    assert int(whole.status) == Status.CONVERGED and int(whole.steps_taken) == 24
    assert float(whole.final_grad_norm) < 2.0
    for chunk_size in (1, 5, 7):
        assert_same_run(jd.fit(mse, P0, ADAM, tol=2.0, chunk_size=chunk_size, **run), whole)


def test_tol_reports_the_step_and_stops_computing():
    loss = Counter(bowl)
    res = jd.fit(loss, jnp.array([1.0, -2.0]), HALF, steps=50, tol=1e-6)
    assert int(res.status) == Status.CONVERGED and bool(res.converged)
    # one update reaches the minimum; the second evaluation sees a zero gradient
    assert int(res.steps_taken) == 1
    np.testing.assert_array_equal(res.losses, [5.0, 0.0])
    assert res.grad_norms.shape == (2,)
    # steps is a budget: two evaluations, not 50; the second is also final_loss, so the end
    # costs no extra evaluation
    assert loss.calls == 2
    assert float(res.final_loss) == 0.0 and float(res.final_grad_norm) == 0.0


def test_newton_with_a_large_budget_costs_its_few_steps():
    def smooth(x):
        return jnp.sum(jnp.logaddexp(x, -x)) + 0.5 * jnp.sum(x**2)

    newton = jd.optim.newton()
    budget, exact = Counter(smooth), Counter(smooth)
    res = jd.fit(budget, jnp.array([1.5, -2.0]), newton, steps=50, tol=1e-5)
    assert int(res.status) == Status.CONVERGED and int(res.steps_taken) <= 6
    same = jd.fit(exact, jnp.array([1.5, -2.0]), newton, steps=int(res.steps_taken))
    np.testing.assert_array_equal(same.params, res.params)
    # the 50-step budget cost exactly what a run of just its steps costs: the same updates,
    # then one evaluation of the same last params (where the budget run found it had
    # converged, so it computed no further update)
    assert budget.calls == exact.calls


def test_second_call_with_the_same_shapes_does_not_recompile():
    def loss(p, batch):
        return jnp.mean(jnp.abs(batch[0] @ p["w"] + p["b"] - batch[1]))

    events = []

    def listen(event, duration, **kwargs):
        if event in ("/jax/core/compile/backend_compile_duration",
                     "/jax/core/compile/jaxpr_trace_duration"):  # fmt: skip
            events.append(event)

    def run(scale, key):
        res = jd.fit(loss, jax.tree.map(lambda p: p + scale, P0), ADAM,
                     data=(X * scale, Y), steps=9, batch_size=4, key=key)  # fmt: skip
        return jax.block_until_ready(res)

    run(1.0, KEY)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        run(2.0, jax.random.key(9))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert events == [], f"traced or compiled again: {events}"


def test_nonfinite_returns_the_last_finite_params():
    def cliff(x):  # NaN once x[0] > 2; SGD 0.1 from 0 goes 0 -> 1 -> 1.8 -> 2.44
        return jnp.sum((x - 5.0) ** 2) + jnp.where(x[0] > 2.0, jnp.nan, 0.0)

    sgd = jd.optim.sgd(0.1)
    # steps=3 ends right after the bad update (caught at the end), steps=20 inside the loop
    for steps, what in ((3, "the loss or gradient"), (20, "the loss")):
        with pytest.warns(RuntimeWarning, match="ended NONFINITE") as caught:
            res = jd.fit(cliff, jnp.zeros(2), sgd, steps=steps)
        assert len(caught) == 1 and what in str(caught[0].message)
        assert "after 2 accepted updates" in str(caught[0].message)
        assert int(res.status) == Status.NONFINITE, steps
        assert not res.success and "non-finite" in res.message
        np.testing.assert_allclose(res.params, [1.8, 1.8], rtol=1e-6)
        assert int(res.steps_taken) == 2
        assert bool(jnp.isfinite(res.final_loss))
        np.testing.assert_allclose(res.final_loss, cliff(res.params), rtol=1e-6)
        assert bool(jnp.all(jnp.isfinite(jax.grad(cliff)(res.params))))
        assert int(res.opt_state.count) == 2


def test_optax_rules_run_in_fit():
    rosenbrock = jd.problems.rosenbrock
    start = jnp.array([-1.2, 1.0])
    # L-BFGS with its zoom line search needs value, grad and value_fn: fit passes them
    res = jd.fit(rosenbrock, start, optax.lbfgs(), steps=200, tol=1e-4)
    assert int(res.status) == Status.CONVERGED
    np.testing.assert_allclose(res.params, [1.0, 1.0], atol=1e-3)
    # a plain optax transformation (no extra-args support) and a chain of them
    for opt in (optax.adam(0.05), optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))):
        res = jd.fit(mse, P0, opt, data=DATA, steps=300)
        assert float(res.final_loss) < 0.05 * float(mse(P0, DATA))


def test_typed_and_legacy_keys_give_the_same_run():
    kwargs = {**RUN}
    del kwargs["key"]
    typed = jd.fit(mse, P0, ADAM, key=jax.random.key(5), **kwargs)
    legacy = jd.fit(mse, P0, ADAM, key=jax.random.PRNGKey(5), **kwargs)
    assert_same_run(typed, legacy)
    other = jd.fit(mse, P0, ADAM, key=jax.random.key(6), **kwargs)
    assert not np.array_equal(other.losses, typed.losses)


def test_progress_bar_between_chunks(capsys):
    res = jd.fit(mse, P0, ADAM, progress=True, chunk_size=5, **RUN)
    err = capsys.readouterr().err
    assert "5/12" in err and "10/12" in err and "12/12" in err and "loss=" in err
    plain = jd.fit(mse, P0, ADAM, **RUN)
    assert_same_run(res, plain)
    assert capsys.readouterr().err == ""


def not_scalar(p, batch):
    return (batch[0] @ p["w"] - batch[1]) ** 2


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"data": (X, Y[:5])}, ValueError, "share their leading size"),
        ({"batch_size": 24}, ValueError, "at most the number of examples (23)"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"loss": not_scalar}, ValueError, "scalar"),
        ({"params": {"w": jnp.zeros(3, jnp.int32), "b": jnp.zeros(())}}, TypeError, "floating"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
        ({"key": 3}, TypeError, "PRNG key"),
        ({"optimizer": "adam"}, TypeError, "optax GradientTransformation"),
    ],
)
def test_bad_input_is_caught_before_compiling(monkeypatch, kwargs, error, fragment):
    def refuse(*args, **kw):
        raise AssertionError("compiled before the bad input was caught")

    monkeypatch.setattr("jaxdescent._engine.programs.loop", refuse)
    args = {"loss": mse, "params": P0, "optimizer": ADAM, "data": DATA, "steps": 5}
    args.update(kwargs)
    with pytest.raises(error) as excinfo:
        jd.fit(args.pop("loss"), args.pop("params"), args.pop("optimizer"), **args)
    assert fragment in str(excinfo.value)
