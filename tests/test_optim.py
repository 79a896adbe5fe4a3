"""First-order update rules: optax trajectories, NumPy reference, convergence, dtypes, errors."""

from __future__ import annotations

import functools
import itertools

import chex
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import parabola, rosenbrock

import jaxdescent as jd
from jaxdescent import optim
from jaxdescent.problems import CATALOGUE

S = jd.schedules

# --- the same trajectories as optax, 100 steps on an MLP in float64 ---------------------------

rng = np.random.default_rng(0)
SIZES = (3, 6, 2)
X_DATA = rng.normal(size=(16, 3))
Y_DATA = rng.normal(size=(16, 2))
MLP_PARAMS = [
    {"w": rng.normal(size=(a, b)) / np.sqrt(a), "b": np.full(b, 0.1)}
    for a, b in itertools.pairwise(SIZES)
]


def mlp_loss(params):
    h = jnp.tanh(X_DATA @ params[0]["w"] + params[0]["b"][None])
    out = h @ params[1]["w"] + params[1]["b"][None]
    return jnp.mean((out - Y_DATA) ** 2)


def trajectory(opt, params, steps=100, direction=None):
    """Parameters after each of ``steps`` full-batch updates, as one ``lax.scan``;
    ``direction(params)`` is what the rule is given (default: ``jax.grad(mlp_loss)``)."""
    direction = direction or jax.grad(mlp_loss)

    def step(carry, _):
        params, state = carry
        updates, state = opt.update(direction(params), state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, path = jax.lax.scan(step, (params, opt.init(params)), length=steps)
    return path


def assert_pairs_agree(pairs, run, params, check):
    """``run(opt, params)`` for both rules of every pair, all in one compiled program (one compile
    rather than one per pair, and one test, so that pytest-xdist workers do not each
    compile it); ``check(ours, ref)`` asserts on each pair's paths. Failures are collected,
    so that one report names every pair that differs."""
    paths = jax.jit(lambda p: {name: (run(a, p), run(b, p)) for name, (a, b) in pairs.items()})(
        params
    )
    failures = []
    for name, (ours, ref) in jax.tree.map(np.asarray, paths).items():
        try:
            check(ours, ref)
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    assert not failures, "\n\n".join(failures)


CYCLIC = S.cyclic(0.01, 0.2, step_size=25, mode="triangular2")
DECAY = S.warmup(S.exponential_decay(0.03, 40, 0.5), 10)
DECAY_OPTAX = optax.cosine_decay_schedule(0.2, 100)

# name -> (jaxdescent rule, optax counterpart); spelled out here, not taken from the shared
# table (tests/helpers.py): each pair is built with the same settings on both sides
PAIRS = {
    "sgd": (optim.sgd(0.1), optax.sgd(0.1)),
    "sgd-schedule": (optim.sgd(CYCLIC), optax.sgd(CYCLIC)),
    "sgd-optax-schedule": (optim.sgd(DECAY_OPTAX), optax.sgd(DECAY_OPTAX)),
    "classical": (
        optim.momentum(0.05, beta=0.9, form="classical"),
        optax.sgd(0.05, momentum=0.9),
    ),
    "nesterov-schedule": (
        optim.momentum(CYCLIC, beta=0.5, form="nesterov"),
        optax.sgd(CYCLIC, momentum=0.5, nesterov=True),
    ),
    "adagrad": (
        optim.adagrad(0.3, initial_accumulator_value=0.5, eps=1e-5),
        optax.adagrad(0.3, initial_accumulator_value=0.5, eps=1e-5),
    ),
    "rmsprop": (optim.rmsprop(0.01), optax.rmsprop(0.01)),
    "rmsprop-centered": (
        optim.rmsprop(0.01, decay=0.8, centered=True),
        optax.rmsprop(0.01, decay=0.8, centered=True),
    ),
    "rmsprop-momentum": (
        optim.rmsprop(0.005, momentum=0.9, initial_scale=0.1),
        optax.rmsprop(0.005, momentum=0.9, initial_scale=0.1),
    ),
    "rmsprop-centered-nesterov-schedule": (
        optim.rmsprop(DECAY, centered=True, momentum=0.7, nesterov=True),
        optax.rmsprop(DECAY, centered=True, momentum=0.7, nesterov=True),
    ),
    "adam": (optim.adam(0.01), optax.adam(0.01)),
    "adam-schedule": (
        optim.adam(DECAY, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-10),
        optax.adam(DECAY, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-10),
    ),
    "adamw": (optim.adamw(0.01, weight_decay=0.1), optax.adamw(0.01, weight_decay=0.1)),
    "adamw-schedule": (
        optim.adamw(CYCLIC, weight_decay=0.05),
        optax.adamw(CYCLIC, weight_decay=0.05),
    ),
    # drop-in use inside optax
    "inject_hyperparams-adam": (
        optax.inject_hyperparams(optim.adam)(learning_rate=0.01),
        optax.adam(0.01),
    ),
    "chain-clip-adam": (
        optax.chain(optax.clip_by_global_norm(0.05), optim.adam(0.01)),
        optax.chain(optax.clip_by_global_norm(0.05), optax.adam(0.01)),
    ),
}


def test_same_trajectories_as_optax(x64):
    params = jax.tree.map(jnp.asarray, MLP_PARAMS)

    def check(ours, ref):
        for leaf in jax.tree.leaves(ours):
            assert leaf.dtype == np.float64 and leaf.shape[0] == 100
        chex.assert_trees_all_close(ours, ref, rtol=1e-10, atol=1e-13)
        # the comparison is not vacuous: the parameters moved
        assert np.max(np.abs(ours[0]["w"][-1] - MLP_PARAMS[0]["w"])) > 1e-2

    assert_pairs_agree(PAIRS, trajectory, params, check)


# --- complex parameters: the same trajectories as optax ----------------------------------------

C_TARGET = {
    "a": np.array([1 + 2j, -0.5 + 0.25j, 3j]),
    "b": np.array([[0.5 - 1j, 2.0], [1j, -1 - 1j]]),
}
C_START = {"a": np.array([0.1j, 1.0, -1 + 1j]), "b": np.array([[1.0, 1j], [-0.5j, 0.3]])}


def complex_loss(params):
    """A real loss of complex params (a quadratic and a quartic term, so the gradients'
    phases change along the way)."""
    a = jnp.sum(jnp.abs(params["a"] - C_TARGET["a"]) ** 2)
    b = jnp.sum(jnp.abs(params["b"] * params["b"] - C_TARGET["b"]) ** 2)
    return a + 0.5 * b


def complex_trajectory(opt, params, steps=50):
    """As :func:`trajectory`, stepping along the conjugate of ``jax.grad`` (the
    steepest-descent direction for complex params, as in optax's own tests)."""
    conj_grad = lambda p: jax.tree.map(jnp.conj, jax.grad(complex_loss)(p))  # noqa: E731
    return trajectory(opt, params, steps, conj_grad)


COMPLEX_PAIRS = {
    "sgd": (optim.sgd(0.05), optax.sgd(0.05)),
    "classical": (
        optim.momentum(0.02, beta=0.8, form="classical"),
        optax.sgd(0.02, momentum=0.8),
    ),
    "nesterov": (
        optim.momentum(0.02, beta=0.8, form="nesterov"),
        optax.sgd(0.02, momentum=0.8, nesterov=True),
    ),
    "adagrad": (optim.adagrad(0.2, eps=1e-5), optax.adagrad(0.2, eps=1e-5)),
    "rmsprop": (optim.rmsprop(0.01), optax.rmsprop(0.01)),
    "rmsprop-centered": (
        optim.rmsprop(0.01, decay=0.8, centered=True),
        optax.rmsprop(0.01, decay=0.8, centered=True),
    ),
    "rmsprop-momentum": (
        optim.rmsprop(0.005, momentum=0.9, initial_scale=0.1),
        optax.rmsprop(0.005, momentum=0.9, initial_scale=0.1),
    ),
    "rmsprop-centered-nesterov": (
        optim.rmsprop(0.005, centered=True, momentum=0.7, nesterov=True),
        optax.rmsprop(0.005, centered=True, momentum=0.7, nesterov=True),
    ),
    "adam": (optim.adam(0.05, eps_root=1e-12), optax.adam(0.05, eps_root=1e-12)),
    "adamw": (optim.adamw(0.05, weight_decay=0.1), optax.adamw(0.05, weight_decay=0.1)),
}


def test_complex_params_take_optax_steps(x64):
    """On complex params every rule takes optax's steps: second moments accumulate
    ``|g|^2``, not ``g^2`` (which has the wrong phase: a real step against a complex
    gradient, or Adagrad's accumulator crossing zero)."""
    params = jax.tree.map(jnp.asarray, C_START)

    def check(ours, ref):
        for leaf in jax.tree.leaves(ours):
            assert leaf.dtype == np.complex128, leaf.dtype
        chex.assert_trees_all_close(ours, ref, rtol=1e-10, atol=1e-12)
        # not vacuous: the params moved, in both their real and imaginary parts
        moved = ours["a"][-1] - C_START["a"]
        assert np.min(np.abs(moved.real)) > 1e-3 and np.min(np.abs(moved.imag)) > 1e-3

    assert_pairs_agree(COMPLEX_PAIRS, complex_trajectory, params, check)


def test_complex_params_keep_their_dtype_and_real_hyperparameters():
    """complex64 params: updates and moments stay complex64, the hyperparameters float32."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.complex64), C_START)
    for opt in (optim.adam(0.1), optim.rmsprop(0.1, centered=True, momentum=0.5)):
        state = opt.init(params)
        grads = jax.tree.map(jnp.conj, jax.grad(complex_loss)(params))
        updates, state = jax.jit(opt.update)(grads, state, params)
        for leaf in jax.tree.leaves((updates, state.nu, state.mu)):
            assert leaf.dtype == jnp.complex64
        assert all(v.dtype == jnp.float32 for v in state.hyperparams.values())
        # the second moment is real: |g|^2 (with g * g it would have an imaginary part)
        assert all(np.all(np.asarray(v).imag == 0) for v in jax.tree.leaves(state.nu))


# --- the 'ema' momentum form against NumPy ----------------------------------------------------


@pytest.mark.parametrize("schedule", [False, True])
def test_ema_momentum_matches_numpy(x64, schedule):
    beta, steps = 0.8, 30
    lr = S.cosine_decay(0.3, steps) if schedule else 0.3
    grads = {"a": rng.normal(size=(steps, 4)), "b": rng.normal(size=(steps, 2, 3))}
    opt = optim.momentum(lr, beta=beta, form="ema")

    @jax.jit
    def run(grads):
        state = opt.init(jax.tree.map(lambda g: g[0], grads))

        def step(state, g):
            updates, state = opt.update(g, state)
            return state, updates

        return jax.lax.scan(step, state, grads)[1]

    got = run(grads)
    for key, g in grads.items():
        v = np.zeros_like(g[0])
        for t in range(steps):
            alpha = 0.3 * 0.5 * (1 + np.cos(np.pi * t / steps)) if schedule else 0.3
            v = beta * v + (1 - beta) * g[t]
            np.testing.assert_allclose(got[key][t], -alpha * v, rtol=1e-12, atol=1e-15)


def test_momentum_forms_on_a_constant_gradient():
    """After 3 steps of a constant g: EMA v = (1 - b^3) g; classical v = (1 + b + b^2) g."""
    g = jnp.array([1.0, -2.0])
    want = {"ema": 1 - 0.9**3, "classical": 1 + 0.9 + 0.81, "nesterov": 1 + 0.9 * 2.71}
    for form, ratio in want.items():
        opt = optim.momentum(1.0, beta=0.9, form=form)
        state = opt.init(g)
        for _ in range(3):
            updates, state = opt.update(g, state)
        np.testing.assert_allclose(-np.asarray(updates) / np.asarray(g), ratio, rtol=1e-6)


# --- convergence in a compiled loop -----------------------------------------------------------

STEPS = 10_000
# every first-order rule of the shared table, at rates that go down Rosenbrock's valley in
# STEPS steps: the table's rates suit short runs on well-scaled bowls, and a valley whose
# Hessian has condition number 2500 needs smaller ones or a decaying schedule (adagrad keeps
# the table's)
VALLEY_RATES = {
    "sgd": 2e-3,
    "momentum": 1e-2,
    "momentum-classical": 1e-3,
    "momentum-nesterov": 1e-3,
    "rmsprop": S.cosine_decay(1e-2, STEPS),
    "rmsprop-centered-momentum": S.cosine_decay(1e-3, STEPS),
    "rmsprop-centered-nesterov": S.cosine_decay(1e-3, STEPS),
    "adam": S.cosine_decay(5e-2, STEPS),
    "adamw": S.cosine_decay(5e-2, STEPS),
}


def _valley_rule(name):
    rule = helpers.RULES[name]
    return rule(learning_rate=VALLEY_RATES.get(name, rule.kwargs["learning_rate"]))


RULES = {name: _valley_rule(name) for name in helpers.names("grads")}


def _minimise(opt, f, x0, steps=STEPS):
    def body(_, carry):
        x, state = carry
        updates, state = opt.update(jax.grad(f)(x), state, x)
        return optax.apply_updates(x, updates), state

    return jax.lax.fori_loop(0, steps, body, (x0, opt.init(x0)))[0]


def test_every_rule_converges_on_a_parabola_and_the_small_catalogue_problems():
    """Every rule on a pytree parabola and on each of the catalogue's small problems (from its
    standard start to one of its listed minima), all in one compiled program; failures are
    collected."""
    bowl = [{"w": jnp.asarray(MLP_PARAMS[0]["w"], jnp.float32), "b": jnp.ones(6)}, jnp.ones(())]
    problems = helpers.SMALL_PROBLEMS

    @jax.jit
    def run():
        return {
            name: (
                _minimise(opt, parabola, bowl),
                [_minimise(opt, CATALOGUE[p].fn, helpers.start(p)) for p in problems],
            )
            for name, opt in RULES.items()
        }

    failures = []
    for name, (bowl_min, found) in jax.tree.map(np.asarray, run()).items():
        largest = max(np.max(np.abs(leaf)) for leaf in jax.tree.leaves(bowl_min))
        if not largest < 1e-3:
            failures.append(f"{name}: parabola max |x| {largest:.2e}")
        for problem, x in zip(problems, found):
            if not helpers.distance_to_minimum(problem, x) < 1e-3:
                failures.append(f"{name}: {problem} ends at {x}")
    assert not failures, "\n".join(failures)


def test_fit_runs_a_rule():
    """The library's own compiled loop drives a rule to the Rosenbrock minimum."""
    res = jd.fit(rosenbrock, jnp.array([-1.2, 1.0]), RULES["adam"], steps=STEPS)
    np.testing.assert_allclose(res.params, [1.0, 1.0], atol=1e-3)


