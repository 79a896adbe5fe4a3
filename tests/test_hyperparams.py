"""The hyperparameter tables (jaxdescent.optim.hyperparams): one table per rule drives the
factory's checks, the checks of ``multistart(hyperparams=...)`` and what
``optax.inject_hyperparams`` accepts; the sweep helpers through optax's wrappers; the dtype
of runtime values; refreshing a saved state's values."""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdescent as jd
from jaxdescent._checks import check_int
from jaxdescent.optim import hyperparams as hpm

optim = jd.optim

# each table with its factory and keyword arguments that turn every option on (so the state
# holds every runtime value); a rule of several forms appears once per form, with the entries
# that form reads (FORMS: the others are refused by the factory, not by the table)
RULES = {
    "sgd": (hpm.SGD, optim.sgd, {"learning_rate": 0.1}),
    "momentum": (hpm.MOMENTUM, optim.momentum, {"learning_rate": 0.1}),
    "adagrad": (hpm.ADAGRAD, optim.adagrad, {"learning_rate": 0.1}),
    "rmsprop": (hpm.RMSPROP, optim.rmsprop, {"learning_rate": 0.1, "momentum": 0.5}),
    "adam": (hpm.ADAM, optim.adam, {"learning_rate": 0.1}),
    "adamw": (hpm.ADAMW, optim.adamw, {"learning_rate": 0.1}),
    "backtracking_line_search": (
        hpm.BACKTRACKING_LINE_SEARCH,
        optim.backtracking_line_search,
        {},
    ),
    "newton": (hpm.NEWTON, optim.newton, {"initial_radius": 1.0}),
    "newton_line_search": (hpm.NEWTON, optim.newton, {"line_search": True}),
    "newton_textbook": (hpm.NEWTON, optim.newton, {"line_search": False}),
    "saddle_free_newton": (hpm.SADDLE_FREE_NEWTON, optim.saddle_free_newton, {}),
    "newton_cg": (hpm.NEWTON_CG, optim.newton_cg, {}),
    "gauss_newton": (
        hpm.GAUSS_NEWTON,
        optim.gauss_newton,
        {"line_search": True, "solver": "cg"},
    ),
    "levenberg_marquardt": (
        hpm.LEVENBERG_MARQUARDT,
        optim.levenberg_marquardt,
        {"solver": "cg"},
    ),
}
_NEWTON_SEARCH = {"damping", "damping_factor", "max_damping_steps"}
FORMS = {
    "newton": {"initial_radius", "max_radius", "eta"},
    "newton_line_search": _NEWTON_SEARCH | {"shrink", "c1", "max_line_search_steps"},
    "newton_textbook": _NEWTON_SEARCH,
}


def _entries(rule):
    """The entries of ``rule``'s table that its form reads."""
    table = RULES[rule][0]
    return [e for e in table.entries if e.name in FORMS.get(rule, {e.name})]


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.25])}

REALS = [-1.0, -1e-9, 0.0, 1e-9, 0.1, 0.2499, 0.25, 0.5, 0.999, 1.0, 1.0 + 1e-9, 1.5, 10.0]
REALS += [np.inf, -np.inf, np.nan, np.float32(0.5), np.float64(0.9), jnp.asarray(0.3)]
INTEGERS = [-1, 0, 1, 2, 50, np.int64(3), jnp.asarray(4), 2.0, 2.5, True, "3", None]


def _outcome(call, value):
    try:
        call(value)
    except ValueError:
        return "ValueError"
    except TypeError:
        return "TypeError"
    return "ok"


def _number_defaults(factory):
    """The factory's parameters whose default is a number (not a bool) or None."""
    return {
        name: p.default
        for name, p in inspect.signature(factory).parameters.items()
        if p.default is None
        or (isinstance(p.default, (int, float)) and not isinstance(p.default, bool))
    }


