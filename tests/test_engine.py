"""The engine's promises: honest statuses, what results show, and a loop that costs nothing
(no recompiles for fresh equal optimizers, bounded caches, histories that cost what they
record)."""

from __future__ import annotations

import gc
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdescent as jd
from jaxdescent import Status
from jaxdescent.optim._common import curvature_rule

X = jax.random.normal(jax.random.key(0), (200, 3))
Y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.1 * jax.random.normal(jax.random.key(1), (200,))
MODEL = jd.models.linear(3, 1)
LOSS = jd.losses.nll(MODEL.apply, jd.likelihoods.Gaussian())
P0 = MODEL.init(jax.random.key(2))


def full_norm(loss, params, data):
    grads = jax.grad(loss)(params, data)
    return float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))


class Traces:
    """Counts JAX traces (jaxprs built) while active."""

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


class Compiles:
    """Counts XLA compilations while active."""

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


# --- statuses that mean what they say ---------------------------------------------------------


def test_minibatch_converged_means_the_full_data_gradient():
    """SGD (batch_size=1) meets tol=0.2 on single examples long before the full-data
    gradient does; the run must not stop there and call it CONVERGED."""
    res = jd.fit(LOSS, P0, jd.optim.sgd(0.01), data=(X, Y), steps=300, batch_size=1, tol=0.2)
    # some batch gradient fell below tol early on: a batch's norm alone does not stop a run
    assert np.nanmin(np.asarray(res.grad_norms)) < 0.2
    norm = full_norm(LOSS, res.params, (X, Y))
    np.testing.assert_allclose(float(res.final_grad_norm), norm, rtol=1e-4)
    if res.success:
        assert norm < 0.2
    else:
        assert norm >= 0.2 and str(Status(int(res.status))) == "MAX_STEPS"
    # with a generous budget the confirmed criterion is met, at the returned params
    long = jd.fit(LOSS, P0, jd.optim.sgd(0.01), data=(X, Y), steps=3000, batch_size=8, tol=0.2)
    assert long.success and full_norm(LOSS, long.params, (X, Y)) < 0.2


def test_a_last_update_that_lands_below_tol_is_converged():
    quadratic = lambda x: jnp.sum((x - 1.5) ** 2)  # noqa: E731
    res = jd.fit(quadratic, jnp.zeros(3), jd.optim.newton(), steps=1, tol=1e-5)
    assert res.success and int(res.steps_taken) == 1
    np.testing.assert_allclose(res.params, 1.5, rtol=1e-6)
    assert float(res.final_grad_norm) < 1e-5


def test_a_converged_checkpoint_goes_on_under_a_tighter_tol(tmp_path):
    run = {"data": (X, Y), "steps": 400, "checkpoint_dir": tmp_path}
    loose = jd.fit(LOSS, P0, jd.optim.sgd(0.05), tol=1e-1, **run)
    assert loose.success
    same = jd.fit(LOSS, P0, jd.optim.sgd(0.05), tol=1e-1, resume=True, **run)
    assert same.success and int(same.steps_taken) == int(loose.steps_taken)
    tight = jd.fit(LOSS, P0, jd.optim.sgd(0.05), tol=1e-5, resume=True, **run)
    assert tight.success and int(tight.steps_taken) > int(loose.steps_taken)
    assert float(tight.final_grad_norm) < 1e-5
    fresh = jd.fit(LOSS, P0, jd.optim.sgd(0.05), tol=1e-5, data=(X, Y), steps=400)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), tight.params,
                 fresh.params)  # fmt: skip