# --- compiled once; dtypes preserved ----------------------------------------------------------

# Some hyperparameters are NumPy float64 scalars (as from np.linspace in a sweep): under x64
# they must not promote float32 state to float64. (Spelled out here, not taken from the shared
# table: each rule with its own mix of NumPy scalars, Python floats and schedules.)
f64 = np.float64
DTYPE_RULES = {
    "sgd": lambda: optim.sgd(f64(0.1)),
    "momentum": lambda: optim.momentum(0.1, beta=f64(0.5)),
    "momentum-nesterov": lambda: optim.momentum(
        S.cosine_decay(0.1, 10), beta=f64(0.9), form="nesterov"
    ),
    "adagrad": lambda: optim.adagrad(0.1, initial_accumulator_value=f64(0.1), eps=f64(1e-7)),
    "rmsprop": lambda: optim.rmsprop(
        S.warmup(0.1, 5), decay=f64(0.9), eps=f64(1e-8), centered=True, momentum=f64(0.5)
    ),
    "adam": lambda: optim.adam(S.cyclic(0.01, 0.1, 4), b1=f64(0.9), b2=f64(0.99), eps=f64(1e-8)),
    "adamw": lambda: optim.adamw(0.1, eps_root=f64(1e-12), weight_decay=f64(0.1)),
}