@pytest.mark.parametrize("rule", list(RULES))
def test_each_table_lists_its_factorys_numeric_arguments(rule):
    table, factory, _ = RULES[rule]
    numeric = _number_defaults(factory)
    numeric.pop("line_search", None)  # newton's: None, True or False picks the form
    names = {e.name for e in table.entries}
    # every numeric argument has an entry, and every entry is an argument
    assert set(numeric) == names - {"learning_rate"}, (sorted(numeric), sorted(names))
    assert ("learning_rate" in names) == ("learning_rate" in inspect.signature(factory).parameters)
    assert {n for n, d in numeric.items() if d is None} <= {
        e.name for e in table.entries if e.optional
    }


@pytest.mark.parametrize("rule", list(RULES))
def test_each_table_refuses_what_its_factory_refuses(rule):
    """For every entry and many values, the factory and the table's check raise the same
    error (or none); for runtime values, the sweep check of multistart agrees too. The
    second-order factories do their own checks: this holds the tables to them."""
    table, factory, base = RULES[rule]
    defaults = {n: d for n, d in _number_defaults(factory).items() if table.get(n)}
    for entry in _entries(rule):
        values = INTEGERS if entry.integer else REALS
        for value in values:
            kwargs = {**defaults, **base, entry.name: value}
            if entry.name == "learning_rate" or "learning_rate" in base:
                kwargs.setdefault("learning_rate", 0.1)
            got = _outcome(lambda v, kw=kwargs: factory(**kw), value)
            entries = {n: x for n, x in kwargs.items() if table.get(n)}  # not the form's
            want = _outcome(lambda v, kw=entries: table.check(**kw), value)
            assert got == want, (rule, entry.name, value, got, want)
            if entry.runtime and value is not None and not isinstance(value, str):
                sweep = _outcome(lambda v, e=entry: hpm.check_sweep(table, e.name, v), value)
                assert (sweep == "ok") == (got == "ok"), (rule, entry.name, value, sweep, got)


@pytest.mark.parametrize("rule", list(RULES))
def test_states_hold_the_tables_runtime_values_in_one_dtype(rule):
    table, factory, base = RULES[rule]
    state = factory(**base).init(PARAMS)
    holder = next(h for h in hpm.find_hyperparams(state) if h.path == ())
    assert hpm.table_for(state) is (hpm.ADAMW if table is hpm.ADAM else table)
    assert holder.table is hpm.table_for(state)
    assert set(state.hyperparams) == {e.name for e in _entries(rule) if e.runtime}, rule
    if rule in ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"):
        assert {v.dtype for v in state.hyperparams.values()} == {jnp.dtype(jnp.float32)}
    # a value is refused with its rule's words
    entry = next(e for e in _entries(rule) if e.runtime)
    with pytest.raises(ValueError, match=rf"hyperparams\['{entry.name}'\] must be"):
        hpm.check_sweep(table, entry.name, np.array([np.nan]))


def test_check_sweep_names_the_value_and_refuses_what_is_not_real():
    for value in ("0.1", True, None, 1 + 2j, [0.1, 0.2], jnp.array([True])):
        with pytest.raises(TypeError, match=r"hyperparams\['learning_rate'\] must be a real"):
            hpm.check_sweep(hpm.SGD, "learning_rate", value)
    with pytest.raises(ValueError, match=r"got -1.0 at index 1 \(of 3 values\)"):
        hpm.check_sweep(hpm.SGD, "learning_rate", np.array([0.1, -1.0, 0.2]))
    with pytest.raises(ValueError, match=r"hyperparams\['b1'\] must be in \[0, 1\); got 1.5"):
        hpm.check_sweep(hpm.ADAM, "b1", 1.5)
    # a rule without a table: any finite value; a tracer cannot be inspected and passes
    hpm.check_sweep(None, "moves", np.array([-3.0, 0.0, 1e30]))
    with pytest.raises(ValueError, match=r"hyperparams\['moves'\] must be finite"):
        hpm.check_sweep(None, "moves", np.nan)
    jax.jit(lambda v: hpm.check_sweep(hpm.ADAM, "b1", v) or v)(2.0)


def test_adam_and_adamw_share_a_state_and_agree_on_adams_values():
    for entry in hpm.ADAM.entries:
        assert hpm.ADAMW.get(entry.name) == entry