def test_a_run_resumed_with_its_budget_spent_ends_there(tmp_path):
    """A checkpoint saved while the run went on, resumed with ``steps`` equal to the steps it
    had done: nothing runs, and the run ends MAX_STEPS (not RUNNING), or CONVERGED where
    its gradient norm meets ``tol``, with the loss at its params."""

    def stop_at_second_chunk(info):
        if info.step > 4:
            raise KeyboardInterrupt

    opt = jd.optim.sgd(0.05)
    run = {"data": (X, Y), "checkpoint_dir": tmp_path, "chunk_size": 4}
    with pytest.raises(KeyboardInterrupt):
        jd.fit(LOSS, P0, opt, steps=12, callback=stop_at_second_chunk, **run)
    spent = jd.fit(LOSS, P0, opt, steps=4, resume=True, **run)
    assert str(jd.Status(int(spent.status))) == "MAX_STEPS" and int(spent.steps_taken) == 4
    assert float(spent.final_loss) == pytest.approx(float(LOSS(spent.params, (X, Y))))
    four = jd.fit(LOSS, P0, opt, data=(X, Y), steps=4)
    jax.tree.map(np.testing.assert_array_equal, spent.params, four.params)
    met = jd.fit(LOSS, P0, opt, steps=4, tol=1e3, resume=True, **run)
    assert str(jd.Status(int(met.status))) == "CONVERGED"


def test_resume_accepts_a_folder_and_refuses_another_structure(tmp_path):
    def loss(p, batch):
        x, y = batch
        return jnp.mean((x @ p["u"] + p["v"] - y) ** 2)

    params = {"u": jnp.zeros(3), "v": jnp.zeros(())}
    first = jd.fit(loss, params, jd.optim.adam(0.05), data=(X, Y), steps=20, resume=tmp_path)
    assert (tmp_path / "checkpoint.jdc").exists()  # resume=folder saves there too
    more = jd.fit(loss, params, jd.optim.adam(0.05), data=(X, Y), steps=30, resume=tmp_path)
    whole = jd.fit(loss, params, jd.optim.adam(0.05), data=(X, Y), steps=30)
    np.testing.assert_array_equal(more.params["u"], whole.params["u"])
    assert int(first.steps_taken) == 20 and int(more.steps_taken) == 30

    def as_tuple(p, batch):
        return loss({"u": p[0], "v": p[1]}, batch)

    with pytest.raises(jd.checkpoint.CheckpointError, match="params of another structure"):
        jd.fit(as_tuple, (jnp.zeros(3), jnp.zeros(())), jd.optim.adamw(0.05), data=(X, Y),
               steps=30, resume=tmp_path)  # fmt: skip
    with pytest.raises(jd.checkpoint.CheckpointError, match="optimizer state of another"):
        jd.fit(loss, params, jd.optim.adamw(0.05), data=(X, Y), steps=30, resume=tmp_path)
    with pytest.raises(jd.checkpoint.CheckpointError, match="batch_size=None"):
        jd.fit(loss, params, jd.optim.adam(0.05), data=(X, Y), steps=30, batch_size=8,
               resume=tmp_path)  # fmt: skip


def test_every_restart_nonfinite_has_no_best():
    with pytest.warns(RuntimeWarning, match="4 of 4 restarts"):
        many = jd.multistart(lambda k: jax.random.normal(k, (2,)),
                             lambda x: jnp.sum(x**2) + jnp.nan, jd.optim.sgd(0.1),
                             key=jax.random.key(0), restarts=4, steps=3)  # fmt: skip
    assert np.all(np.asarray(many.status) == Status.NONFINITE)
    with pytest.raises(ValueError, match="every restart ended non-finite"):
        _ = many.best_index
    assert "no finite restart" in repr(many)