def _float32_step_twice(make_opt):
    chex.clear_trace_counter()
    opt = make_opt()
    params = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        updates, state = opt.update(jax.grad(parabola)(params), state, params)
        return optax.apply_updates(params, updates), updates, state

    state = opt.init(params)
    for _ in range(2):  # the second call must reuse the first compilation
        params, updates, state = step(params, state)
        # (optax.inject_hyperparams keeps its hyperparameters in their own dtype)
        for tree in (params, updates, getattr(state, "inner_state", state)):
            for leaf in jax.tree.leaves(tree):
                if jnp.issubdtype(leaf.dtype, jnp.floating):
                    assert leaf.dtype == jnp.float32, (tree, leaf.dtype)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
    assert float(parabola(params)) < 6.0  # it moved downhill


@pytest.mark.parametrize("name", list(DTYPE_RULES))
def test_no_retrace_and_float32_kept(name):
    _float32_step_twice(DTYPE_RULES[name])


@pytest.mark.parametrize("name", [*DTYPE_RULES, "inject_hyperparams-float64"])
def test_float32_kept_under_x64(x64, name):
    if name == "inject_hyperparams-float64":
        _float32_step_twice(
            lambda: optax.inject_hyperparams(optim.rmsprop, hyperparam_dtype=jnp.float64)(
                learning_rate=0.1, decay=0.9, momentum=0.5
            )
        )
    else:
        _float32_step_twice(DTYPE_RULES[name])