def test_hyperparam_dtype_convention(x64):
    f32, f64 = jnp.float32, jnp.float64
    cases = [
        ({"a": jnp.ones(2, f32)}, f32),
        ({"a": jnp.ones(2, jnp.bfloat16)}, f32),
        ({"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, f32)}, f32),
        ({"a": jnp.ones(2, f32), "b": jnp.ones(2, f64)}, f64),
        ({"a": jnp.ones(2, jnp.complex64)}, f32),
        ({"a": jnp.ones(2, jnp.complex128)}, f64),
        ({"a": np.ones(2, np.float32), "n": np.arange(3)}, f32),
    ]
    for params, want in cases:
        assert hpm.hyperparam_dtype(params) == want, (params, want)
        for _, factory, base in RULES.values():
            if factory in (optim.sgd, optim.adam, optim.rmsprop, optim.backtracking_line_search):
                state = factory(**base).init(params)
                assert {v.dtype for v in state.hyperparams.values()} == {jnp.dtype(want)}


# --- integers from optax.inject_hyperparams -------------------------------------------------


def test_check_int_reads_concrete_integer_arrays_and_explains_traced_ones():
    assert check_int("n", np.int32(3)) == 3
    assert check_int("n", jnp.asarray(4)) == 4 and check_int("n", np.array(5)) == 5
    for bad in (jnp.asarray(4.0), jnp.arange(2), True, 2.5):
        with pytest.raises(TypeError, match="n must be an integer"):
            check_int("n", bad)

    def traced(n):
        check_int("max_trials", n)
        return n

    with pytest.raises(TypeError, match=r"max_trials must be a concrete integer") as excinfo:
        jax.jit(traced)(3)
    assert "static_args=('max_trials',)" in str(excinfo.value)
    assert "int32[]" in str(excinfo.value)


X_LSQ = jnp.linspace(0.0, 1.0, 8)
Y_LSQ = 2.0 * X_LSQ + 1.0 + 0.05 * jnp.sin(7.0 * X_LSQ)
LSQ = jd.losses.nll(lambda b, x: b[0] * x + b[1], jd.likelihoods.Gaussian())


def _lsq_step(opt):
    batch = (X_LSQ, Y_LSQ)

    def step(params, state):
        grads = jax.grad(LSQ)(params, batch)
        updates, state = opt.update(
            grads, state, params, value_fn=lambda p: LSQ(p, batch), **LSQ.rule_extras(batch)
        )
        return optax.apply_updates(params, updates), state

    return step


# rules with integer arguments whose defaults are integers (optax.inject_hyperparams makes
# them integer arrays); gauss_newton's and levenberg_marquardt's default to None (static)
INTEGER_RULES = [
    pytest.param(optim.saddle_free_newton, ("max_line_search_steps",), id="saddle_free_newton"),
    pytest.param(optim.newton_cg, ("max_cg_steps", "max_line_search_steps"), id="newton_cg"),
]


@pytest.mark.parametrize(("rule", "integers"), INTEGER_RULES)
def test_inject_hyperparams_of_rules_with_integer_arguments(rule, integers):
    """optax.inject_hyperparams passes integers as integer arrays: concrete ones are read,
    so the wrapped rule inits and updates eagerly; in a jitted step they are traced, a clear
    error naming the argument and static_args."""
    p0 = jnp.array([0.5, 0.0])
    opt = optax.inject_hyperparams(rule)()
    state = opt.init(p0)
    assert state.hyperparams[integers[0]].dtype == jnp.int32
    params, state = _lsq_step(opt)(p0, state)
    assert float(LSQ(params, (X_LSQ, Y_LSQ))) < float(LSQ(p0, (X_LSQ, Y_LSQ)))
    with pytest.raises(TypeError, match=rf"{integers[0]} must be a concrete integer") as info:
        jax.jit(_lsq_step(opt))(p0, opt.init(p0))
    assert f"static_args=({integers[0]!r},)" in str(info.value)


@pytest.mark.parametrize(
    ("rule", "integers"),
    [
        *INTEGER_RULES,
        pytest.param(optim.gauss_newton, (), id="gauss_newton"),
        pytest.param(optim.levenberg_marquardt, (), id="lm"),
    ],
)
def test_inject_hyperparams_with_static_integers_runs_jitted(rule, integers):
    fixed = optax.inject_hyperparams(rule, static_args=integers)()
    step = jax.jit(_lsq_step(fixed))
    params, state = jnp.array([0.5, 0.0]), jax.jit(fixed.init)(jnp.array([0.5, 0.0]))
    for _ in range(3):
        params, state = step(params, state)
    np.testing.assert_allclose(params, np.polyfit(X_LSQ, Y_LSQ, 1), rtol=1e-4)


def test_inject_hyperparams_values_are_checked_by_the_table():
    """inject_hyperparams(rule)(...) calls the factory: the same words for the same value."""
    with pytest.raises(ValueError, match=r"b1 must be in \[0, 1\); got Array\(1.5"):
        optax.inject_hyperparams(optim.adam)(learning_rate=0.1, b1=1.5).init(PARAMS)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 0.25\)"):
        optim.newton(eta=0.5)
    with pytest.raises(ValueError, match=r"hyperparams\['eta'\] must be in \[0, 0.25\)"):
        hpm.check_sweep(hpm.NEWTON, "eta", np.array([0.1, 0.5]))
    hpm.check_sweep(hpm.LEVENBERG_MARQUARDT, "eta", np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"hyperparams\['cg_tol'\] must be in \(0, 1\]"):
        hpm.check_sweep(hpm.GAUSS_NEWTON, "cg_tol", np.array([0.1, 1.5]))
    # a complex value with no imaginary part (inject_hyperparams for complex params) is real
    opt = optax.inject_hyperparams(optim.adam)(learning_rate=0.1)
    z = jnp.ones(2, jnp.complex64)
    state = opt.init(z)
    assert state.hyperparams["b1"].dtype == jnp.complex64
    assert state.inner_state.hyperparams["b1"].dtype == jnp.float32
    for update in (opt.update, jax.jit(opt.update)):  # concrete, then traced complex values
        updates, new_state = update(z, state, z)
        np.testing.assert_allclose(updates, -0.1 * np.ones(2), rtol=1e-5)
        assert new_state.inner_state.hyperparams["b1"].dtype == jnp.float32


# --- finding holders through optax's wrappers ---------------------------------------------


def _tree_params():
    return {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}


def _labels(params):
    return {"w": "w", "b": "b"}


def test_find_hyperparams_through_optax_wrappers():
    params = _tree_params()
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.multi_transform(
            {
                "w": optax.inject_hyperparams(optim.adam)(learning_rate=0.1),
                "b": optax.chain(optim.sgd(0.2), optim.backtracking_line_search()),
            },
            _labels,
        ),
    )
    holders = {h.address: h for h in hpm.find_hyperparams(opt.init(params))}
    assert set(holders) == {
        "1/inner_states/b/inner_state/0",
        "1/inner_states/b/inner_state/1",
        "1/inner_states/w/inner_state",
        "1/inner_states/w/inner_state/inner_state",
    }
    outer = holders["1/inner_states/w/inner_state"]
    inner = holders["1/inner_states/w/inner_state/inner_state"]
    assert outer.table is hpm.ADAMW and not outer.mirrored  # inject of adam: adam's table
    assert inner.mirrored == set(hpm.ADAM.runtime_names) and inner.names() == []
    assert holders["1/inner_states/b/inner_state/1"].table is hpm.BACKTRACKING_LINE_SEARCH
    # optax.partition and masked states too
    part = optax.partition({"w": optim.adam(0.1), "b": optim.sgd(0.2)}, _labels)
    found = hpm.find_hyperparams(part.init(params))
    assert [h.address for h in found] == [
        "inner_states/b/inner_state",
        "inner_states/w/inner_state",
    ]
    masked = optax.masked(optim.rmsprop(0.1), {"w": True, "b": False})
    assert [h.address for h in hpm.find_hyperparams(masked.init(params))] == ["inner_state"]