def test_multisteps_of_a_second_order_rule_runs_in_fit():
    f = lambda x: jnp.sum((x - 1.0) ** 2) + 0.1 * jnp.sum(x**4)  # noqa: E731
    res = jd.fit(f, jnp.zeros(3), optax.MultiSteps(jd.optim.newton(), 2), steps=30, tol=1e-5)
    assert res.success
    np.testing.assert_allclose(res.params, jd.fit(f, jnp.zeros(3), jd.optim.newton(), steps=30,
                               tol=1e-5).params, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_params_run_with_float32_histories(dtype):
    f = lambda x: 1e5 + jnp.sum((x.astype(jnp.float32) - 3.0) ** 2)  # noqa: E731
    res = jd.fit(f, jnp.zeros(2, dtype), jd.optim.adam(0.2), steps=60)
    assert res.params.dtype == dtype and res.losses.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(res.losses)))  # 1e5 overflows float16's history
    np.testing.assert_allclose(np.asarray(res.params, np.float32), 3.0, atol=0.1)
    newton = jd.fit(lambda x: jnp.sum((x - 3.0) ** 2), jnp.zeros(2, dtype), jd.optim.newton(),
                    steps=5, tol=1e-2)  # fmt: skip
    assert newton.success and newton.params.dtype == dtype


# --- results people can read ----------------------------------------------------------------


def test_results_read_like_scipy_and_print_short():
    res = jd.fit(LOSS, P0, jd.optim.adam(0.05), data=(X, Y), steps=2000, tol=1e-3)
    text = repr(res)
    assert len(text) < 200 and "status=CONVERGED" in text and "steps_taken=" in text
    assert res.success is True and res.message == "the gradient norm fell below tol"
    assert res.wall_time > 0
    assert str(Status.MAX_STEPS) == "MAX_STEPS" and f"{Status(2)}" == "MAX_STEPS"
    assert f"{Status(2):d}" == "2"
    many = jd.multistart(MODEL.init, LOSS, jd.optim.adam(0.05), key=jax.random.key(0),
                         restarts=64, data=(X, Y), steps=300)  # fmt: skip
    text = repr(many)
    assert len(text) < 200 and "restarts=64" in text and "64 MAX_STEPS" in text
    assert many.success.shape == (64,) and many.message == "64 restarts: 64 MAX_STEPS"


def test_has_aux_returns_the_aux_at_the_final_params():
    def loss(p, batch):
        x, y = batch
        residual = MODEL.apply(p, x)[:, 0] - y
        return jnp.mean(residual**2), {"max_abs": jnp.max(jnp.abs(residual))}

    res = jd.fit(loss, P0, jd.optim.adam(0.05), data=(X, Y), steps=50, has_aux=True)
    plain = jd.fit(lambda p, b: loss(p, b)[0], P0, jd.optim.adam(0.05), data=(X, Y), steps=50)
    np.testing.assert_array_equal(res.params["w"], plain.params["w"])
    expected = jnp.max(jnp.abs(MODEL.apply(res.params, X)[:, 0] - Y))
    np.testing.assert_allclose(res.aux["max_abs"], expected, rtol=1e-6)
    many = jd.multistart(MODEL.init, loss, jd.optim.adam(0.05), key=jax.random.key(0),
                         restarts=3, data=(X, Y), steps=20, has_aux=True)  # fmt: skip
    assert many.aux["max_abs"].shape == (3,)
    with pytest.raises(ValueError, match=r"\(value, aux\)"):
        jd.fit(lambda p, b: loss(p, b)[0], P0, jd.optim.adam(0.05), data=(X, Y), steps=5,
               has_aux=True)  # fmt: skip


def test_trace_and_callback_watch_a_run():
    f = jd.problems.rosenbrock
    x0 = jnp.array([-1.2, 1.0])
    opt = jd.optim.adam(0.05)
    res = jd.fit(f, x0, opt, steps=30, trace=10)
    assert res.trace.shape == (4, 2)  # steps 0, 10, 20, 30
    step = jax.jit(jd.make_step(f, opt))
    x, state, path = x0, opt.init(x0), [x0]
    for i in range(30):
        x, state, _, _ = step(x, state)
        if (i + 1) % 10 == 0:
            path.append(x)
    np.testing.assert_allclose(res.trace, jnp.stack(path), rtol=1e-6)
    seen = []
    jd.fit(f, x0, opt, steps=30, chunk_size=7, callback=seen.append)
    assert [info.step for info in seen] == [7, 14, 21, 28, 30]
    assert all(info.losses.shape == (min(7, 30 - 7 * i),) for i, info in enumerate(seen))
    many = jd.multistart(lambda k: jax.random.normal(k, (2,)), f, opt, key=jax.random.key(0),
                         restarts=3, steps=20, trace=5)  # fmt: skip
    assert many.trace.shape == (3, 5, 2)
    np.testing.assert_array_equal(many.trace[:, -1], many.params)