def test_state_types_and_count():
    params = {"w": jnp.ones(3)}
    assert isinstance(optim.sgd(0.1).init(params), optim.SgdState)
    assert isinstance(optim.momentum(0.1).init(params), optim.MomentumState)
    assert isinstance(optim.adagrad(0.1).init(params), optim.AdagradState)
    assert isinstance(optim.rmsprop(0.1).init(params), optim.RmspropState)
    assert isinstance(optim.adam(0.1).init(params), optim.AdamState)
    assert isinstance(optim.adamw(0.1).init(params), optim.AdamState)
    opt = optim.adam(0.1)
    state = opt.init(params)
    assert state.count.dtype == jnp.int32 and int(state.count) == 0
    _, state = opt.update(params, state, params)
    assert int(state.count) == 1
    for rule in (optim.sgd, optim.adam):
        assert isinstance(rule(0.1), optax.GradientTransformationExtraArgs)
    # extra arguments (fit passes value_fn=...) are accepted and ignored
    updates, _ = optim.sgd(0.5).update(params, optim.sgd(0.5).init(params), value_fn=parabola)
    np.testing.assert_allclose(updates["w"], -0.5)
    with pytest.raises(ValueError, match="params"):
        optim.adamw(0.1).update(params, optim.adamw(0.1).init(params))