def _stacked(opt, params, restarts):
    return jax.vmap(lambda _: opt.init(params))(jnp.arange(restarts))


def test_inject_addresses_holders_by_their_path():
    params = _tree_params()
    opt = optax.multi_transform({"w": optim.adam(0.1), "b": optim.sgd(0.2)}, _labels)
    state = _stacked(opt, params, 2)
    lrs = np.array([0.01, 0.02])
    with pytest.raises(ValueError, match="ambiguous") as excinfo:
        hpm.inject(state, {"learning_rate": lrs}, 2)
    message = str(excinfo.value)
    assert "inner_states/b/inner_state" in message and "inner_states/w/inner_state" in message
    assert "e.g. 'b/learning_rate'" in message
    new = hpm.inject(state, {"w/learning_rate": lrs, "b1": np.array([0.5, 0.6])}, 2)
    got = new.inner_states["w"].inner_state.hyperparams
    np.testing.assert_allclose(got["learning_rate"], lrs)
    np.testing.assert_allclose(got["b1"], [0.5, 0.6])
    assert got["learning_rate"].dtype == np.float32
    np.testing.assert_allclose(new.inner_states["b"].inner_state.hyperparams["learning_rate"], 0.2)
    # the same value twice, a path no holder has, and a value out of the holder's range
    with pytest.raises(ValueError, match="both set 'learning_rate'"):
        hpm.inject(state, {"w/learning_rate": lrs, "inner_states/w/learning_rate": lrs}, 2)
    with pytest.raises(ValueError, match=r"no part of this optimizer under 'x' holds"):
        hpm.inject(state, {"x/learning_rate": lrs}, 2)
    with pytest.raises(ValueError, match=r"hyperparams\['w/b1'\] must be in \[0, 1\)"):
        hpm.inject(state, {"w/b1": np.array([0.5, 1.0])}, 2)
    # a chain's parts by index
    chain = optax.chain(optim.sgd(0.1), optim.momentum(0.1))
    new = hpm.inject(_stacked(chain, params, 2), {"1/learning_rate": lrs}, 2)
    np.testing.assert_allclose(new[1].hyperparams["learning_rate"], lrs)
    np.testing.assert_allclose(new[0].hyperparams["learning_rate"], 0.1)