def test_load_params_reads_a_run_without_its_state(tmp_path):
    res = jd.fit(LOSS, P0, jd.optim.adam(0.05), data=(X, Y), steps=10, checkpoint_dir=tmp_path)
    params = jd.checkpoint.load_params(tmp_path / "checkpoint.jdc")
    jax.tree.map(np.testing.assert_array_equal, params, res.params)
    like = jd.checkpoint.load_params(tmp_path, like=P0)
    assert jax.tree.structure(like) == jax.tree.structure(P0)


# --- a loop that costs nothing ---------------------------------------------------------------


def test_fresh_equal_optimizers_reuse_the_compiled_loop():
    f = jd.problems.rosenbrock
    x0 = jnp.array([-1.2, 1.0])
    jd.fit(f, x0, jd.optim.adam(1e-3), steps=20)
    jd.fit(f, x0, optax.adam(3e-3), steps=20)
    with Compiles() as c:
        for lr in (2e-3, 5e-3):
            jd.fit(f, x0, jd.optim.adam(lr), steps=20)  # another value, same program
        jd.fit(f, x0, optax.adam(3e-3), steps=20)  # an equal fresh optax rule
        jd.fit(f, x0, jd.optim.newton(damping=0.5, line_search=True), steps=3)
        jd.fit(f, x0, jd.optim.newton(damping=0.7, line_search=True), steps=3)
    assert c.count <= 4, c.count  # newton's first call compiles; nothing else does
    with Compiles() as c:
        jd.fit(f, x0, jd.optim.newton(damping=0.9, line_search=True), steps=3)
    assert c.count == 0


@pytest.mark.parametrize("batch_size", [None, 4])
def test_a_run_compiles_one_program(batch_size):
    """The run's final evaluation is part of the loop's program, not a second program."""
    data = (jnp.linspace(-1.0, 1.0, 8)[:, None], jnp.linspace(0.0, 2.0, 8))
    p0 = {"w": jnp.ones(1), "b": jnp.zeros(())}
    opt = jd.optim.adam(1e-2)
    run = {"steps": 6, "batch_size": batch_size}

    def first(p, batch):
        return jnp.mean((batch[0] @ p["w"] + p["b"] - batch[1]) ** 2)

    def second(p, batch):  # a new loss: its program is compiled afresh
        return jnp.mean(jnp.abs(batch[0] @ p["w"] + p["b"] - batch[1]))

    jd.fit(first, p0, opt, data=data, **run)  # set-up work for these shapes, compiled once
    with Compiles() as c:
        res = jd.fit(second, p0, opt, data=data, **run)
    assert c.count == 1, c.count
    assert int(res.status) == Status.MAX_STEPS
    assert float(res.final_loss) == pytest.approx(float(second(res.params, data)), rel=1e-6)


def test_a_first_fit_compiles_only_its_loop():
    """Nothing before the loop compiles: the optimizer's zeros, counters and hyperparameters
    and the carry's counters come from the host (eager ``jnp`` ops would compile a small
    program per new shape, ~20 ms each, on a model's first fit)."""
    data = (jnp.ones((11, 7)), jnp.zeros((11, 5)))  # shapes no other test uses
    p0 = {"w": jnp.full((7, 5), 0.1), "b": jnp.full((1, 5), 0.2), "s": jnp.ones((1, 5))}

    def loss(p, batch):
        return jnp.mean((batch[0] @ p["w"] * p["s"] + p["b"] - batch[1]) ** 2)

    with Compiles() as c:
        res = jd.fit(loss, p0, jd.optim.adam(1e-2), data=data, steps=4)
    assert c.count == 1, c.count
    assert int(res.steps_taken) == 4


