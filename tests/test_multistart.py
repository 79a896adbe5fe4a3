"""``multistart``: restarts as one vmapped program, equal to single fits; Himmelblau's four
minima; hyperparameter sweeps; stopping once all have converged; sharding over devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Counter

import jaxdescent as jd
from jaxdescent import Status
from jaxdescent.optim._common import curvature_rule

X = jax.random.normal(jax.random.key(0), (24, 3))
Y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.3
DATA = (X, Y)
ADAM = jd.optim.adam(0.05)
SWEEP = optax.inject_hyperparams(jd.optim.sgd)(learning_rate=0.1)
RUN = {"data": DATA, "steps": 30, "batch_size": 5, "tol": 2.0}  # a shared configuration

HIMMELBLAU_MINIMA = np.array(
    [
        [3.0, 2.0],
        [-2.805118086953, 3.131312518251],
        [-3.779310253378, -3.283185991286],
        [3.584428340330, -1.848126526964],
    ]
)


def mse(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def init(key):
    return {"w": jax.random.normal(key, (3,)), "b": jnp.zeros(())}


def box(key):
    return jax.random.uniform(key, (2,), minval=-5.0, maxval=5.0)


def test_result_fields_and_best():
    res = jd.multistart(init, mse, ADAM, key=jax.random.key(1), restarts=4, **RUN)
    for name in ("params", "final_losses", "losses", "status", "best_index", "best_params"):
        assert hasattr(res, name), name
    assert res.losses.shape == res.grad_norms.shape == (4, 30)
    assert res.params["w"].shape == (4, 3) and res.final_losses.shape == (4,)
    best = res.best_index
    assert best == int(np.argmin(res.final_losses))
    np.testing.assert_array_equal(res.best_params["w"], res.params["w"][best])
    init_keys, fit_keys = jd.restart_keys(jax.random.key(1), 4)
    assert jnp.array_equal(jax.random.key_data(init_keys), jax.random.key_data(res.init_keys))
    assert jnp.array_equal(jax.random.key_data(fit_keys), jax.random.key_data(res.fit_keys))


def test_restart_i_equals_fit_from_its_keys():
    res = jd.multistart(init, mse, ADAM, key=jax.random.key(2), restarts=4, **RUN)
    # restarts that stop at different steps: the ones that ended stay frozen
    assert len(set(np.asarray(res.steps_taken).tolist())) > 1
    for i in range(4):
        one = jd.fit(mse, init(res.init_keys[i]), ADAM, key=res.fit_keys[i], **RUN)
        # the same run, vmapped or not: bit for bit on CPU, and within rounding anywhere
        # the stacked history runs to the longest restart; past its own end a row is nan
        ran = one.losses.shape[0]
        np.testing.assert_allclose(res.losses[i, :ran], one.losses, rtol=1e-6, atol=1e-7)
        assert np.all(np.isnan(np.asarray(res.losses[i, ran:])))
        np.testing.assert_allclose(res.final_losses[i], one.final_loss, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-7),
                     res.params, one.params)  # fmt: skip
        assert int(res.status[i]) == int(one.status)
        assert int(res.steps_taken[i]) == int(one.steps_taken)


def _bowl(x):
    return 0.5 * jnp.sum(x**2)


def _normal_start(key):
    return jax.random.normal(key, (3,))


def _assert_each_restart_is_its_fit(res, rule_of, kwargs):
    """Every restart of ``res`` (on ``_bowl`` from ``_normal_start``) equals ``jd.fit`` with
    ``rule_of(i)``: status, steps, params, histories and final values."""
    for i in range(res.status.shape[0]):
        one = jd.fit(_bowl, _normal_start(res.init_keys[i]), rule_of(i), **kwargs)
        assert int(res.status[i]) == int(one.status)
        assert int(res.steps_taken[i]) == int(one.steps_taken)
        np.testing.assert_allclose(res.params[i], one.params, rtol=1e-6)
        ran = one.losses.shape[0]
        np.testing.assert_allclose(res.losses[i, :ran], one.losses, rtol=1e-6)
        np.testing.assert_allclose(res.grad_norms[i, :ran], one.grad_norms, rtol=1e-6)
        assert np.all(np.isnan(np.asarray(res.losses[i, ran:])))
        np.testing.assert_allclose(res.final_losses[i], one.final_loss, rtol=1e-6)
        np.testing.assert_allclose(res.final_grad_norms[i], one.final_grad_norm, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:.*ended NONFINITE:RuntimeWarning")
def test_full_batch_restarts_that_end_differently_equal_their_fits():
    # full batch, restarts that converge at different steps, one that turns non-finite
    # mid-run, and ones that spend their budget: the blocks' guarded steps and the frozen runs
    # give each restart exactly its own fit
    lrs = jnp.array([0.5, 0.1, 1e3, 0.001, 0.3, 0.02])
    kwargs = {"steps": 40, "tol": 1e-4}
    res = jd.multistart(_normal_start, _bowl, jd.optim.sgd(0.1), key=jax.random.key(6),
                        restarts=6, hyperparams={"learning_rate": lrs}, **kwargs)  # fmt: skip
    status = np.asarray(res.status)
    assert {Status.CONVERGED, Status.NONFINITE, Status.MAX_STEPS} <= set(status.tolist())
    taken = np.asarray(res.steps_taken)
    assert len(set(taken[status == Status.CONVERGED].tolist())) > 1
    assert 1 < taken[status == Status.NONFINITE][0] < 40
    _assert_each_restart_is_its_fit(res, lambda i: jd.optim.sgd(float(lrs[i])), kwargs)


@pytest.mark.filterwarnings("ignore:.*ended NONFINITE:RuntimeWarning")
def test_chunks_do_not_change_restarts_that_end_at_many_steps():
    """Restarts that converge, turn non-finite or run out at many different steps: run
    whole or in chunks of 7 with every third step recorded, every restart is the same, bit
    for bit, and each equals its own fit."""
    # learning rates above 2 overflow at steps 6 to 31, the others converge or run out
    lrs = jnp.array([0.5, 0.1, 1e3, 0.001, 0.3, 0.02, 100.0, 30.0, 10.0, 5.0, 0.7, 20.0])
    runs = []
    chunked = dict(steps=40, tol=1e-3, chunk_size=7, record_every=3)
    for settings in (dict(steps=40, tol=1e-3), chunked):
        res = jd.multistart(_normal_start, _bowl, jd.optim.sgd(0.1), key=jax.random.key(6),
                            restarts=12, hyperparams={"learning_rate": lrs}, **settings)  # fmt: skip
        runs.append(res)
    first = runs[0]
    status = np.asarray(first.status)
    assert {Status.CONVERGED, Status.NONFINITE, Status.MAX_STEPS} <= set(status.tolist())
    assert (status == Status.NONFINITE).sum() >= 4
    assert len(set(np.asarray(first.steps_taken).tolist())) >= 8  # ends at many steps
    _assert_each_restart_is_its_fit(runs[1], lambda i: jd.optim.sgd(float(lrs[i])), chunked)
    res = runs[1]
    for name in ("params", "status", "steps_taken", "final_losses", "final_grad_norms"):
        np.testing.assert_array_equal(getattr(res, name), getattr(first, name), err_msg=name)
    for name in ("losses", "grad_norms"):
        np.testing.assert_array_equal(getattr(res, name), getattr(first, name)[:, ::3])
    jax.tree.map(np.testing.assert_array_equal, res.opt_state, first.opt_state)


class _CountedState(NamedTuple):
    count: jax.Array
    hyperparams: dict


def _sgd_that_stalls(learning_rate, moves):
    """SGD that moves ``moves`` times and then never again, and says so: a stand-in for a
    trust-region rule whose radius fell below the params' rounding."""

    def init(params):
        del params
        values = {"learning_rate": learning_rate, "moves": moves}
        return _CountedState(jnp.zeros([], jnp.int32), {k: jnp.asarray(v, jnp.float32)
                                                        for k, v in values.items()})  # fmt: skip

    def update(grads, state, params=None, **extra):
        del params, extra
        go = state.count < state.hyperparams["moves"]
        lr = jnp.where(go, state.hyperparams["learning_rate"], 0.0)
        return jax.tree.map(lambda g: -lr * g, grads), state._replace(count=state.count + 1)

    return curvature_rule(init, update, stalled=lambda s: s.count >= s.hyperparams["moves"])