# --- hyperparameters checked at construction --------------------------------------------------


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: optim.sgd(-0.1), "learning_rate"),
        (lambda: optim.momentum(-1e-3), "learning_rate"),
        (lambda: optim.adagrad(-1.0), "learning_rate"),
        (lambda: optim.rmsprop(-0.1), "learning_rate"),
        (lambda: optim.adam(-0.1), "learning_rate"),
        (lambda: optim.adamw(-0.1), "learning_rate"),
        (lambda: optim.sgd(float("nan")), "learning_rate"),
        (lambda: optim.momentum(0.1, beta=1.0), "beta"),
        (lambda: optim.momentum(0.1, beta=-0.1), "beta"),
        (lambda: optim.momentum(0.1, form="heavy"), "form"),
        (lambda: optim.rmsprop(0.1, decay=1.0), "decay"),
        (lambda: optim.rmsprop(0.1, momentum=1.5), "momentum"),
        (lambda: optim.adam(0.1, b1=1.0), "b1"),
        (lambda: optim.adam(0.1, b2=-0.5), "b2"),
        (lambda: optim.adamw(0.1, b1=2.0), "b1"),
        (lambda: optim.adagrad(0.1, eps=0.0), "eps"),
        (lambda: optim.rmsprop(0.1, eps=-1e-8), "eps"),
        (lambda: optim.adam(0.1, eps=0.0), "eps"),
        (lambda: optim.adamw(0.1, eps=-1.0), "eps"),
        (lambda: optim.adagrad(0.1, initial_accumulator_value=-1.0), "initial_accumulator_value"),
        (lambda: optim.adamw(0.1, weight_decay=-0.1), "weight_decay"),
        (lambda: optim.adam(0.1, eps_root=-1.0), "eps_root"),
    ],
)
def test_bad_hyperparameters_raise_value_error(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_non_numeric_learning_rate_is_a_type_error():
    with pytest.raises(TypeError, match="learning_rate"):
        optim.sgd("0.1")
    # zero is allowed (a frozen run), as is a schedule
    optim.sgd(0.0)
    optim.adam(S.constant(0.1))


def test_flags_are_booleans_and_nesterov_needs_momentum():
    """A truthy string is not a flag, and an option that cannot apply is an error."""
    for flag in ("centered", "nesterov"):
        with pytest.raises(TypeError, match=f"{flag} must be True or False; got 'no'"):
            optim.rmsprop(0.1, momentum=0.9, **{flag: "no"})
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        optim.rmsprop(0.1, nesterov=True)
    optim.rmsprop(0.1, momentum=0.0, nesterov=True)  # a momentum of 0 is still a momentum


# --- hyperparameters are runtime values in the state -------------------------------------------

HP_PARAMS = {"w": jnp.linspace(-1.0, 2.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.25])}
HP_GRADS = jax.tree.map(lambda p: 0.3 - p, HP_PARAMS)