def test_second_order_loops_compile_for_latency_and_small_runs_unoptimised():
    from jaxdescent._engine import programs

    small = {"b": jnp.zeros(9)}, (np.zeros((250, 1)), np.zeros(250))  # a NIST problem
    assert programs.small_run(*small, None)
    restarts = {"b": jnp.zeros((4096, 9))}, small[1]  # restarts decide as their fits do
    assert programs.small_run(*restarts, None, batched=True)
    big = {"w": jnp.zeros(100)}, (np.zeros((20000, 100)), np.zeros(20000))
    assert not programs.small_run(*big, None)
    assert programs.small_run(*big, batch_size=1)  # one example per step
    if jax.default_backend() == "cpu":
        lm, adam = jd.optim.levenberg_marquardt(), jd.optim.adam(1e-3)
        assert programs.compiler_options(lm, True)["xla_backend_optimization_level"] == 0
        assert programs.compiler_options(lm, False) == programs.LATENCY_OPTIONS
        assert programs.compiler_options(adam, True) is None  # first-order: the defaults


class _Count(NamedTuple):
    count: jax.Array


def _gd_rule(stalls: bool):
    """Gradient descent as a curvature rule, with or without a stall test (count >= 3)."""

    def init(params):
        del params
        return _Count(jnp.zeros([], jnp.int32))

    def update(grads, state, params=None, **extra):
        del params, extra
        return jax.tree.map(lambda g: -0.1 * g, grads), _Count(state.count + 1)

    return curvature_rule(init, update, stalled=(lambda s: s.count >= 3) if stalls else None)


def test_rules_that_differ_only_in_their_stall_test_compile_their_own_loops():
    f = jd.problems.quadratic
    stalled = jd.fit(f, jnp.ones(2), _gd_rule(True), steps=20)
    plain = jd.fit(f, jnp.ones(2), _gd_rule(False), steps=20)
    assert int(stalled.status) == Status.STALLED and int(stalled.steps_taken) == 3
    assert int(plain.status) == Status.MAX_STEPS and int(plain.steps_taken) == 20


def test_a_newton_damping_sweep_is_one_program():
    f = jd.problems.himmelblau
    dampings = jnp.array([1e-3, 1e-1, 1.0, 10.0])

    def init(key):
        return jax.random.uniform(key, (2,), minval=-4.0, maxval=4.0)

    rule = jd.optim.newton(damping=1.0, line_search=True)
    many = jd.multistart(init, f, rule, key=jax.random.key(0), restarts=4, steps=30, tol=1e-5,
                         hyperparams={"damping": dampings})  # fmt: skip
    for i, d in enumerate(dampings):
        one = jd.fit(f, init(many.init_keys[i]), jd.optim.newton(damping=float(d),
                     line_search=True), steps=30, tol=1e-5)  # fmt: skip
        np.testing.assert_allclose(many.params[i], one.params, rtol=1e-4, atol=1e-5)
    other = dampings * 2.0
    with Compiles() as c:
        jd.multistart(init, f, rule, key=jax.random.key(1), restarts=4, steps=30, tol=1e-5,
                      hyperparams={"damping": other})  # fmt: skip
    assert c.count == 0