@pytest.mark.filterwarnings("ignore:.*ended NONFINITE:RuntimeWarning")
def test_full_batch_restarts_that_stall_equal_their_fits():
    # restarts that stall (the rule's state says it can no longer move) at different steps,
    # beside ones that converge, turn non-finite or spend their budget: each is its own fit
    lrs = jnp.array([0.1, 0.1, 0.5, 1e3, 0.001, 0.1])
    moves = jnp.array([3.0, 11.0, 100.0, 100.0, 100.0, 0.0])
    kwargs = {"steps": 40, "tol": 1e-4}
    res = jd.multistart(_normal_start, _bowl, _sgd_that_stalls(0.1, 5.0), key=jax.random.key(6),
                        restarts=6, hyperparams={"learning_rate": lrs, "moves": moves},
                        **kwargs)  # fmt: skip
    status = np.asarray(res.status).tolist()
    assert status[:2] == [Status.STALLED] * 2 and status[-1] == Status.STALLED
    assert {Status.CONVERGED, Status.NONFINITE, Status.MAX_STEPS} <= set(status)
    np.testing.assert_array_equal(np.asarray(res.steps_taken)[[0, 1, 5]], [3, 11, 0])
    _assert_each_restart_is_its_fit(
        res, lambda i: _sgd_that_stalls(float(lrs[i]), float(moves[i])), kwargs
    )