def test_inject_sets_the_copy_inside_inject_hyperparams_and_refuses_what_cannot_be_swept():
    params = _tree_params()
    opt = optax.inject_hyperparams(optim.rmsprop)(learning_rate=0.1, momentum=0.5)
    state = _stacked(opt, params, 3)
    lrs = np.array([0.1, 0.2, 0.3])
    new = hpm.inject(state, {"learning_rate": lrs}, 3)
    np.testing.assert_allclose(new.hyperparams["learning_rate"], lrs)
    np.testing.assert_allclose(new.inner_state.hyperparams["learning_rate"], lrs)
    with pytest.raises(ValueError, match="static option of rmsprop"):
        hpm.inject(state, {"initial_scale": lrs}, 3)  # only init reads it
    with pytest.raises(ValueError, match=r"hyperparams\['momentum'\] must be in \[0, 1\)"):
        hpm.inject(state, {"momentum": np.array([0.1, 0.2, 1.0])}, 3)
    lm = optax.inject_hyperparams(optim.levenberg_marquardt)(max_cg_steps=5)
    with pytest.raises(ValueError, match="static option of levenberg_marquardt"):
        hpm.inject(_stacked(lm, jnp.ones(2), 3), {"max_cg_steps": np.array([1, 2, 3])}, 3)
    # a rule built with an array keeps it fixed in update: sweeping it is refused
    pinned = optim.sgd(jnp.asarray(0.1))
    with pytest.raises(ValueError, match="given to this rule as a JAX array"):
        hpm.inject(_stacked(pinned, params, 3), {"learning_rate": lrs}, 3, optimizer=pinned)
    # a schedule is not in the state
    scheduled = optim.adam(jd.schedules.cosine_decay(0.1, 10))
    with pytest.raises(ValueError, match="a schedule, or an option left unset"):
        hpm.inject(_stacked(scheduled, params, 3), {"learning_rate": lrs}, 3)


