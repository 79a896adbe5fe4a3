"""Schedules against closed-form NumPy arrays: eagerly, under jit and under vmap."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdescent import schedules as S

COUNTS = np.arange(0, 241)


def cyclic_reference(count, base, top, up, down, mode, gamma):
    """PyTorch ``CyclicLR.get_lr`` as documented, for one step count (``last_epoch``)."""
    total = up + down
    ratio = up / total
    cycle = math.floor(1 + count / total)
    x = 1.0 + count / total - cycle
    scale_factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    height = (top - base) * scale_factor
    if mode == "triangular":
        return base + height * 1.0  # scale_fn(cycle) = 1, scale_mode 'cycle'
    if mode == "triangular2":
        return base + height * (1 / (2.0 ** (cycle - 1)))  # scale_mode 'cycle'
    return base + height * gamma**count  # exp_range: scale_fn(last_epoch), 'iterations'


def _warmup_reference(t, after, steps, init):
    first = after(np.zeros(1))[0]
    return np.where(t < steps, init + (first - init) * t / steps, after(np.maximum(t - steps, 0)))


def _cosine(t, v, T, a=0.0):
    return v * ((1 - a) * 0.5 * (1 + np.cos(np.pi * np.minimum(t, T) / T)) + a)


# name -> (schedule, reference as a function of float64 counts)
CASES = {
    "constant": (S.constant(0.3), lambda t: np.full_like(t, 0.3)),
    "step_decay": (S.step_decay(0.5, 25, 0.3), lambda t: 0.5 * 0.3 ** np.floor(t / 25)),
    "exponential_decay": (
        S.exponential_decay(0.2, 40, 0.5),
        lambda t: 0.2 * 0.5 ** (t / 40),
    ),
    "exponential_decay_per_step": (
        S.exponential_decay(1.0, 1, 0.99),
        lambda t: np.exp(t * np.log(0.99)),
    ),
    "inverse_time_decay": (
        S.inverse_time_decay(0.1, 10, 0.5),
        lambda t: 0.1 / (1 + 0.5 * t / 10),
    ),
    "cosine_decay": (S.cosine_decay(0.4, 100), lambda t: _cosine(t, 0.4, 100)),
    "cosine_decay_alpha": (
        S.cosine_decay(0.4, 150, alpha=0.1),
        lambda t: _cosine(t, 0.4, 150, 0.1),
    ),
    "cyclic_triangular": (
        S.cyclic(0.001, 0.1, step_size=20),
        lambda t: np.array(
            [cyclic_reference(c, 0.001, 0.1, 20, 20, "triangular", 1.0) for c in t]
        ),
    ),
    "cyclic_triangular_asymmetric": (
        S.cyclic(0.01, 0.05, step_size=7, step_size_down=13),
        lambda t: np.array([cyclic_reference(c, 0.01, 0.05, 7, 13, "triangular", 1.0) for c in t]),
    ),
    "cyclic_triangular2": (
        S.cyclic(0.001, 0.1, step_size=15, mode="triangular2"),
        lambda t: np.array(
            [cyclic_reference(c, 0.001, 0.1, 15, 15, "triangular2", 1.0) for c in t]
        ),
    ),
    "cyclic_exp_range": (
        S.cyclic(0.001, 0.1, step_size=10, step_size_down=30, mode="exp_range", gamma=0.99),
        lambda t: np.array(
            [cyclic_reference(c, 0.001, 0.1, 10, 30, "exp_range", 0.99) for c in t]
        ),
    ),
    "warmup_cosine": (
        S.warmup(S.cosine_decay(0.4, 100), 20),
        lambda t: _warmup_reference(t, lambda u: _cosine(u, 0.4, 100), 20, 0.0),
    ),
    "warmup_float_from_init": (
        S.warmup(0.3, 50, init_value=0.1),
        lambda t: np.where(t < 50, 0.1 + 0.2 * t / 50, 0.3),
    ),
    "warmup_zero_steps": (
        S.warmup(S.step_decay(0.5, 25, 0.3), 0),
        lambda t: 0.5 * 0.3 ** np.floor(t / 25),
    ),
    "join": (
        S.join(
            [S.constant(0.1), S.cosine_decay(0.5, 60), S.exponential_decay(0.05, 20, 0.5)],
            [30, 130],
        ),
        lambda t: np.select(
            [t < 30, t < 130],
            [np.full_like(t, 0.1), _cosine(t - 30, 0.5, 60)],
            0.05 * 0.5 ** ((t - 130) / 20),
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schedule_matches_closed_form(x64, name):
    schedule, reference = CASES[name]
    want = reference(COUNTS.astype(np.float64))
    # vmap over integer counts under jit (as optax calls it, with an int32 counter)
    got = jax.jit(jax.vmap(schedule))(jnp.asarray(COUNTS, jnp.int32))
    assert got.shape == COUNTS.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    # called on the whole array of counts, and on single (Python int) counts
    np.testing.assert_allclose(schedule(jnp.asarray(COUNTS)), want, rtol=1e-12, atol=1e-15)
    for c in (0, 1, 37, 240):
        value = schedule(c)
        assert jnp.shape(value) == ()
        np.testing.assert_allclose(value, want[c], rtol=1e-12, atol=1e-15)


def test_float32_schedules_and_optax_counts():
    """Default precision: float32 values close to the references; works as an optax schedule."""
    counts = jnp.asarray(COUNTS, jnp.int32)
    for name in ("cyclic_triangular2", "warmup_cosine", "join"):
        schedule, reference = CASES[name]
        got = jax.jit(jax.vmap(schedule))(counts)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, reference(COUNTS.astype(np.float64)), rtol=2e-5, atol=1e-7)
    opt = optax.scale_by_schedule(S.step_decay(1.0, 2, 0.5))
    state = opt.init(jnp.zeros(()))
    seen = []
    for _ in range(5):
        updates, state = opt.update(jnp.ones(()), state)
        seen.append(float(updates))
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_join_agrees_with_optax(x64):
    parts = [S.cosine_decay(0.5, 60), S.constant(0.02), S.inverse_time_decay(0.1, 1, 1.0)]
    ours = S.join(parts, [60, 100])
    ref = optax.join_schedules(parts, [60, 100])
    counts = jnp.asarray(COUNTS)
    np.testing.assert_allclose(jax.vmap(ours)(counts), jax.vmap(ref)(counts), rtol=1e-12)


def test_cyclic_shape_landmarks():
    """Base at the start of each cycle, peak after step_size updates; triangular2 halves."""
    sched = S.cyclic(0.1, 1.1, step_size=5, mode="triangular2")
    values = np.asarray(jax.vmap(sched)(jnp.arange(31)))
    np.testing.assert_allclose(values[[0, 10, 20, 30]], 0.1, rtol=1e-6)
    np.testing.assert_allclose(values[[5, 15, 25]], [1.1, 0.6, 0.35], rtol=1e-6)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: S.constant(-0.1), ValueError, "value"),
        (lambda: S.step_decay(-1.0, 10, 0.5), ValueError, "init_value"),
        (lambda: S.step_decay(1.0, 10, 0.0), ValueError, "decay_rate"),
        (lambda: S.step_decay(1.0, 0, 0.5), ValueError, "step_size"),
        (lambda: S.step_decay(1.0, 2.5, 0.5), TypeError, "step_size"),
        (lambda: S.exponential_decay(1.0, 1, -0.5), ValueError, "decay_rate"),
        (lambda: S.exponential_decay(1.0, 0, 0.5), ValueError, "transition_steps"),
        (lambda: S.inverse_time_decay(1.0, 1, -1.0), ValueError, "decay_rate"),
        (lambda: S.cosine_decay(1.0, 0), ValueError, "decay_steps"),
        (lambda: S.cosine_decay(1.0, 10, alpha=1.5), ValueError, "alpha"),
        (lambda: S.cyclic(0.1, 0.01, 10), ValueError, "max_value"),
        (lambda: S.cyclic(-0.1, 0.01, 10), ValueError, "base_value"),
        (lambda: S.cyclic(0.01, 0.1, 0), ValueError, "step_size"),
        (lambda: S.cyclic(0.01, 0.1, 10, step_size_down=0), ValueError, "step_size_down"),
        (lambda: S.cyclic(0.01, 0.1, 10, mode="sawtooth"), ValueError, "mode"),
        (lambda: S.cyclic(0.01, 0.1, 10, mode="exp_range", gamma=1.5), ValueError, "gamma"),
        (lambda: S.cyclic(0.01, 0.1, 10, mode="exp_range", gamma=0.0), ValueError, "gamma"),
        (lambda: S.warmup(S.constant(0.1), -1), ValueError, "steps"),
        (lambda: S.warmup(S.constant(0.1), 10, init_value=-1.0), ValueError, "init_value"),
        (lambda: S.join([], []), ValueError, "schedules"),
        (lambda: S.join([S.constant(0.1), S.constant(0.2)], []), ValueError, "boundaries"),
        (lambda: S.join([S.constant(0.1)] * 3, [20, 10]), ValueError, "increasing"),
        (lambda: S.join([S.constant(0.1), 0.2], [10]), TypeError, r"schedules\[1\]"),
        (lambda: S.join([S.constant(0.1), S.constant(0.2)], [-5]), ValueError, "boundaries"),
    ],
)
def test_bad_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


# --- the decays take optax's argument order and refuse to grow ----------------------------


def test_exponential_decay_is_optax_exponential_decay(x64):
    """Same positional arguments, same values (smooth and staircase)."""
    counts = jnp.asarray(COUNTS)
    for args in [(0.01, 100, 0.5), (0.3, 1, 0.99), (1.0, 7, 1.0)]:
        for staircase in (False, True):
            ours = S.exponential_decay(*args, staircase=staircase)
            ref = optax.exponential_decay(*args, staircase=staircase)
            np.testing.assert_allclose(ours(counts), ref(counts), rtol=1e-12)
    # step decay is the staircase form, with the arguments in the same order
    np.testing.assert_allclose(
        S.step_decay(0.1, 25, 0.5)(counts),
        optax.exponential_decay(0.1, 25, 0.5, staircase=True)(counts),
        rtol=1e-12,
    )
    # inverse-time decay in Keras' order (initial value, decay_steps, decay_rate)
    np.testing.assert_allclose(
        S.inverse_time_decay(0.1, 1000, 5.0)(counts), 0.1 / (1 + 5.0 * COUNTS / 1000), rtol=1e-12
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: S.exponential_decay(0.01, 1000, 2.0, **kw),
        lambda **kw: S.exponential_decay(0.01, 1, 1000.0, **kw),
        lambda **kw: S.exponential_decay(0.01, 1, 1.5, staircase=True, **kw),
        lambda **kw: S.step_decay(0.01, 10, 2.0, **kw),
    ],
)
def test_a_growing_decay_needs_allow_growth(build):
    """A decay rate above 1 (usually arguments in another order) is refused; asked for
    explicitly, the rate grows as written."""
    with pytest.raises(ValueError, match=r"decay_rate must be <= 1.*allow_growth=True"):
        build()
    schedule = build(allow_growth=True)
    assert float(schedule(2_000)) > float(schedule(0)) == pytest.approx(0.01)


def test_schedule_flags_are_booleans():
    with pytest.raises(TypeError, match="staircase must be True or False; got 'no'"):
        S.exponential_decay(0.1, 10, 0.5, staircase="no")
    with pytest.raises(TypeError, match="allow_growth must be True or False; got 1"):
        S.step_decay(0.1, 10, 0.5, allow_growth=1)