def test_himmelblau_four_minima():
    newton = jd.optim.newton()
    res = jd.multistart(box, jd.problems.himmelblau, newton, key=jax.random.key(0),
                        restarts=24, steps=60, tol=1e-5)  # fmt: skip
    ok = np.asarray(res.converged) & (np.asarray(res.final_losses) < 1e-8)
    assert ok.sum() >= 20
    minima = jd.distinct_minima(
        res.params, tol=1e-2, losses=jnp.where(ok, res.final_losses, jnp.nan)
    )
    assert len(minima.counts) == 4 and minima.counts.sum() == ok.sum()
    found = np.asarray(minima.params)
    for point in HIMMELBLAU_MINIMA:
        assert np.min(np.linalg.norm(found - point, axis=1)) < 1e-3, point
    assert set(minima.labels[~ok].tolist()) <= {-1}


def test_stops_once_every_restart_has_converged():
    loss = Counter(lambda x: jnp.sum(x**2))
    res = jd.multistart(lambda k: jax.random.normal(k, (3,)), loss, jd.optim.sgd(0.5),
                        key=jax.random.key(4), restarts=5, steps=50, tol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(res.status, [Status.CONVERGED] * 5)
    np.testing.assert_array_equal(res.steps_taken, [1] * 5)
    assert bool(jnp.all(jnp.isnan(res.losses[:, 2:])))
    # the vmapped loss runs once per loop step for all restarts (a callback under vmap runs
    # once per batch): two loop steps and the final evaluation, nowhere near 50
    assert loss.calls <= 4


def test_hyperparameter_sweep_matches_single_fits_without_recompiling():
    lrs = jnp.array([0.01, 0.05, 0.2])
    kwargs = {"data": DATA, "steps": 8, "batch_size": 6}
    res = jd.multistart(init, mse, SWEEP, key=jax.random.key(5), restarts=3,
                        hyperparams={"learning_rate": lrs}, **kwargs)  # fmt: skip
    np.testing.assert_allclose(res.opt_state.hyperparams["learning_rate"], lrs)
    for i in (0, 2):
        lr = float(lrs[i])
        one = jd.fit(mse, init(res.init_keys[i]), jd.optim.sgd(lr), key=res.fit_keys[i], **kwargs)
        np.testing.assert_allclose(res.losses[i], one.losses, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),
                     res.params, one.params)  # fmt: skip

    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    doubled = lrs * 2
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        other = jd.multistart(init, mse, SWEEP, key=jax.random.key(5), restarts=3,
                              hyperparams={"learning_rate": doubled}, **kwargs)  # fmt: skip
        jax.block_until_ready(other)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    assert not np.array_equal(other.losses, res.losses)