# rule -> (factory, keyword arguments of two builds that differ only in numeric values)
VALUE_PAIRS = {
    "sgd": (optim.sgd, {"learning_rate": 1e-3}, {"learning_rate": 3e-2}),
    "momentum": (
        optim.momentum,
        {"learning_rate": 1e-3, "beta": 0.9},
        {"learning_rate": 0.2, "beta": 0.5},
    ),
    "momentum-nesterov": (
        optim.momentum,
        {"learning_rate": 1e-3, "beta": 0.9, "form": "nesterov"},
        {"learning_rate": 0.2, "beta": 0.5, "form": "nesterov"},
    ),
    "adagrad": (
        optim.adagrad,
        {"learning_rate": 0.1, "eps": 1e-7},
        {"learning_rate": 0.5, "eps": 1e-3},
    ),
    "rmsprop": (
        optim.rmsprop,
        {"learning_rate": 0.01, "decay": 0.9, "eps": 1e-8, "momentum": 0.9, "centered": True},
        {"learning_rate": 0.1, "decay": 0.5, "eps": 1e-4, "momentum": 0.3, "centered": True},
    ),
    "adam": (
        optim.adam,
        {"learning_rate": 1e-3},
        {"learning_rate": 3e-2, "b1": 0.8, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-9},
    ),
    "adamw": (
        optim.adamw,
        {"learning_rate": 1e-3, "weight_decay": 1e-4},
        {"learning_rate": 3e-2, "b1": 0.5, "weight_decay": 0.2},
    ),
}


HP_NAMES = {
    "sgd": {"learning_rate"},
    "momentum": {"learning_rate", "beta"},
    "adagrad": {"learning_rate", "eps"},
    "rmsprop": {"learning_rate", "decay", "eps", "momentum"},
    "adam": {"learning_rate", "b1", "b2", "eps", "eps_root"},
    "adamw": {"learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"},
}


def _jaxpr(opt):
    return str(jax.make_jaxpr(opt.update)(HP_GRADS, opt.init(HP_PARAMS), HP_PARAMS))


@pytest.mark.parametrize("name", list(VALUE_PAIRS))
def test_update_closes_over_configuration_not_values(name):
    """Two builds that differ only in numeric hyperparameters trace to the same program and
    have equal fingerprints (the engine's compile-cache key); another form does not."""
    rule, first, second = VALUE_PAIRS[name]
    a, b = rule(**first), rule(**second)
    assert _jaxpr(a) == _jaxpr(b)
    assert fingerprint(a.update) == fingerprint(b.update)
    # the values are in the state, in the params' dtype, and differ there
    state_a, state_b = a.init(HP_PARAMS), b.init(HP_PARAMS)
    assert set(state_a.hyperparams) == set(state_b.hyperparams) == HP_NAMES[name.split("-")[0]]
    assert all(v.dtype == jnp.float32 and v.shape == () for v in state_a.hyperparams.values())
    assert not np.allclose(
        state_a.hyperparams["learning_rate"], state_b.hyperparams["learning_rate"]
    )
    if name == "momentum":
        other = optim.momentum(1e-3, beta=0.9, form="classical")
        assert fingerprint(other.update) != fingerprint(a.update)
        assert _jaxpr(other) != _jaxpr(a)


def fingerprint(update):
    """The engine's compile-cache key of an update function."""
    from jaxdescent._engine.cache import token

    return token(update)[0]


class _ByConfig:
    """An update function as a static jit argument, equal to another when their fingerprints
    are (as the engine keys its compiled programs)."""

    def __init__(self, update):
        self.update, self.key = update, fingerprint(update)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _ByConfig) and other.key == self.key