def test_unhashable_losses_work_and_the_cache_lets_go():
    class Loss:  # an unhashable callable holding data, like an Equinox module
        __hash__ = None

        def __init__(self, target):
            self.target = target

        def __call__(self, x):
            return jnp.sum((x - self.target) ** 2)

        def __eq__(self, other):
            return self is other

    res = jd.fit(Loss(jnp.ones(3)), jnp.zeros(3), jd.optim.sgd(0.5), steps=5, tol=1e-4)
    assert res.success

    class Held:  # weakly referenceable: its entry goes when the user drops it
        def __init__(self):
            self.data = np.ones(1_000_000, np.float32)  # 4 MB captured by the program

        def __call__(self, x):
            return jnp.sum((x - jnp.asarray(self.data[:3])) ** 2)

    loss = Held()
    alive = weakref.ref(loss)
    before = jd._engine.cache.size()
    jd.fit(loss, jnp.zeros(3), jd.optim.sgd(0.25), steps=5)
    assert jd._engine.cache.size() > before
    del loss
    gc.collect()
    assert alive() is None, "the compile cache kept the loss (and its data) alive"
    jd.clear_cache()
    assert jd._engine.cache.size() == 0


def test_histories_cost_what_they_record():
    f = jd.problems.rosenbrock
    x0 = jnp.array([-1.2, 1.0])
    res = jd.fit(f, x0, jd.optim.newton(), steps=100_000, tol=1e-6)
    assert res.success and res.losses.shape == (int(res.steps_taken) + 1,)
    none = jd.fit(f, x0, jd.optim.newton(), steps=100_000, tol=1e-6, record_every=None)
    assert none.losses.shape == (0,) and none.success
    # the same run; the two programs (with and without a history) may round a float32
    # Newton step differently (XLA fuses them differently), so to rounding, not bit for bit
    np.testing.assert_allclose(none.params, res.params, rtol=2e-6)
    every = jd.fit(f, x0, jd.optim.adam(0.01), steps=100, record_every=10)
    dense = jd.fit(f, x0, jd.optim.adam(0.01), steps=100)
    np.testing.assert_array_equal(every.losses, dense.losses[::10])
    many = jd.multistart(lambda k: jax.random.normal(k, (2,)), f, jd.optim.newton(),
                         key=jax.random.key(0), restarts=8, steps=100_000, tol=1e-6)  # fmt: skip
    assert many.losses.shape == (8, int(np.max(np.asarray(many.steps_taken))) + 1)


def _edge(x):
    # a bowl whose loss turns NaN once x[0] falls below 0.3 (SGD at 0.05 takes it from 1.0
    # down by 10% a step: step 12 is the first non-finite one)
    value = jnp.sum(x**2)
    return jnp.where(x[0] > 0.3, value, jnp.nan)


def test_fit_builds_the_first_state_on_the_host_and_traces_once():
    """``fit`` asks jaxdescent's rules for NumPy leaves (no ``device_put`` per leaf), while
    ``init`` itself returns device arrays; a repeated fit traces the loss no more."""
    from jaxdescent.optim._common import host_state

    def loss(params, batch):  # a loss no other test uses
        return 2.0 * LOSS(params, batch)

    opt = jd.optim.adam(1e-2)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(opt.init(P0)))
    with host_state():
        leaves = jax.tree.leaves(opt.init(P0))
    assert all(isinstance(x, np.ndarray) for x in leaves)
    first = jd.fit(loss, P0, opt, data=(X, Y), steps=5)
    with Traces() as t:
        again = jd.fit(loss, P0, opt, data=(X, Y), steps=5)
    assert t.count == 0
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(again.opt_state))
    jax.tree.map(np.testing.assert_array_equal, again.params, first.params)


def test_a_run_that_ends_inside_a_chunk_reports_it_once():
    """A run that converges inside a chunk stops there; the callback sees that one chunk,
    with all its steps."""
    seen = []
    res = jd.fit(
        _edge, jnp.array([1.0, 0.5]), jd.optim.sgd(0.05), steps=40, tol=0.8, chunk_size=20,
        callback=lambda info: seen.append((info.step, np.asarray(info.losses))),
    )  # fmt: skip
    assert Status(int(res.status)) == Status.CONVERGED and int(res.steps_taken) == 10
    assert [step for step, _ in seen] == [11]
    np.testing.assert_array_equal(seen[0][1], res.losses)
    assert res.losses.shape == (11,)
