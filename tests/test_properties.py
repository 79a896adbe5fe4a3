"""Property-based tests (hypothesis) on random inputs.

- Every first-order update rule, on random pytrees of float32 and float64 leaves, returns
  updates of the params' tree structure, shapes and dtypes, keeps its state in those dtypes,
  and stays finite.
- Every schedule stays within its bounds, at any count (0 up to the int32 limit).
- Discrete log-probabilities (Bernoulli, Categorical, Poisson) are at most 0.

Shapes come from a small set, so JAX's per-shape caches are reused across examples.
"""

from __future__ import annotations

import functools

import helpers
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxdescent as jd

SETTINGS = settings(max_examples=20, deadline=None)

SHAPES = [(), (1,), (3,), (2, 3)]
DTYPES = [np.float32, np.float64]


def finite_floats(dtype, magnitude):
    return st.floats(-magnitude, magnitude, width=32 if dtype == np.float32 else 64)


@st.composite
def param_grad_trees(draw):
    """A dict of one to three leaves (one possibly nested in a list), and a matching gradient
    tree, each leaf with its own shape and dtype."""
    count = draw(st.integers(1, 3))
    params, grads = {}, {}
    for i in range(count):
        shape = draw(st.sampled_from(SHAPES))
        dtype = draw(st.sampled_from(DTYPES))
        p = draw(hnp.arrays(dtype, shape, elements=finite_floats(dtype, 1e3)))
        gs = [draw(hnp.arrays(dtype, shape, elements=finite_floats(dtype, 1e4))) for _ in "ab"]
        nest = (lambda x: [x]) if i == 2 else (lambda x: x)
        params[f"leaf{i}"] = nest(jnp.asarray(p))
        grads[f"leaf{i}"] = [nest(jnp.asarray(g)) for g in gs]
    grad_steps = [{k: v[j] for k, v in grads.items()} for j in range(2)]
    return params, grad_steps


# every first-order rule of the shared table (a rule that reads the loss's value_fn has no
# use for random gradients), with the settings below where this test needs others
STRESS = {
    # a zero accumulator: the first step divides by eps alone
    "adagrad": {"initial_accumulator_value": 0.0},
    # a schedule, whose values must not change the params' dtypes
    "adam": {"learning_rate": jd.schedules.warmup(1e-3, 5)},
}
RULES = {
    **{
        name: functools.partial(helpers.RULES[name], **STRESS.get(name, {}))
        for name in helpers.names("grads")
    },
    "sgd-schedule": lambda: jd.optim.sgd(jd.schedules.cosine_decay(0.1, 10)),
}


def leaves_with_paths(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@settings(max_examples=15, deadline=None)
@given(trees=param_grad_trees())
def test_update_rules_keep_structure_shape_dtype_and_finiteness(trees):
    with jax.enable_x64(True):
        for rule in RULES:  # every rule on the same random trees
            check_rule(rule, *trees)


def check_rule(rule, params, grad_steps):
    """One rule, two updates: structure, shapes, dtypes and finiteness kept."""
    opt = RULES[rule]()
    state = opt.init(params)
    for grads in grad_steps:
        updates, state = opt.update(grads, state, params)
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        expected = leaves_with_paths(params)
        for where, u in leaves_with_paths(updates).items():
            assert u.shape == expected[where].shape, (rule, where)
            assert u.dtype == expected[where].dtype, (rule, where, u.dtype)
            assert bool(jnp.all(jnp.isfinite(u))), (rule, where)
        params = optax_apply(params, updates)
    # state trees mirror the params: same dtypes leaf by leaf, and finite
    for field in state:
        if jax.tree.structure(field) == jax.tree.structure(params):
            for where, s in leaves_with_paths(field).items():
                assert s.dtype == expected[where].dtype, (rule, where)
    assert all(bool(jnp.all(jnp.isfinite(s))) for s in jax.tree.leaves(state))


def optax_apply(params, updates):
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)


# --- schedules -----------------------------------------------------------------------------

COUNTS = jnp.array([0, 1, 2, 3, 5, 8, 13, 50, 99, 100, 101, 1_000, 10**6, 2**31 - 1])
values = st.floats(0.0, 10.0)
rates = st.floats(1e-3, 1.0)
periods = st.integers(1, 200)


SCHEDULE_KINDS = ("constant", "step", "exponential", "inverse_time", "cosine", "cyclic")
SCHEDULE_KINDS += ("warmup", "join")  # these wrap other schedules