def test_a_loop_over_learning_rates_traces_once():
    chex.clear_trace_counter()

    @functools.partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=1)
    def three_steps(update, params, state):
        for _ in range(3):
            updates, state = update.update(jax.grad(parabola)(params), state, params)
            params = optax.apply_updates(params, updates)
        return params

    for lr in (1e-3, 3e-2, 0.1, 0.25):
        opt = optim.adam(lr)  # a fresh object every time
        got = three_steps(_ByConfig(opt.update), HP_PARAMS, opt.init(HP_PARAMS))
        # the reused program uses this build's learning rate (not the first one's)
        params, state = HP_PARAMS, opt.init(HP_PARAMS)
        for _ in range(3):
            updates, state = opt.update(jax.grad(parabola)(params), state, params)
            params = optax.apply_updates(params, updates)
        chex.assert_trees_all_close(got, params, rtol=1e-6)


@pytest.mark.parametrize("name", list(VALUE_PAIRS))
def test_vmap_over_stacked_hyperparameters(name):
    """Stacked states with different values, one vmapped program: each row equals a rule built
    with that row's values."""
    rule, first, second = VALUE_PAIRS[name]
    builds = [rule(**first), rule(**second)]
    states = [opt.init(HP_PARAMS) for opt in builds]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    @jax.jit
    def run(state):
        params = HP_PARAMS
        for _ in range(3):
            updates, state = builds[0].update(jax.grad(parabola)(params), state, params)
            params = optax.apply_updates(params, updates)
        return params

    got = jax.vmap(run)(stacked)
    for i, opt in enumerate(builds):
        params, state = HP_PARAMS, states[i]
        for _ in range(3):
            updates, state = opt.update(jax.grad(parabola)(params), state, params)
            params = optax.apply_updates(params, updates)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], got), params, rtol=1e-5)
    assert not np.allclose(got["w"][0], got["w"][1])  # the rows differ


def test_values_given_as_arrays_stay_fixed_and_inject_hyperparams_drives_the_rule():
    """optax.inject_hyperparams passes its current values as arrays on every update: they
    are used (a changed injected learning rate takes effect), not the state's; the state
    holds a copy, so that it shows the values in use."""
    pinned = optim.adam(jnp.asarray(0.1))
    state = pinned.init(HP_PARAMS)
    np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.1)
    assert pinned.update.fixed_hyperparams == {"learning_rate"}
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)  # the fixed value still rules
    updates, state = pinned.update(HP_GRADS, state, HP_PARAMS)
    np.testing.assert_allclose(updates["b"], -0.1 * np.sign(HP_GRADS["b"]), rtol=1e-5)
    np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.1)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32

    opt = optax.inject_hyperparams(optim.adam)(learning_rate=0.1)
    step = jax.jit(opt.update)
    state = opt.init(HP_PARAMS)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    for update in (opt.update, step):  # eagerly and compiled
        updates, new_state = update(HP_GRADS, state, HP_PARAMS)
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
        assert float(new_state.inner_state.hyperparams["learning_rate"]) == 0.0
    state.hyperparams["learning_rate"] = jnp.asarray(0.5)
    updates, new_state = step(HP_GRADS, state, HP_PARAMS)
    np.testing.assert_allclose(updates["b"], -0.5 * np.sign(HP_GRADS["b"]), rtol=1e-5)
    # the inner state is the state adam(0.5) would have after this update
    plain = optim.adam(0.5)
    _, expected = plain.update(HP_GRADS, plain.init(HP_PARAMS), HP_PARAMS)
    chex.assert_trees_all_close(new_state.inner_state, expected)


def test_ema_momentum_with_scaled_rate_is_classical_momentum(x64):
    """EMA with lr / (1 - b) takes the classical form's steps with lr (the docstring's claim)."""
    params = jax.tree.map(jnp.asarray, MLP_PARAMS)
    beta, lr = 0.9, 0.02
    ema = optim.momentum(lr / (1 - beta), beta=beta)
    classical = optim.momentum(lr, beta=beta, form="classical")
    paths = jax.jit(lambda p: (trajectory(ema, p), trajectory(classical, p)))(params)
    chex.assert_trees_all_close(*paths, rtol=1e-9, atol=1e-12)
    chex.assert_trees_all_close(paths[1], trajectory(optax.sgd(lr, momentum=beta), params))
    assert np.max(np.abs(paths[0][0]["w"][-1] - MLP_PARAMS[0]["w"])) > 1e-2