def test_hyperparams_need_an_injected_optimizer():
    with pytest.raises(ValueError, match="inject_hyperparams"):  # optax's own rule
        jd.multistart(init, mse, optax.adam(0.05), key=jax.random.key(0), restarts=2,
                      data=DATA, steps=2, hyperparams={"learning_rate": jnp.ones(2)})  # fmt: skip
    with pytest.raises(ValueError, match=r"hyperparams\['lr'\].*has \['b1', 'b2', 'eps'"):
        jd.multistart(init, mse, ADAM, key=jax.random.key(0), restarts=2, data=DATA, steps=2,
                      hyperparams={"lr": jnp.ones(2)})  # fmt: skip
    with pytest.raises(ValueError, match=r"hyperparams\['learning_rate'\].*>= 0"):
        jd.multistart(init, mse, ADAM, key=jax.random.key(0), restarts=2, data=DATA, steps=2,
                      hyperparams={"learning_rate": -jnp.ones(2)})  # fmt: skip
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        jd.multistart(init, mse, SWEEP, key=jax.random.key(0), restarts=2, data=DATA, steps=2,
                      hyperparams={"learning_rate": jnp.ones(3)})  # fmt: skip


def test_distinct_minima_groups_and_ignores_nonfinite():
    points = jnp.array([[0.0, 0.0], [1.0, 1.0], [0.001, 0.0], [jnp.nan, 0.0], [1.0, 1.002]])
    losses = jnp.array([0.5, 0.1, 0.4, 0.0, 0.2])
    minima = jd.distinct_minima(points, tol=0.01, losses=losses)
    np.testing.assert_array_equal(minima.labels, [1, 0, 1, -1, 0])
    np.testing.assert_array_equal(minima.counts, [2, 2])
    # representatives are each group's best
    np.testing.assert_allclose(minima.params, [[1.0, 1.0], [0.001, 0.0]])


SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import jaxdescent as jd

    assert jax.local_device_count() == 4, jax.devices()
    x = jax.random.normal(jax.random.key(0), (24, 3))
    data = (x, x @ jnp.array([1.0, -2.0, 0.5]))

    def mse(p, b):
        return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)

    def init(k):
        return {"w": jax.random.normal(k, (3,)), "b": jnp.zeros(())}

    opt = jd.optim.adam(0.05)
    kw = dict(key=jax.random.key(1), restarts=8, data=data, steps=12, batch_size=4, tol=0.5)
    sharded = jd.multistart(init, mse, opt, **kw)
    single = jd.multistart(init, mse, opt, shard=False, **kw)
    assert len(sharded.params["w"].sharding.device_set) == 4
    assert len(single.params["w"].sharding.device_set) == 1
    for name in ("params", "opt_state", "losses", "grad_norms", "final_losses", "status",
                 "steps_taken"):
        for a, b in zip(jax.tree.leaves(getattr(sharded, name)),
                        jax.tree.leaves(getattr(single, name))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                       err_msg=name)
    for batch_size in (None, 4):
        p0 = init(jax.random.key(3))
        a = jd.fit(mse, p0, opt, data=data, steps=15, batch_size=batch_size)
        b = jd.fit(mse, p0, opt, data=data, steps=15, batch_size=batch_size, shard_data=True)
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5, atol=1e-6)
        for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    try:
        jd.fit(mse, init(jax.random.key(3)), opt, data=(x[:22], data[1][:22]), steps=2,
               shard_data=True)
    except ValueError as err:
        assert "multiple of the number of devices (4)" in str(err)
    else:
        raise AssertionError("22 examples on 4 devices should be refused")
    print("SHARDED-OK")
    """
)


def test_restarts_and_data_shard_over_four_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "SHARDED-OK" in done.stdout


def test_restarts_state_is_built_on_the_host_for_shape_only_rules():
    """jaxdescent's first-order rules read only the params' shapes in ``init``: their
    stacked state is built once on the host (NumPy) and equals ``vmap(init)``; any other
    rule is ``vmap``-ed."""
    import sys

    ms = sys.modules["jaxdescent.multistart"]
    params = jax.vmap(_normal_start)(jax.random.split(jax.random.key(0), 4))
    example = np.zeros(3, np.float32)
    for rule in (jd.optim.adam(0.1), jd.optim.adagrad(0.1), jd.optim.rmsprop(0.1)):
        stacked = ms._stacked_state(rule, params, example, 4)
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(stacked))
        reference = jax.vmap(rule.init)(params)
        assert jax.tree.structure(stacked) == jax.tree.structure(reference)
        jax.tree.map(np.testing.assert_array_equal, stacked, reference)
        assert [x.dtype for x in jax.tree.leaves(stacked)] == [
            x.dtype for x in jax.tree.leaves(reference)
        ]
    other = ms._stacked_state(optax.adam(0.1), params, example, 4)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(other))