def test_multistart_sweeps_reach_rules_inside_multi_transform():
    """A sweep through optax.multi_transform, end to end: each restart equals a fit with
    that restart's values."""
    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3

    def mse(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    def init(key):
        return {"w": jax.random.normal(key, (3,)), "b": jnp.zeros(())}

    def build(lr_w, b1, lr_b):
        return optax.multi_transform(
            {"w": optim.adam(lr_w, b1=b1), "b": optim.sgd(lr_b)}, {"w": "w", "b": "b"}
        )

    lrs, b1s = jnp.array([0.01, 0.1, 0.05]), jnp.array([0.9, 0.5, 0.0])
    run = {"data": (x, y), "steps": 6, "key": jax.random.key(3), "restarts": 3}
    res = jd.multistart(
        init,
        mse,
        build(0.05, 0.9, 0.1),
        hyperparams={"w/learning_rate": lrs, "b1": b1s},
        **run,
    )
    held = res.opt_state.inner_states["w"].inner_state.hyperparams
    np.testing.assert_allclose(held["learning_rate"], lrs)
    for i in range(3):
        one = jd.fit(
            mse,
            init(res.init_keys[i]),
            build(float(lrs[i]), float(b1s[i]), 0.1),
            data=(x, y),
            steps=6,
            key=res.fit_keys[i],
        )
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], res.params), one.params)
    assert not np.allclose(res.params["w"][0], res.params["w"][1])


def test_multistart_checks_a_sweep_by_its_rules_table():
    """newton refuses eta=0.5 in a sweep as newton(eta=0.5) does."""
    with pytest.raises(ValueError, match=r"hyperparams\['eta'\] must be in \[0, 0.25\)"):
        jd.multistart(
            lambda k: jax.random.normal(k, (2,)),
            jd.problems.rosenbrock,
            optim.newton(),
            key=jax.random.key(0),
            restarts=2,
            steps=2,
            hyperparams={"eta": jnp.array([0.1, 0.5])},
        )


# --- refreshing a saved state ------------------------------------------------------------------


def test_refresh_hyperparams_takes_the_new_values_and_keeps_the_rest():
    params = _tree_params()
    grads = jax.tree.map(jnp.ones_like, params)
    old = optax.chain(optim.adam(1e-3, b1=0.8), optim.backtracking_line_search(c1=1e-3))
    saved = old.init(params)
    saved = old.update(grads, saved, params, value_fn=lambda p: jnp.sum(p["w"] ** 2))[1]
    fresh_opt = optax.chain(optim.adam(0.2, b1=0.5), optim.backtracking_line_search(c1=0.3))
    refreshed = hpm.refresh_hyperparams(saved, fresh_opt.init(params))
    assert float(refreshed[0].hyperparams["learning_rate"]) == pytest.approx(0.2)
    assert float(refreshed[0].hyperparams["b1"]) == pytest.approx(0.5)
    assert float(refreshed[1].hyperparams["c1"]) == pytest.approx(0.3)
    chex.assert_trees_all_equal(refreshed[0].mu, saved[0].mu)  # the moments stay
    assert int(refreshed[0].count) == 1 and float(refreshed[1].step_size) > 0
    assert jax.tree.structure(refreshed) == jax.tree.structure(saved)
    # stacked (one value per restart): the new value for every restart, the dtype kept
    stacked = _stacked(optim.sgd(0.001), params, 4)
    new = hpm.refresh_hyperparams(stacked, optim.sgd(0.2).init(params))
    np.testing.assert_allclose(new.hyperparams["learning_rate"], [0.2] * 4)
    assert new.hyperparams["learning_rate"].dtype == np.float32
    # inject_hyperparams: its values and the copy inside
    inj = optax.inject_hyperparams(optim.sgd)
    new = hpm.refresh_hyperparams(inj(0.001).init(params), inj(0.2).init(params))
    assert float(new.hyperparams["learning_rate"]) == pytest.approx(0.2)
    assert float(new.inner_state.hyperparams["learning_rate"]) == pytest.approx(0.2)


def test_refresh_hyperparams_refuses_another_structure():
    params = _tree_params()
    saved = optim.sgd(0.1).init(params)
    for other in (optim.adam(0.1), optim.sgd(jd.schedules.cosine_decay(0.1, 10))):
        with pytest.raises(ValueError, match="fresh_state must have the structure of saved"):
            hpm.refresh_hyperparams(saved, other.init(params))