@st.composite
def bounded_schedules(draw):
    """A schedule with the interval ``[lo, hi]`` its values must stay in."""
    kind = draw(st.sampled_from(SCHEDULE_KINDS))
    a = draw(values)
    if kind == "constant":
        return jd.schedules.constant(a), a, a
    if kind == "step":
        return jd.schedules.step_decay(a, draw(periods), draw(rates)), 0.0, a
    if kind == "exponential":
        return jd.schedules.exponential_decay(a, draw(periods), draw(rates)), 0.0, a
    if kind == "inverse_time":
        return jd.schedules.inverse_time_decay(a, draw(periods), draw(values)), 0.0, a
    if kind == "cosine":
        alpha = draw(st.floats(0.0, 1.0))
        return jd.schedules.cosine_decay(a, draw(periods), alpha), alpha * a, a
    if kind == "cyclic":
        b = draw(st.floats(0.0, a))
        mode = draw(st.sampled_from(["triangular", "triangular2", "exp_range"]))
        gamma = draw(st.floats(0.5, 1.0))
        up, down = draw(periods), draw(st.none() | periods)
        schedule = jd.schedules.cyclic(b, a, up, mode, gamma, step_size_down=down)
        return schedule, b, a
    if kind == "warmup":
        inner, lo, hi = draw(bounded_schedules())
        start = draw(values)
        return (
            jd.schedules.warmup(inner, draw(st.integers(0, 100)), start),
            min(lo, start),
            max(hi, start),
        )
    first, lo1, hi1 = draw(bounded_schedules())
    second, lo2, hi2 = draw(bounded_schedules())
    boundary = draw(periods)
    return jd.schedules.join([first, second], [boundary]), min(lo1, lo2), max(hi1, hi2)


@SETTINGS
@given(case=bounded_schedules())
def test_schedules_stay_within_bounds(case):
    schedule, lo, hi = case
    out = np.asarray(schedule(COUNTS), np.float64)
    assert out.shape == COUNTS.shape
    assert np.all(np.isfinite(out))
    slack = 1e-6 * max(1.0, abs(hi))  # float32 rounding
    assert np.all(out >= lo - slack), (out, lo)
    assert np.all(out <= hi + slack), (out, hi)
    scalar = schedule(jnp.int32(7))  # also a plain scalar count
    assert np.ndim(scalar) == 0 and lo - slack <= float(scalar) <= hi + slack


# --- discrete log-probabilities ------------------------------------------------------------


@st.composite
def logits_and_dtype(draw, shape):
    dtype = draw(st.sampled_from(DTYPES))
    magnitude = draw(st.sampled_from([1.0, 30.0, 1e4]))
    logits = draw(hnp.arrays(dtype, shape, elements=finite_floats(dtype, magnitude)))
    return logits, dtype


@SETTINGS
@given(
    case=logits_and_dtype((6,)),
    labels=hnp.arrays(np.float64, (6,), elements=st.sampled_from([0.0, 1.0]) | st.floats(0, 1)),
)
def test_bernoulli_log_prob_is_at_most_zero(case, labels):
    logits, dtype = case
    with jax.enable_x64(True):
        log_p = jd.likelihoods.Bernoulli().log_prob(jnp.asarray(logits), labels.astype(dtype))
        assert log_p.shape == (6,)
        assert bool(jnp.all(jnp.isfinite(log_p))) and bool(jnp.all(log_p <= 0.0)), log_p


@SETTINGS
@given(
    case=logits_and_dtype((5, 4)),
    labels=hnp.arrays(np.int32, (5,), elements=st.integers(0, 3)),
    weights=hnp.arrays(np.float64, (5, 4), elements=st.floats(0.0, 1.0)),
)
def test_categorical_log_prob_is_at_most_zero(case, labels, weights):
    logits, dtype = case
    with jax.enable_x64(True):
        categorical = jd.likelihoods.Categorical()
        by_label = categorical.log_prob(jnp.asarray(logits), jnp.asarray(labels))
        probs = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-12)  # some rows all 0
        by_probs = categorical.log_prob(jnp.asarray(logits), jnp.asarray(probs.astype(dtype)))
        for log_p in (by_label, by_probs):
            assert log_p.shape == (5,)
            assert bool(jnp.all(jnp.isfinite(log_p))) and bool(jnp.all(log_p <= 0.0)), log_p


@SETTINGS
@given(
    log_rate=hnp.arrays(np.float64, (6,), elements=st.floats(-20.0, 20.0)),
    counts=hnp.arrays(np.int64, (6,), elements=st.integers(0, 10**4)),
    dtype=st.sampled_from(DTYPES),
)
def test_poisson_log_prob_is_at_most_zero(log_rate, counts, dtype):
    with jax.enable_x64(True):
        log_p = jd.likelihoods.Poisson().log_prob(
            jnp.asarray(log_rate.astype(dtype)), jnp.asarray(counts.astype(dtype))
        )
        assert bool(jnp.all(jnp.isfinite(log_p))) and bool(jnp.all(log_p <= 0.0)), log_p
